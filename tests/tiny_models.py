"""Tiny random models built from configs (no download), shaped like the real ones, and saved like them.

SD-like pipelines: a 2-level UNet (32/64 channels, cross-attention in the outer level as in SD1.5), a VAE
with SD's 8x downscale, a 2-layer CLIP text encoder over the real 49,408-token vocabulary, SD1.5's DDIM
config. BrushNet: ``BrushNetModel.from_unet`` with its zero convs randomised so the residuals matter.
CLIP: a 2-layer ViT/text open_clip model saved as an open_clip ``local-dir:`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_unet(in_channels: int = 4, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    ).eval()


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=32,
    )
    return CLIPTextModel(cfg).eval()


def tiny_pipeline(in_channels: int = 9, seed: int = 0):
    """A stock StableDiffusionInpaintPipeline (9 channels) or StableDiffusionPipeline (4) of tiny models."""
    from uniadc.synthesis.random_models import assemble_pipeline

    return assemble_pipeline(tiny_unet(in_channels, seed), tiny_vae(seed), tiny_text_encoder(seed))


def tiny_brushnet(unet, seed: int = 0, std: float = 0.05):
    """BrushNet initialised from ``unet`` with random (not zero) residual convs."""
    from uniadc.synthesis.brushnet_model import BrushNetModel

    model = BrushNetModel.from_unet(unet)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("brushnet_") or name.startswith("conv_in_condition"):
                p.copy_(torch.randn(p.shape, generator=gen) * std + (p if name.startswith("conv_in") else 0))
    return model.eval()


def save_sd_folder(root: Path, in_channels: int = 9, seed: int = 0) -> Path:
    """Save a tiny pipeline in the diffusers folder layout; returns the folder."""
    folder = Path(root) / f"tiny-sd-{in_channels}ch"
    tiny_pipeline(in_channels, seed).save_pretrained(folder)
    return folder


def save_brushnet_folder(
    root: Path, unet, name: str = "segmentation_mask_brushnet_ckpt", seed: int = 0
) -> Path:
    folder = Path(root) / name
    tiny_brushnet(unet, seed).save_pretrained(folder)
    return folder


def tiny_clip(seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CLIP_CFG).eval()


def save_clip_folder(root: Path, model, name: str = "tiny-clip") -> Path:
    """Save an open_clip ``local-dir:`` folder (open_clip_config.json + open_clip_model.safetensors)."""
    from safetensors.torch import save_file

    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": TINY_CLIP_CFG,
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder
