"""``clip-region``: zero-shot category-consistency scores from CLIP looking at the defect region.

The score follows the official UniADC code: a softmax over [this category's text] + [the texts of the other
categories of the same image class], the entry of this category kept (the argmax over candidates is then
selected). With a single category that softmax is constant, so the raw cosine is returned instead.

How CLIP is pointed at the region (``region_prompt``):

* ``alpha``: AlphaCLIP. A zero-initialised ``conv1_alpha`` (1 -> width, patch-sized, stride patch) is added to
  the ViT patch embedding and reads the mask, normalised as AlphaCLIP does ((m - 0.5) / 0.26); its weights and
  the whole visual tower come from an AlphaCLIP visual checkpoint (``alpha_clip_weights``).
* ``blur`` / ``dim``: training-free prompts for plain CLIP weights: the image outside the mask is blurred
  (Gaussian, sigma = size / 16) or darkened to 30 %.

Category texts are the mean of the L2-normalised embeddings of the category's descriptions.
Weights load from local files only: ``clip_model`` is an open_clip built-in name with ``clip_weights`` a
checkpoint file, or ``local-dir:/folder`` holding ``open_clip_config.json`` and the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from schemas.config import SelectionConfig
from schemas.priors import AnomalyPrior
from uniadc.synthesis.base import ScoreRequest
from uniadc.synthesis.runtime import (
    BatchSplitter,
    WeightsError,
    check_json,
    check_state_dict,
    check_weights_file,
    check_weights_folder,
    empty_cache,
    require_path,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "ClipRegionScorer",
    "WeightsError",
    "add_alpha_channel",
    "build_scorer",
    "check_weights",
    "load_alpha_clip_visual",
    "region_inputs",
]

ALPHA_MEAN, ALPHA_STD = 0.5, 0.26
DIM_FACTOR = 0.3
CLIP_LAYOUT = (
    "an open_clip built-in model name with clip_weights = a local checkpoint file "
    "(.safetensors/.bin/.pt), or clip_model = 'local-dir:/folder' with open_clip_config.json and weights"
)


class _AlphaInput:
    """The alpha map of the current forward pass, read by the patch-embedding hook."""

    def __init__(self) -> None:
        self.alpha: torch.Tensor | None = None


def add_alpha_channel(visual: nn.Module) -> _AlphaInput:
    """Give an open_clip ViT AlphaCLIP's alpha patch embedding (``visual.conv1_alpha``, zero-initialised).

    Returns:
        The holder whose ``alpha`` ((B, 1, S, S), normalised) goes through ``conv1_alpha`` while it is set.
    """
    conv1 = getattr(visual, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or conv1.kernel_size != conv1.stride:
        raise ValueError(
            f"alpha channel needs an open_clip VisionTransformer (patch conv1), got {type(visual).__name__}"
        )
    alpha_conv = nn.Conv2d(
        1, conv1.out_channels, kernel_size=conv1.kernel_size, stride=conv1.stride, bias=False
    )
    nn.init.zeros_(alpha_conv.weight)
    visual.conv1_alpha = alpha_conv.to(device=conv1.weight.device, dtype=conv1.weight.dtype)
    holder = _AlphaInput()

    def hook(module, args, output):
        if holder.alpha is None:
            return None
        return output + visual.conv1_alpha(holder.alpha.to(output.dtype))

    conv1.register_forward_hook(hook)
    return holder


def load_alpha_clip_visual(visual: nn.Module, path: str | Path) -> None:
    """Load an AlphaCLIP visual checkpoint (``model.visual`` state dict of the AlphaCLIP repo) strictly.

    AlphaCLIP names the fused attention projection ``attn.in_proj.{weight,bias}``; open_clip's
    ``nn.MultiheadAttention`` calls it ``attn.in_proj_{weight,bias}``. Everything else matches.
    """
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path}: not a readable AlphaCLIP visual checkpoint ({type(exc).__name__})"
        ) from exc
    if isinstance(raw, dict) and "state_dict" in raw:
        raw = raw["state_dict"]
    state = {}
    for key, value in raw.items():
        for prefix in ("module.", "visual."):
            key = key.removeprefix(prefix)
        key = key.replace(".attn.in_proj.weight", ".attn.in_proj_weight").replace(
            ".attn.in_proj.bias", ".attn.in_proj_bias"
        )
        state[key] = value
    check_state_dict(visual, state, str(path), "the AlphaCLIP visual tower of this clip_model")
    ref = next(visual.parameters())
    visual.load_state_dict({k: v.to(ref.dtype) for k, v in state.items()}, strict=True)


def region_inputs(
    images: torch.Tensor, masks: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Point CLIP at the mask.

    Args:
        images: (B, 3, S, S) float in [0, 1].
        masks: (B, 1, S, S) float in [0, 1], 1 = defect region.
        mode: ``alpha``, ``blur`` or ``dim``.

    Returns:
        (images, alpha): prompted images in [0, 1], and the normalised alpha map for ``alpha`` (else None).
    """
    if mode == "alpha":
        return images, (masks - ALPHA_MEAN) / ALPHA_STD
    if mode == "dim":
        return images * (masks + (1 - masks) * DIM_FACTOR), None
    if mode == "blur":
        return masks * images + (1 - masks) * _gaussian_blur(images, images.shape[-1] / 16), None
    raise ValueError(f"mode must be alpha, blur or dim, got {mode!r}")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, min(int(3 * sigma), x.shape[-1] - 1, x.shape[-2] - 1))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.transpose(2, 3), groups=x.shape[1])


class ClipRegionScorer:
    """Category-consistency scorer with (Alpha)CLIP; see the module docstring.

    Args:
        config: ``selection`` section: ``clip_model``, ``clip_weights``, ``alpha_clip_weights``,
            ``region_prompt``, ``device``, ``dtype``, ``max_batch``.

    Raises:
        WeightsError: a weights path is unset, missing or does not match the model (before any work).
    """

    name = "clip-region"

    def __init__(self, config: SelectionConfig) -> None:
        import open_clip

        paths = check_weights(config)
        mode, name, pretrained, alpha_path = paths["mode"], config.clip_model, paths["clip"], paths["alpha"]
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        model = open_clip.create_model(
            name, pretrained=None if pretrained is None else str(pretrained), device=device
        )
        if alpha_path is not None:
            holder = add_alpha_channel(model.visual)
            load_alpha_clip_visual(model.visual, alpha_path)
        self._setup(config, model.to(dtype).eval(), open_clip.get_tokenizer(name), mode, device)
        if alpha_path is not None:
            self._alpha = holder

    @classmethod
    def from_model(
        cls, config: SelectionConfig, model: nn.Module, tokenizer: Any, mode: str | None = None
    ) -> ClipRegionScorer:
        """Wrap an open_clip model already in memory (tests, benchmarks); ``mode`` defaults to the config's.

        ``mode="alpha"`` gives the model a (zero-initialised) alpha channel unless it has one.
        """
        self = cls.__new__(cls)
        mode = mode or _resolve_mode(config)
        holder = None
        if mode == "alpha":
            holder = getattr(model.visual, "_uniadc_alpha", None) or add_alpha_channel(model.visual)
            model.visual._uniadc_alpha = holder
        device = next(model.parameters()).device
        self._setup(config, model.eval(), tokenizer, mode, device)
        self._alpha = holder
        return self

    def _setup(
        self, config: SelectionConfig, model: nn.Module, tokenizer: Any, mode: str, device: torch.device
    ) -> None:
        import open_clip

        self.model, self.tokenizer, self.mode, self.device = model, tokenizer, mode, device
        self._alpha: _AlphaInput | None = None
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", model.visual.image_size)
        self.size = tuple(size) if isinstance(size, list | tuple) else (size, size)
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(
            1, 3, 1, 1
        )
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
        self._split = BatchSplitter(config.max_batch, empty_cache(device))
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def text_features(self, prior: AnomalyPrior) -> torch.Tensor:
        """(D,) float32 unit embedding of the category: its descriptions' unit embeddings averaged."""
        key = prior.descriptions
        if key not in self._text_cache:
            with torch.inference_mode():
                tokens = self.tokenizer(list(key)).to(self.device)
                emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
                self._text_cache[key] = F.normalize(emb.mean(0), dim=-1)
        return self._text_cache[key]

    def image_features(self, images: np.ndarray, masks: np.ndarray) -> torch.Tensor:
        """(B, D) float32 unit embeddings of region-prompted images ((B, H, W, 3) uint8, (B, H, W) bool)."""

        def run(start: int, stop: int) -> torch.Tensor:
            x = torch.from_numpy(np.ascontiguousarray(images[start:stop])).to(self.device).permute(0, 3, 1, 2)
            m = torch.from_numpy(np.ascontiguousarray(masks[start:stop])).to(self.device)[:, None].float()
            x = F.interpolate(x.float() / 255, size=self.size, mode="bicubic", antialias=True).clamp(0, 1)
            m = F.interpolate(m, size=self.size, mode="bilinear", antialias=True).clamp(0, 1)
            x, alpha = region_inputs(x, m, self.mode)
            x = ((x - self.mean) / self.std).to(self.dtype)
            if self._alpha is not None:
                self._alpha.alpha = alpha
            try:
                return F.normalize(self.model.encode_image(x).float(), dim=-1)
            finally:
                if self._alpha is not None:
                    self._alpha.alpha = None

        with torch.inference_mode():
            return torch.cat(self._split.run(run, len(images)))

    def score(self, request: ScoreRequest) -> np.ndarray:
        """(B,) float64: softmax probability of the own category among the image class's, or raw cosine."""
        c = request.candidates
        if c.ndim != 4 or c.shape[-1] != 3 or c.dtype != np.uint8:
            raise ValueError(f"candidates must be (B, H, W, 3) uint8, got {c.shape} {c.dtype}")
        if request.masks.shape != c.shape[:3] or request.masks.dtype != bool:
            raise ValueError(f"masks must be (B, H, W) bool matching candidates, got {request.masks.shape}")
        texts = torch.stack([self.text_features(p) for p in (request.prior, *request.other_priors)])
        feats = self.image_features(c, request.masks)
        cos = feats @ texts.T
        if texts.shape[0] == 1:
            return cos[:, 0].double().cpu().numpy()
        logit_scale = self.model.logit_scale.detach().exp().float()
        return torch.softmax(logit_scale * cos, dim=-1)[:, 0].double().cpu().numpy()


def check_weights(config: SelectionConfig) -> dict[str, Any]:
    """Validate the scorer's weights paths without loading anything.

    Returns:
        ``{"mode": region prompt, "clip": checkpoint file or None (local-dir), "alpha": AlphaCLIP file}``.

    Raises:
        WeightsError: one line naming the config key, the path and the expected layout.
        ValueError: ``clip_model`` is neither an open_clip built-in name nor ``local-dir:``.
    """
    mode = _resolve_mode(config)
    name = config.clip_model
    clip = None
    if name.startswith("local-dir:"):
        folder = require_path(
            name.removeprefix("local-dir:"), "selection.clip_model", CLIP_LAYOUT, ("open_clip_config.json",)
        )
        check_json(folder / "open_clip_config.json", "selection.clip_model")
        check_weights_folder(folder, "selection.clip_model", CLIP_LAYOUT)
    else:
        clip = require_path(config.clip_weights, "selection.clip_weights", CLIP_LAYOUT, is_file=True)
        check_weights_file(clip, "selection.clip_weights")
        import open_clip

        if name.replace("/", "-") not in open_clip.list_models():
            raise ValueError(
                f"selection.clip_model={name!r} is not an open_clip built-in model name "
                f"(nor 'local-dir:/folder')"
            )
    alpha = None
    if mode == "alpha":
        alpha = require_path(
            config.alpha_clip_weights,
            "selection.alpha_clip_weights",
            "an AlphaCLIP visual checkpoint (.pth, e.g. clip_l14_336_grit_20m_4xe.pth)",
            is_file=True,
        )
        check_weights_file(alpha, "selection.alpha_clip_weights")
    return {"mode": mode, "clip": clip, "alpha": alpha}


def _resolve_mode(config: SelectionConfig) -> str:
    if config.region_prompt == "auto":
        return "alpha" if config.alpha_clip_weights else "blur"
    if config.region_prompt == "alpha" and not config.alpha_clip_weights:
        raise WeightsError(
            "selection.region_prompt is 'alpha' but selection.alpha_clip_weights is not set; "
            "expected an AlphaCLIP visual checkpoint (.pth)"
        )
    return config.region_prompt


def build_scorer(config: SelectionConfig) -> ClipRegionScorer:
    """The registry's entry point."""
    return ClipRegionScorer(config)
