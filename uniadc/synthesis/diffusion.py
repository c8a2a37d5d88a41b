"""Diffusion inpainting backends: ``sd-inpaint`` (a 9-channel SD inpainting checkpoint) and ``brushnet``.

Both load local diffusers folders only (``local_files_only``; nothing downloads) and check every path at
construction, raising :class:`WeightsError` with the path and the expected layout before any work. One call
renders a whole :class:`SynthesisRequest`:

1. per-candidate noise factors gamma (official schedule: ``int(steps / gamma)`` DDIM steps, the last ``steps``
   run; see :mod:`uniadc.synthesis.diffusion_sampler`), all candidates in as few UNet calls as memory allows
   (``max_batch``, halved automatically on CUDA out-of-memory);
2. classifier-free guidance against the negative prompt, or the empty prompt;
3. images are resized to ``resolution`` for the diffusion and back, and every pixel outside the mask is
   pasted back from the input.

Zero-shot (the default) blanks the hole in the conditioning image. ``extras={"repaint": True}`` marks few-shot
repainting of a cut-paste composite (paper §3.3): the conditioning then keeps the pasted pixels visible.
A category with a negative prompt follows the official rule outside repainting: gamma = 1 for every candidate,
``negative_steps`` steps and, for BrushNet, the random-mask checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from schemas.config import DiffusionOptions, SynthesisConfig
from uniadc.synthesis.brushnet_model import BRUSHNET_LAYOUT, WEIGHTS_NAME, BrushNetModel, UNetResidualInjector
from uniadc.synthesis.diffusion_backend import DiffusionBackend, move_module
from uniadc.synthesis.diffusion_sampler import Conditioning
from uniadc.synthesis.runtime import (
    WeightsError,
    check_json,
    check_weights_file,
    check_weights_folder,
    require_path,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "BrushNetSynthesizer",
    "SDInpaintSynthesizer",
    "WeightsError",
    "build_synthesizer",
    "check_weights",
]

PIPELINE_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer/vocab.json|tokenizer/tokenizer.json",
    "scheduler/scheduler_config.json",
)
PIPELINE_LAYOUT = (
    "a diffusers Stable Diffusion 1.5 folder (model_index.json, unet/, vae/, text_encoder/, "
    "tokenizer/, scheduler/)"
)


def _check_pipeline(path: str | None, key: str, unet_channels: int, what: str) -> Path:
    layout = f"{what}: {PIPELINE_LAYOUT}"
    folder = require_path(path, key, layout, PIPELINE_FILES)
    for name in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json"):
        check_json(folder / name, key)
    for part in ("unet", "vae", "text_encoder"):
        check_weights_folder(folder / part, key, layout)
    channels = check_json(folder / "unet" / "config.json", key).get("in_channels", 4)  # diffusers' default
    if channels != unet_channels:
        raise WeightsError(
            f"{key}={path!r}: unet/config.json has in_channels={channels}; expected {what} "
            f"(in_channels={unet_channels})"
        )
    return folder


def check_weights(name: str, options: DiffusionOptions) -> dict[str, Path | None]:
    """Validate every weights path backend ``name`` reads, without loading any weights.

    Returns:
        ``{"pipeline": ...}`` for ``sd-inpaint``; plus ``"brushnet"`` and ``"random_mask"`` (None when unset)
        for ``brushnet``.

    Raises:
        WeightsError: one line naming the config key, the path and the expected layout.
    """
    if name == "sd-inpaint":
        return {
            "pipeline": _check_pipeline(
                options.pipeline_path, "synthesis.diffusion.pipeline_path", 9, "an SD inpainting checkpoint"
            )
        }
    if name != "brushnet":
        raise ValueError(f"name must be 'sd-inpaint' or 'brushnet', got {name!r}")
    paths: dict[str, Path | None] = {
        "pipeline": _check_pipeline(
            options.pipeline_path,
            "synthesis.diffusion.pipeline_path",
            4,
            "an SD1.5 base checkpoint for BrushNet",
        )
    }
    files = ("config.json", WEIGHTS_NAME)
    paths["random_mask"] = None
    for name, key, value in (
        ("brushnet", "synthesis.diffusion.brushnet_path", options.brushnet_path),
        ("random_mask", "synthesis.diffusion.brushnet_random_mask_path", options.brushnet_random_mask_path),
    ):
        if name == "random_mask" and value is None:
            continue
        folder = require_path(value, key, BRUSHNET_LAYOUT, files)
        check_json(folder / "config.json", key)
        check_weights_file(folder / WEIGHTS_NAME, key)
        paths[name] = folder
    return paths


def _load_pipeline(cls_name: str, path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    import diffusers
    from packaging.version import Version

    # diffusers >= 0.42 renamed torch_dtype to dtype (the old name still works, with a FutureWarning)
    key = "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"
    pipe = getattr(diffusers, cls_name).from_pretrained(
        str(path),
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **{key: dtype},
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class SDInpaintSynthesizer(DiffusionBackend):
    """``sd-inpaint``: stock diffusers ``StableDiffusionInpaintPipeline`` weights (9-channel UNet).

    The UNet input is [latent, mask (1 = hole), masked-image latent] as in the stock pipeline, whose hole is
    filled with 0 (mid-gray) before encoding.

    Args:
        options: ``synthesis.diffusion``; ``pipeline_path`` must be a local SD inpainting folder.

    Raises:
        WeightsError: the path is unset, missing, not a diffusers folder, or its UNet is not 9-channel.
    """

    name = "sd-inpaint"

    def __init__(self, options: DiffusionOptions) -> None:
        path = check_weights(self.name, options)["pipeline"]
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        super().__init__(
            options, _load_pipeline("StableDiffusionInpaintPipeline", path, device, dtype), device
        )

    @classmethod
    def from_pipeline(cls, options: DiffusionOptions, pipe: Any) -> SDInpaintSynthesizer:
        """Wrap an already-built pipeline (tests, benchmarks); it must live on one device."""
        if pipe.unet.config.in_channels != 9:
            raise ValueError(f"pipe.unet must have 9 input channels, got {pipe.unet.config.in_channels}")
        self = cls.__new__(cls)
        DiffusionBackend.__init__(self, options, pipe, pipe.unet.device)
        return self

    def _blank(self, images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        return images * (holes < 0.5)

    def _conditioning(self, text, mask_px, masked, scale):
        inpaint = torch.cat([self._latent_mask(mask_px), masked], dim=1).to(self.dtype)
        return Conditioning(text=text, inpaint=inpaint)


class BrushNetSynthesizer(DiffusionBackend):
    """``brushnet``: a stock SD1.5 UNet steered by BrushNet residuals (``uniadc.synthesis.brushnet_model``).

    BrushNet reads [noisy latent, masked-image latent, mask (1 = keep)]; the hole is black in the masked
    image (official zero-shot input), or the pasted pixels stay visible when repainting (few-shot).
    The residual scale is ``request.conditioning_scale * options.conditioning_scale``.

    Args:
        options: ``synthesis.diffusion``; ``pipeline_path`` (SD1.5, 4-channel UNet), ``brushnet_path``
            (segmentation-mask checkpoint) and, for negative-prompt categories, ``brushnet_random_mask_path``.

    Raises:
        WeightsError: a path is unset or missing, a folder is laid out wrongly, or a state dict mismatches.
    """

    name = "brushnet"

    def __init__(self, options: DiffusionOptions) -> None:
        paths = check_weights(self.name, options)
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        brushnet = BrushNetModel.from_checkpoint(paths["brushnet"], dtype, device)
        pipe = _load_pipeline("StableDiffusionPipeline", paths["pipeline"], device, dtype)
        self._setup(options, pipe, brushnet, None, paths["random_mask"])

    @classmethod
    def from_pipeline(
        cls,
        options: DiffusionOptions,
        pipe: Any,
        brushnet: BrushNetModel,
        random_mask: BrushNetModel | None = None,
    ) -> BrushNetSynthesizer:
        """Wrap already-built components (tests, benchmarks); all on one device and dtype."""
        self = cls.__new__(cls)
        self._setup(options, pipe, brushnet, random_mask, None)
        return self

    def _setup(
        self,
        options: DiffusionOptions,
        pipe: Any,
        brushnet: BrushNetModel,
        random_mask: BrushNetModel | None,
        random_mask_path: Path | None,
    ) -> None:
        if pipe.unet.config.in_channels != 4:
            raise ValueError(
                f"BrushNet needs a 4-channel UNet, got in_channels={pipe.unet.config.in_channels}"
            )
        DiffusionBackend.__init__(self, options, pipe, pipe.unet.device)
        self.injector = UNetResidualInjector(pipe.unet)
        self.brushnet = self._fit(brushnet, "synthesis.diffusion.brushnet_path")
        self._random_mask_path = random_mask_path
        self._random_mask = None
        if random_mask is not None:
            self._random_mask = self._fit(random_mask, "synthesis.diffusion.brushnet_random_mask_path")

    def _fit(self, model: BrushNetModel, key: str) -> BrushNetModel:
        unet_cfg = self.pipe.unet.config
        if (
            list(model.config.block_out_channels) != list(unet_cfg.block_out_channels)
            or model.config.layers_per_block != unet_cfg.layers_per_block
        ):
            raise WeightsError(
                f"{key}: BrushNet blocks {list(model.config.block_out_channels)} x "
                f"{model.config.layers_per_block} do not fit the UNet's "
                f"{list(unet_cfg.block_out_channels)} x {unet_cfg.layers_per_block}"
            )
        return move_module(model, self.device, self.dtype).eval()

    def _model_for(self, negative_rule: bool) -> BrushNetModel:
        if not negative_rule:
            return self.brushnet
        if self._random_mask is None:
            if self._random_mask_path is None:
                raise WeightsError(
                    "synthesis.diffusion.brushnet_random_mask_path is not set; categories with a "
                    f"negative prompt need the random-mask checkpoint ({BRUSHNET_LAYOUT})"
                )
            model = BrushNetModel.from_checkpoint(self._random_mask_path, self.dtype, self.device)
            self._random_mask = self._fit(model, "synthesis.diffusion.brushnet_random_mask_path")
        return self._random_mask

    def _branch(self, model: BrushNetModel) -> dict:
        return {"brushnet": model, "injector": self.injector}

    def _blank(self, images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        return torch.where(holes > 0.5, -1.0, images)

    def _conditioning(self, text, mask_px, masked, scale):
        keep = 1.0 - self._latent_mask(mask_px)
        return Conditioning(
            text=text, brushnet_cond=torch.cat([masked, keep], dim=1).to(self.dtype), conditioning_scale=scale
        )


def build_synthesizer(name: str, config: SynthesisConfig) -> SDInpaintSynthesizer | BrushNetSynthesizer:
    """The registry's entry point: ``sd-inpaint`` or ``brushnet`` from ``config.diffusion``."""
    if name == "sd-inpaint":
        return SDInpaintSynthesizer(config.diffusion)
    if name == "brushnet":
        return BrushNetSynthesizer(config.diffusion)
    raise ValueError(f"name must be 'sd-inpaint' or 'brushnet', got {name!r}")
