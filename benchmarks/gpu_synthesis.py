"""Throughput of the diffusion backends (+ clip-region selection), and the project's CPU overhead.

GPU modes (one selected sample = ``--candidates`` renders of one normal image, scored, argmax kept):

    # real weights
    python benchmarks/gpu_synthesis.py --backend brushnet --pipeline-path ckpt/realisticVisionV60B1_v51VAE \\
        --brushnet-path ckpt/segmentation_mask_brushnet_ckpt --clip-model ViT-L-14-336-quickgelu \\
        --clip-weights ckpt/vit_l14_336.bin --alpha-clip-weights ckpt/clip_l14_336_grit_20m_4xe.pth
    # SD1.5-shaped models with random weights (no files needed)
    python benchmarks/gpu_synthesis.py --backend brushnet --random-weights

prints selected samples per minute, seconds per selected sample, the UNet chunk that fitted and the peak GPU
memory. ``--cpu-overhead`` (what ``make bench`` runs) times the ``sd-inpaint`` backend against a bare
diffusers ``StableDiffusionInpaintPipeline`` call on the tiny test pipeline, same candidates and steps, and
prints the ratio (target: overhead <= 10 %).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.config import DiffusionOptions, SelectionConfig  # noqa: E402
from schemas.priors import AnomalyPrior  # noqa: E402
from uniadc.synthesis.base import ScoreRequest, SynthesisRequest  # noqa: E402

PRIOR = AnomalyPrior(name="scratch", descriptions=("a long thin scratch on the surface",))
OTHERS = (
    AnomalyPrior(name="hole", descriptions=("a small round hole",)),
    AnomalyPrior(name="stain", descriptions=("a dark stain",)),
)

SD15_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD15_VAE = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    in_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=3,
    sample_size=512,
    up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)


def make_request(
    rng: np.random.Generator, size: int, n_masks: int, gammas: tuple[float, ...]
) -> SynthesisRequest:
    """One normal image, ``n_masks`` random rectangle/ellipse masks, each at every gamma."""
    image = (rng.normal(140, 25, (size, size, 3))).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for i in range(n_masks):
        cy, cx = rng.integers(size // 8, size - size // 8, 2)
        ry, rx = rng.integers(size // 40 + 2, size // 8, 2)
        m = (
            ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            if i % 2
            else (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        )
        masks.append(m)
    masks = np.repeat(np.stack(masks), len(gammas), axis=0)
    g = np.tile(np.asarray(gammas), n_masks)
    return SynthesisRequest(
        images=np.repeat(image[None], len(g), axis=0), masks=masks, prior=PRIOR, noise_factors=g
    )


def random_weight_backend(backend: str, options: DiffusionOptions, device: torch.device, dtype: torch.dtype):
    """SD1.5-shaped UNet/VAE/text encoder (+ BrushNet) with random weights, built on the device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from uniadc.synthesis.brushnet_model import BrushNetModel
    from uniadc.synthesis.diffusion import BrushNetSynthesizer, SDInpaintSynthesizer
    from uniadc.synthesis.random_models import assemble_pipeline

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**{**SD15_UNET, "in_channels": 9 if backend == "sd-inpaint" else 4})
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    pipe = assemble_pipeline(unet, vae, text).to(device=device, dtype=dtype)
    if backend == "sd-inpaint":
        return SDInpaintSynthesizer.from_pipeline(options, pipe)
    brushnet = BrushNetModel.from_unet(unet)
    with torch.no_grad():
        for name, p in brushnet.named_parameters():
            if name.startswith("brushnet_"):
                p.normal_(0, 0.01)  # random, not zero, so the residual path costs what it costs
    return BrushNetSynthesizer.from_pipeline(options, pipe, brushnet.to(device, dtype))


def gpu_benchmark(args: argparse.Namespace) -> None:
    from uniadc.selection_clip import ClipRegionScorer
    from uniadc.synthesis.runtime import resolve_device, resolve_dtype

    options = DiffusionOptions(
        pipeline_path=args.pipeline_path,
        brushnet_path=args.brushnet_path,
        brushnet_random_mask_path=args.random_mask_path,
        steps=args.steps,
        max_batch=args.max_batch,
        resolution=args.resolution,
        device=args.device,
        dtype=args.dtype,
    )
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    t0 = time.perf_counter()
    if args.random_weights:
        syn = random_weight_backend(args.backend, options, device, dtype)
    else:
        from schemas.config import SynthesisConfig
        from uniadc.synthesis.diffusion import build_synthesizer

        syn = build_synthesizer(args.backend, SynthesisConfig(backend=args.backend, diffusion=options))
    scorer = None
    sel = SelectionConfig(
        scorer="clip-region",
        clip_model=args.clip_model,
        clip_weights=args.clip_weights,
        alpha_clip_weights=args.alpha_clip_weights,
        device=args.device,
        dtype=args.dtype,
        max_batch=args.max_batch,
    )
    if args.clip_weights or args.clip_model.startswith("local-dir:"):
        scorer = ClipRegionScorer(sel)
    elif args.random_weights:
        import open_clip

        model = open_clip.create_model(args.clip_model, pretrained=None, device=device).to(dtype)
        scorer = ClipRegionScorer.from_model(
            sel, model, open_clip.get_tokenizer(args.clip_model), mode="alpha"
        )
    print(
        f"loaded {syn.name} on {device} {dtype} in {time.perf_counter() - t0:.1f} s; scorer: "
        f"{scorer.mode if scorer else 'none'}"
    )

    rng = np.random.default_rng(0)
    n_masks = args.candidates // 3
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.samples):
        req = make_request(rng, args.resolution, n_masks, (0.4, 0.5, 0.6))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        cands = syn.synthesize(req, rng)
        if scorer is not None:
            scores = scorer.score(
                ScoreRequest(
                    candidates=cands, masks=req.masks, references=req.images, prior=PRIOR, other_priors=OTHERS
                )
            )
            int(np.argmax(scores))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    per = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    print(
        f"{syn.name}: {len(req.masks)} candidates at {args.resolution}^2, {args.steps} steps, "
        f"UNet chunk {syn._unet_split.chunk}"
    )
    print(
        f"seconds per selected sample: {per:.2f} (median of {len(times)}); "
        f"selected samples per minute: {60 / per:.2f}; peak GPU memory: {peak:.1f} GiB"
    )


def cpu_overhead(args: argparse.Namespace) -> None:
    """Our sd-inpaint call vs a bare stock pipeline call on the tiny pipeline (same work), medians."""
    from PIL import Image

    from tests.tiny_models import tiny_pipeline
    from uniadc.synthesis.diffusion import SDInpaintSynthesizer

    torch.set_num_threads(args.threads)
    pipe = tiny_pipeline(9)
    b, size, gamma = args.cpu_candidates, 64, 0.5
    options = DiffusionOptions(steps=args.steps, resolution=None, device="cpu", max_batch=b)
    syn = SDInpaintSynthesizer.from_pipeline(options, pipe)
    rng = np.random.default_rng(0)
    base = make_request(rng, size, b, (gamma,))
    images = np.stack([make_request(rng, size, 1, (gamma,)).images[0] for _ in range(b)])  # distinct images
    prompts = [
        f"{PRIOR.descriptions[0]}, variant {i}" for i in range(b)
    ]  # and prompts: the same work for both
    req = SynthesisRequest(
        images=images, masks=base.masks, prior=PRIOR, noise_factors=base.noise_factors, prompts=tuple(prompts)
    )
    pil_images = [Image.fromarray(x) for x in req.images]
    pil_masks = [Image.fromarray(m.astype(np.uint8) * 255) for m in req.masks]

    def bare():
        pipe(
            prompt=prompts,
            image=pil_images,
            mask_image=pil_masks,
            height=size,
            width=size,
            strength=gamma,
            num_inference_steps=int(args.steps / gamma),
            guidance_scale=options.guidance_scale,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    def ours():
        syn.synthesize(req, np.random.default_rng(0))

    with torch.inference_mode():
        for fn in (bare, ours):  # warm-up
            fn()
        t_bare, t_ours = [], []
        for _ in range(args.repeats):  # interleaved so machine load hits both alike
            for fn, acc in ((bare, t_bare), (ours, t_ours)):
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
    mb, mo = statistics.median(t_bare), statistics.median(t_ours)
    print(
        f"tiny sd-inpaint, {b} candidates at {size}^2, {args.steps} steps, CFG, {args.threads} thread(s), "
        f"median of {args.repeats}"
    )
    print(
        f"bare diffusers call: {mb * 1000:.1f} ms; uniadc sd-inpaint: {mo * 1000:.1f} ms; "
        f"ratio {mo / mb:.3f} (overhead {100 * (mo / mb - 1):+.1f} %, target <= +10 %)"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["brushnet", "sd-inpaint"], default="brushnet")
    p.add_argument("--pipeline-path", help="SD1.5 (brushnet) or SD inpainting (sd-inpaint) diffusers folder")
    p.add_argument("--brushnet-path", help="segmentation_mask_brushnet_ckpt folder")
    p.add_argument("--random-mask-path", help="random_mask_brushnet_ckpt folder")
    p.add_argument(
        "--clip-model", default="ViT-L-14-336-quickgelu", help="open_clip name or local-dir:/folder"
    )
    p.add_argument(
        "--clip-weights", help="open_clip checkpoint file (omit: no scoring, or random with --random-weights)"
    )
    p.add_argument("--alpha-clip-weights", help="AlphaCLIP visual checkpoint")
    p.add_argument("--random-weights", action="store_true", help="SD1.5-shaped models with random weights")
    p.add_argument(
        "--cpu-overhead", action="store_true", help="overhead vs a bare diffusers call, tiny pipeline"
    )
    p.add_argument(
        "--candidates", type=int, default=96, help="candidates per selected sample (multiple of 3)"
    )
    p.add_argument("--samples", type=int, default=4, help="timed selected samples")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=96)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--cpu-candidates", type=int, default=6, help="--cpu-overhead: candidates per call")
    p.add_argument("--repeats", type=int, default=7, help="--cpu-overhead: timed repeats")
    p.add_argument("--threads", type=int, default=1, help="--cpu-overhead: torch CPU threads")
    args = p.parse_args(argv)
    if args.candidates < 3 or args.candidates % 3:
        p.error(f"--candidates must be a positive multiple of 3, got {args.candidates}")
    if args.cpu_overhead:
        cpu_overhead(args)
    else:
        gpu_benchmark(args)


if __name__ == "__main__":
    main()
