"""Offline open_clip loading for the ``clip`` backbone and text encoder (never a download).

``clip_weights`` is a local checkpoint file (``pretrained=`` of open_clip, with ``clip_model`` naming the
architecture, e.g. ``ViT-B-16`` or ``ViT-L-14``; use a ``-quickgelu`` name for OpenAI weights) or a local
open_clip folder (``open_clip_config.json`` + weights, loaded with open_clip's ``local-dir:`` schema). The
special name ``tiny-random`` builds a tiny random ViT + text tower for tests and needs no weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from schemas.config import DiscriminatorConfig

TINY_CLIP = "tiny-random"


@dataclass
class ClipBundle:
    """A loaded open_clip model with what the discriminator needs from it.

    Attributes:
        model: the open_clip ``CLIP`` module (eval mode, frozen).
        tokenizer: callable list[str] -> (N, context_length) int64 tokens.
        mean: the model's image normalisation mean (RGB, [0, 1] scale).
        std: the model's image normalisation std.
    """

    model: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]


CLIP_WEIGHTS_LAYOUT = "an open_clip checkpoint file, or a folder with open_clip_config.json and weights"


def check_clip_weights(config: DiscriminatorConfig) -> None:
    """Check ``discriminator.clip_weights`` when the backbone or text encoder is ``clip``, without loading it:
    the path exists, a folder's ``open_clip_config.json`` parses, weight-file headers are valid.

    Raises:
        WeightsError: one line naming ``discriminator.clip_weights``, the path and what is wrong.
    """
    from uniadc.synthesis.runtime import (
        WeightsError,
        check_json,
        check_weights_file,
        check_weights_folder,
    )

    if "clip" not in (config.backbone, config.resolved_text_encoder()) or config.clip_model == TINY_CLIP:
        return
    key = "discriminator.clip_weights"
    if config.clip_weights is None:
        raise WeightsError(f"{key} is not set (backbone/text_encoder clip); expected {CLIP_WEIGHTS_LAYOUT}")
    path = Path(config.clip_weights)
    if path.is_dir():
        check_json(path / "open_clip_config.json", key)
        check_weights_folder(path, key, CLIP_WEIGHTS_LAYOUT)
    elif path.is_file():
        check_weights_file(path, key)
    else:
        raise WeightsError(
            f"{key}={config.clip_weights!r}: no such file or folder; expected {CLIP_WEIGHTS_LAYOUT}"
        )


def load_clip(config: DiscriminatorConfig, image_size: int, generator: torch.Generator) -> ClipBundle:
    """Build the open_clip model named by ``config.clip_model`` from ``config.clip_weights``.

    Args:
        config: discriminator config (``clip_model``, ``clip_weights``).
        image_size: input side; the position embedding is resized to it.
        generator: seeds the random weights of ``tiny-random``.

    Raises:
        ValueError: no weights for a real model, a weights path that does not exist, or a folder without
            weights.
    """
    import open_clip

    if config.clip_model == TINY_CLIP:
        return _tiny_clip(image_size, generator)
    if config.clip_weights is None:
        raise ValueError(
            f"clip_weights is None for clip_model={config.clip_model!r}: the clip backbone needs a local "
            "checkpoint file or open_clip folder (downloads are disabled)"
        )
    path = Path(config.clip_weights)
    if path.is_dir():
        # open_clip only warns and keeps random weights when the folder has none: refuse that here.
        if not any(p.suffix in {".safetensors", ".bin", ".pth"} for p in path.iterdir()):
            raise ValueError(f"clip_weights={config.clip_weights!r} holds no .safetensors/.bin/.pth weights")
        name = f"local-dir:{path}"
        model = open_clip.create_model(name, force_image_size=image_size)
    elif path.is_file():
        name = config.clip_model
        model = open_clip.create_model(name, pretrained=str(path), force_image_size=image_size)
    else:
        raise ValueError(f"clip_weights={config.clip_weights!r} is neither a file nor a folder")
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return ClipBundle(model.eval(), open_clip.get_tokenizer(name), mean, std)


def _tiny_clip(image_size: int, generator: torch.Generator) -> ClipBundle:
    import open_clip
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        model = CLIP(
            embed_dim=32,
            vision_cfg={
                "width": 64,
                "layers": 4,
                "head_width": 32,
                "patch_size": 16,
                "image_size": image_size,
            },
            text_cfg={"width": 32, "layers": 2, "heads": 2, "context_length": 77, "vocab_size": 49408},
        )
    return ClipBundle(
        model.eval(),
        open_clip.get_tokenizer("ViT-B-16"),
        tuple(open_clip.OPENAI_DATASET_MEAN),
        tuple(open_clip.OPENAI_DATASET_STD),
    )
