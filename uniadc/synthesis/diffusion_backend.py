"""The request handling shared by the diffusion backends (see :mod:`uniadc.synthesis.diffusion`).

:class:`DiffusionBackend` turns a :class:`SynthesisRequest` into tensors, runs the batched sampler in chunks
that shrink on out-of-memory, decodes, resizes back and pastes the unmasked pixels back. Subclasses add the
model-specific conditioning (the 9-channel inpainting UNet input, or BrushNet).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from schemas.config import DiffusionOptions
from uniadc.synthesis.base import SynthesisRequest
from uniadc.synthesis.diffusion_sampler import Conditioning, ddim_schedule, denoise, noised_start
from uniadc.synthesis.runtime import BatchSplitter, empty_cache


class DiffusionBackend:
    """Shared request handling; subclasses provide the components and the per-chunk conditioning."""

    name = "diffusion"

    def __init__(self, options: DiffusionOptions, pipe: Any, device: torch.device) -> None:
        self.options = options
        self.pipe = pipe
        self.device = device
        self.dtype = pipe.unet.dtype
        from diffusers import DDIMScheduler

        config = dict(pipe.scheduler.config)
        # DDIM's own default clip_sample=True is meant for pixel space; SD folders that ship a PNDM config
        # often omit the key, and clipping latents to [-1, 1] would be wrong. An explicit value is kept.
        config.setdefault("clip_sample", False)
        self.scheduler = DDIMScheduler.from_config(config)
        self.latent_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        on_oom = empty_cache(device)
        self._encode_split = BatchSplitter(options.max_batch, on_oom)
        self._unet_split = BatchSplitter(options.max_batch, on_oom)
        self._decode_split = BatchSplitter(options.max_batch, on_oom)

    # ---- public ---------------------------------------------------------------------------------
    def synthesize(self, request: SynthesisRequest, rng: np.random.Generator) -> np.ndarray:
        """Render the request; returns (B, H, W, 3) uint8 equal to ``request.images`` outside each mask."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        b, height, width = request.masks.shape
        size = self._working_size(height, width)
        repaint = bool(request.extras.get("repaint", False))
        negative = request.negative_prompt or request.prior.negative_prompt
        negative_rule = negative is not None and not repaint
        gammas = np.ones(b) if negative_rule else np.asarray(request.noise_factors, dtype=np.float64)
        steps = self.options.negative_steps if negative_rule else self.options.steps
        scale = float(request.conditioning_scale) * self.options.conditioning_scale
        gen = torch.Generator("cpu").manual_seed(int(rng.integers(0, 2**63 - 1)))
        shape = (
            b,
            self.pipe.vae.config.latent_channels,
            size[0] // self.latent_scale,
            size[1] // self.latent_scale,
        )
        noise, eps_image, eps_masked = (torch.randn(shape, generator=gen) for _ in range(3))
        schedule = ddim_schedule(self.scheduler, steps, gammas).to(self.device)

        with torch.inference_mode():
            text, rows = self._encode_text(request.batch_prompts, negative or "")
            mean, std = self._image_moments(request.images, size)
            latents = self._scale_latents(mean + std * eps_image.to(self.device))
            masked = self._scale_latents(mean + std * eps_masked.to(self.device)) if repaint else None
            del mean, std
            model = self._model_for(negative_rule)

            def run(start: int, stop: int) -> torch.Tensor:
                sl = slice(start, stop)
                chunk = schedule.slice(start, stop)
                holes = mask_tensor(request.masks[sl], size, self.device)
                if masked is None:
                    pixels = self._blank(self._to_pixels(request.images[sl], size), holes)
                    m, sd = self._vae_moments(pixels)
                    masked_sl = self._scale_latents(m + sd * eps_masked[sl].to(self.device))
                else:
                    masked_sl = masked[sl]
                cond = self._conditioning(text[rows[:, sl].reshape(-1)], holes, masked_sl, scale)
                x = noised_start(latents[sl], noise[sl].to(self.device), chunk)
                return denoise(
                    self.pipe.unet,
                    x,
                    chunk,
                    cond,
                    self.options.guidance_scale,
                    **self._branch(model),
                    **self._sampler_args(),
                )

            out = torch.cat(self._unet_split.run(run, b))
            images = torch.cat(
                self._decode_split.run(lambda s, e: self._decode(out[s:e], (height, width)), b)
            )
        rendered = images.numpy()
        return np.where(request.masks[..., None], rendered, request.images)

    # ---- hooks for subclasses -------------------------------------------------------------------
    def _model_for(self, negative_rule: bool) -> Any:
        return None

    def _branch(self, model: Any) -> dict:
        return {}

    def _blank(self, images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _conditioning(
        self, text: torch.Tensor, mask_px: torch.Tensor, masked: torch.Tensor, scale: float
    ) -> Conditioning:
        raise NotImplementedError

    # ---- steps ----------------------------------------------------------------------------------
    def _sampler_args(self) -> dict:
        cfg = self.scheduler.config
        return {
            "prediction_type": cfg.prediction_type,
            "clip_range": cfg.clip_sample_range if cfg.clip_sample else None,
        }

    def _working_size(self, height: int, width: int) -> tuple[int, int]:
        if self.options.resolution is not None:
            return self.options.resolution, self.options.resolution
        if height % self.latent_scale or width % self.latent_scale:
            raise ValueError(
                f"image size {height}x{width} must be a multiple of {self.latent_scale} "
                f"when synthesis.diffusion.resolution is null"
            )
        return height, width

    def _encode_text(self, prompts: tuple[str, ...], negative: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique prompts through the text encoder once; rows[0] indexes the unconditional, rows[-1] own."""
        unique = sorted(set(prompts) | {negative})
        emb, _ = self.pipe.encode_prompt(unique, self.device, 1, False)
        own = torch.as_tensor([unique.index(p) for p in prompts], device=self.device)
        if self.options.guidance_scale > 1.0:
            return emb, torch.stack([torch.full_like(own, unique.index(negative)), own])
        return emb, own[None]

    def _to_pixels(self, images: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        x = (
            torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 127.5
            - 1
        )
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
        return x

    def _vae_moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.pipe.vae.encode(pixels.to(self.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def _scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.pipe.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (z - shift) * cfg.scaling_factor

    def _image_moments(self, images: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4, h, w) float32 VAE posterior mean and std; identical images are encoded once."""
        slots: list[int] = []
        order: list[int] = []
        by_key: dict[bytes, list[int]] = {}
        for i, img in enumerate(images):
            same = by_key.setdefault(img[::7, ::7].tobytes(), [])  # cheap key, confirmed by full equality
            slot = next((s for s in same if np.array_equal(images[order[s]], img)), None)
            if slot is None:
                slot = len(order)
                order.append(i)
                same.append(slot)
            slots.append(slot)
        index = torch.as_tensor(slots, device=self.device)
        uniq = images[order]
        moments = self._encode_split.run(
            lambda s, e: self._vae_moments(self._to_pixels(uniq[s:e], size)), len(uniq)
        )
        return torch.cat([m for m, _ in moments])[index], torch.cat([s for _, s in moments])[index]

    def _decode(self, latents: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        cfg = self.pipe.vae.config
        z = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        x = (self.pipe.vae.decode(z.to(self.dtype), return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)
        if tuple(x.shape[2:]) != out_size:
            x = F.interpolate(x, size=out_size, mode="bilinear", antialias=True, align_corners=False).clamp(
                0, 1
            )
        return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def _latent_mask(self, mask_px: torch.Tensor) -> torch.Tensor:
        h, w = mask_px.shape[2] // self.latent_scale, mask_px.shape[3] // self.latent_scale
        return F.interpolate(mask_px, size=(h, w))  # nearest, as both reference pipelines


def move_module(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(device, dtype)``, without diffusers' cast warning when the dtype already matches."""
    model = model.to(device)
    return model if model.dtype == dtype else model.to(dtype=dtype)


def mask_tensor(masks: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(B, 1, h, w) float32 1 = hole, resized with nearest."""
    m = torch.from_numpy(np.ascontiguousarray(masks)).to(device)[:, None].float()
    return m if tuple(m.shape[2:]) == size else F.interpolate(m, size=size)
