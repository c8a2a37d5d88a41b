"""Stable Diffusion 1.5-shaped pipelines around given (random) models: tests and speed benchmarks need no weights.

Speed does not depend on weight values, so a pipeline assembled here from SD1.5-sized random models times like
the real one, and a tiny one runs the same code paths in tests.
"""

from __future__ import annotations

from typing import Any

#: DDIM scheduler settings of Stable Diffusion 1.5.
SD15_SCHEDULER: dict[str, Any] = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    num_train_timesteps=1000,
)


def assemble_pipeline(unet: Any, vae: Any, text_encoder: Any) -> Any:
    """A stock diffusers pipeline around the given models: ``StableDiffusionInpaintPipeline`` when the UNet takes
    9 input channels (SD inpainting), else ``StableDiffusionPipeline`` (the BrushNet base). DDIM, offline CLIP
    tokenizer, no safety checker, progress bar off."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    from uniadc.tokenizer import clip_tokenizer

    cls = StableDiffusionInpaintPipeline if unet.config.in_channels == 9 else StableDiffusionPipeline
    pipe = cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
