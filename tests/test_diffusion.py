"""Diffusion backends (sd-inpaint, brushnet) on tiny random models built from configs; no download."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.config import DiffusionOptions
from schemas.priors import AnomalyPrior
from tests.tiny_models import (
    save_brushnet_folder,
    save_sd_folder,
    tiny_brushnet,
    tiny_pipeline,
)
from uniadc.synthesis.base import SynthesisRequest, Synthesizer
from uniadc.synthesis.brushnet_model import BrushNetModel, UNetResidualInjector
from uniadc.synthesis.diffusion import BrushNetSynthesizer, SDInpaintSynthesizer, WeightsError
from uniadc.synthesis.diffusion_backend import mask_tensor
from uniadc.synthesis.diffusion_sampler import ddim_schedule, ddim_step, denoise, noised_start
from uniadc.synthesis.random_models import SD15_SCHEDULER
from uniadc.synthesis.runtime import BatchSplitter

NOTES = Path(__file__).resolve().parents[2] / "shared" / "notes"
# sha256 of the sorted "key<TAB>shape" lines of the published BrushNet state dict (brushnet-keys.txt).
PUBLISHED_LAYOUT_SHA256 = "f2c9501c7e8dce95e76f72436d6af1fb00b7f89b94840d90e9205955ce52e066"
PUBLISHED_CONFIG = {
    "in_channels": 4,
    "conditioning_channels": 5,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D"] * 4,
    "mid_block_type": "MidBlock2D",
    "up_block_types": ["UpBlock2D"] * 4,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "resnet_time_scale_shift": "default",
    "brushnet_conditioning_channel_order": "rgb",
    "global_pool_conditions": False,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "_class_name": "BrushNetModel",
    "_diffusers_version": "0.27.0.dev0",
}
PRIOR = AnomalyPrior(name="scratch", descriptions=("a scratch", "a long scratch"))
NEG_PRIOR = AnomalyPrior(name="missing", descriptions=("black void",), negative_prompt="metal pins")


def _request(
    b: int = 3, size: int = 64, gammas=(0.4, 0.5, 0.6), prior: AnomalyPrior = PRIOR, seed: int = 0, **kwargs
) -> SynthesisRequest:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
    masks = np.zeros((b, size, size), bool)
    for i in range(b):
        y, x = rng.integers(0, size // 2, 2)
        masks[i, y : y + size // 3, x : x + size // 3 + i] = True
    return SynthesisRequest(
        images=images,
        masks=masks,
        prior=prior,
        noise_factors=np.resize(np.asarray(gammas, float), b),
        **kwargs,
    )


def _opts(**kw) -> DiffusionOptions:
    base = dict(steps=2, resolution=None, guidance_scale=5.0, device="cpu", negative_steps=2)
    return DiffusionOptions(**{**base, **kw})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    base = save_sd_folder(root, in_channels=4)
    unet = tiny_pipeline(4).unet
    return {
        "inpaint": save_sd_folder(root, in_channels=9),
        "base": base,
        "seg": save_brushnet_folder(root, unet, "segmentation_mask_brushnet_ckpt", seed=1),
        "rand": save_brushnet_folder(root, unet, "random_mask_brushnet_ckpt", seed=2),
    }


# ---- schedule ----------------------------------------------------------------------------------
def test_schedule_follows_the_official_noise_factor_rule():
    from diffusers import DDIMScheduler

    sched = ddim_schedule(DDIMScheduler(**SD15_SCHEDULER), 10, np.array([0.4, 0.5, 0.6, 1.0]))
    # int(10 / gamma) = 25, 20, 16, 10 leading-spaced steps (+1 offset), the last 10 of each
    assert sched.timesteps[:, 0].tolist() == [9 * 40 + 1, 9 * 50 + 1, 9 * 62 + 1, 9 * 100 + 1]
    assert sched.timesteps[:, -1].tolist() == [1, 1, 1, 1]
    assert sched.timesteps.shape == (4, 10)
    assert sched.full.tolist() == [False, False, False, True]
    alphas = DDIMScheduler(**SD15_SCHEDULER).alphas_cumprod
    assert torch.equal(sched.alpha_prev[:, -1], alphas[0].repeat(4))  # set_alpha_to_one=False
    assert torch.equal(sched.alpha_prev[1, 0], alphas[401])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers(prediction_type):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(**{**SD15_SCHEDULER, "prediction_type": prediction_type})
    ref.set_timesteps(20)
    t = int(ref.timesteps[3])
    gen = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    expected = ref.step(out, t, x).prev_sample
    a, ap = ref.alphas_cumprod[t].repeat(2), ref.alphas_cumprod[t - 50].repeat(2)
    assert torch.allclose(ddim_step(x, out, a, ap, prediction_type), expected, atol=1e-6)


# ---- sd-inpaint ------------------------------------------------------------------------------------
def test_sd_inpaint_equals_the_stock_pipeline():
    """With gamma = 0.5 our batched sampler is the stock StableDiffusionInpaintPipeline with strength=0.5."""
    from PIL import Image

    pipe = tiny_pipeline(9)
    with torch.no_grad():  # near-zero posterior std, so the pipeline's VAE draws do not matter
        pipe.vae.quant_conv.bias[4:] = -30.0
    syn = SDInpaintSynthesizer.from_pipeline(_opts(), pipe)
    req = _request(gammas=(0.5,))
    gen = torch.Generator().manual_seed(7)
    ref = pipe(
        prompt=list(req.batch_prompts),
        image=[Image.fromarray(i) for i in req.images],
        mask_image=[Image.fromarray(m.astype(np.uint8) * 255) for m in req.masks],
        height=64,
        width=64,
        strength=0.5,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=gen,
        output_type="pt",
    ).images
    gen = torch.Generator().manual_seed(7)
    torch.randn(3, 4, 8, 8, generator=gen)  # the pipeline's image-latent draw
    noise = torch.randn(3, 4, 8, 8, generator=gen)
    with torch.inference_mode():
        mean, _ = syn._image_moments(req.images, (64, 64))
        holes = mask_tensor(req.masks, (64, 64), syn.device)
        masked, _ = syn._vae_moments(syn._blank(syn._to_pixels(req.images, (64, 64)), holes))
        text, rows = syn._encode_text(req.batch_prompts, "")
        sched = ddim_schedule(syn.scheduler, 2, np.full(3, 0.5))
        cond = syn._conditioning(text[rows.reshape(-1)], holes, syn._scale_latents(masked), 1.0)
        x = denoise(pipe.unet, noised_start(syn._scale_latents(mean), noise, sched), sched, cond, 5.0)
        ours = (pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_sd_inpaint_from_folder(folders):
    syn = SDInpaintSynthesizer(_opts(pipeline_path=str(folders["inpaint"]), resolution=64))
    assert isinstance(syn, Synthesizer) and syn.name == "sd-inpaint"
    req = _request(b=3, size=48)  # resized to 64 for the diffusion and back
    out = syn.synthesize(req, np.random.default_rng(1))
    assert out.shape == req.images.shape and out.dtype == np.uint8
    assert np.array_equal(out[~req.masks], req.images[~req.masks])
    assert not np.array_equal(out[req.masks], req.images[req.masks])
    assert np.array_equal(out, syn.synthesize(req, np.random.default_rng(1)))
    assert not np.array_equal(out, syn.synthesize(req, np.random.default_rng(2)))


def test_candidates_are_independent_of_batching():
    """A candidate's pixels depend on its own inputs and draws only, not on the chunk it ran in."""
    syn = SDInpaintSynthesizer.from_pipeline(_opts(max_batch=4), tiny_pipeline(9))
    req = _request(b=4)
    whole = syn.synthesize(req, np.random.default_rng(3))
    syn._unet_split.chunk = syn._decode_split.chunk = 1
    split = syn.synthesize(req, np.random.default_rng(3))
    assert np.abs(whole.astype(int) - split.astype(int)).max() <= 1


def test_oom_halves_the_chunk_and_keeps_the_result():
    calls: list[int] = []

    def fn(start, stop):
        calls.append(stop - start)
        if stop - start > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return list(range(start, stop))

    splitter = BatchSplitter(max_batch=8)
    assert sum(splitter.run(fn, 7), []) == list(range(7))
    assert calls == [7, 4, 2, 2, 2, 1] and splitter.chunk == 2
    calls.clear()
    splitter.run(fn, 4)
    assert calls == [2, 2]  # the working size is remembered
    with pytest.raises(torch.OutOfMemoryError):
        BatchSplitter(4).run(lambda s, e: (_ for _ in ()).throw(torch.OutOfMemoryError("x")), 3)
    with pytest.raises(KeyError):
        BatchSplitter(4).run(lambda s, e: {}["not an oom"], 3)


def test_oom_in_the_unet_splits_the_candidates():
    pipe = tiny_pipeline(9)
    syn = SDInpaintSynthesizer.from_pipeline(_opts(max_batch=4), pipe)
    req = _request(b=4)
    expected = syn.synthesize(req, np.random.default_rng(5))
    forward, seen = pipe.unet.forward, []

    def limited(sample, *args, **kwargs):
        seen.append(sample.shape[0])
        if sample.shape[0] > 4:  # CFG doubles: more than 2 candidates do not "fit"
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(sample, *args, **kwargs)

    pipe.unet.forward = limited
    got = syn.synthesize(req, np.random.default_rng(5))
    assert seen[0] == 8 and max(seen[1:]) == 4 and syn._unet_split.chunk == 2
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


# ---- weights errors ----------------------------------------------------------------------------
def test_weights_errors_name_the_path_and_the_layout(tmp_path, folders):
    with pytest.raises(WeightsError, match="pipeline_path is not set; expected"):
        SDInpaintSynthesizer(_opts())
    missing = tmp_path / "nope"
    with pytest.raises(WeightsError, match=f"{missing}.*no such folder.*model_index.json"):
        SDInpaintSynthesizer(_opts(pipeline_path=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="missing model_index.json, unet/config.json"):
        SDInpaintSynthesizer(_opts(pipeline_path=str(tmp_path / "empty")))
    with pytest.raises(WeightsError, match="in_channels=4; expected an SD inpainting checkpoint"):
        SDInpaintSynthesizer(_opts(pipeline_path=str(folders["base"])))
    with pytest.raises(WeightsError, match="in_channels=9; expected an SD1.5 base"):
        BrushNetSynthesizer(_opts(pipeline_path=str(folders["inpaint"]), brushnet_path=str(folders["seg"])))
    with pytest.raises(WeightsError, match="brushnet_path is not set"):
        BrushNetSynthesizer(_opts(pipeline_path=str(folders["base"])))
    with pytest.raises(WeightsError, match=f"brushnet_random_mask_path='{missing}': no such folder"):
        BrushNetSynthesizer(
            _opts(
                pipeline_path=str(folders["base"]),
                brushnet_path=str(folders["seg"]),
                brushnet_random_mask_path=str(missing),
            )
        )
    try:
        SDInpaintSynthesizer(_opts(pipeline_path=str(missing)))
    except WeightsError as exc:
        assert "\n" not in str(exc) and isinstance(exc, ValueError)


# ---- BrushNet model ----------------------------------------------------------------------------
def test_brushnet_matches_the_published_layout():
    with torch.device("meta"):
        model = BrushNetModel.from_config(PUBLISHED_CONFIG)
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(layout) == 322 and sum(int(np.prod(s)) for s in layout.values()) == 618_830_080
    text = "\n".join(f"{k}\t{layout[k]}" for k in sorted(layout))
    if (NOTES / "brushnet-keys.txt").is_file():
        ref = dict(
            line.rstrip("\n").split("\t")
            for line in (NOTES / "brushnet-keys.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
        assert {k: str(v) for k, v in layout.items()} == ref
    assert hashlib.sha256(text.encode()).hexdigest() == PUBLISHED_LAYOUT_SHA256
    # a strict load of a state dict with the published layout (meta tensors: no memory)
    state = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    model.load_state_dict(state, strict=True, assign=True)


def test_brushnet_roundtrip_and_strict_load(tmp_path):
    from safetensors.torch import load_file, save_file

    unet = tiny_pipeline(4).unet
    model = tiny_brushnet(unet, seed=3)
    model.save_pretrained(tmp_path / "bn")
    assert sorted(p.name for p in (tmp_path / "bn").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    loaded = BrushNetModel.from_checkpoint(tmp_path / "bn")
    gen = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 5, 8, 8, generator=gen)
    with torch.no_grad():
        a, b = model(x, torch.tensor([10, 500]), cond, 0.7), loaded(x, torch.tensor([10, 500]), cond, 0.7)
    assert len(a.down_block_res_samples) == 6 and len(a.up_block_res_samples) == 7  # 1 + 2*2 + 1, 3*2 + 1
    assert all(
        torch.equal(p, q)
        for p, q in zip(  # noqa: B905
            a.down_block_res_samples + a.up_block_res_samples,
            b.down_block_res_samples + b.up_block_res_samples,
        )
    )
    assert a.mid_block_res_sample.abs().sum() > 0
    state = load_file(str(tmp_path / "bn" / "diffusion_pytorch_model.safetensors"))
    state["extra.weight"] = torch.zeros(1)
    del state["brushnet_mid_block.bias"]
    save_file(state, str(tmp_path / "bn" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(
        WeightsError, match="1 missing .*brushnet_mid_block.bias.*1 unexpected .*extra.weight"
    ):
        BrushNetModel.from_checkpoint(tmp_path / "bn")


def test_from_unet_residuals_are_zero_and_leave_the_unet_unchanged():
    unet = tiny_pipeline(4).unet
    model = BrushNetModel.from_unet(unet)
    w = unet.conv_in.weight
    assert torch.equal(model.conv_in_condition.weight[:, :4], w) and torch.equal(
        model.conv_in_condition.weight[:, 4:8], w
    )
    assert torch.equal(
        model.down_blocks[1].resnets[0].conv1.weight, unet.down_blocks[1].resnets[0].conv1.weight
    )
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen)
    with torch.no_grad():
        out = model(x, 300, torch.randn(2, 5, 8, 8, generator=gen))
        plain = unet(x, 300, encoder_hidden_states=text).sample
        injector = UNetResidualInjector(unet)
        injector.set(out)
        injected = unet(x, 300, encoder_hidden_states=text).sample
    assert all(r.abs().max() == 0 for r in out.down_block_res_samples + out.up_block_res_samples)
    assert torch.equal(plain, injected)


def _reference_unet(unet, x, t, text, res):
    """The UNet forward written out, each BrushNet residual added where the BrushNet fork adds it."""
    emb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
    h = unet.conv_in(x)
    skips = [h]
    h = h + res.down_block_res_samples[0]  # not into the stored conv_in skip
    k = 1
    for block in unet.down_blocks:
        attns = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            h = resnet(h, emb)
            if attns:
                h = attns[j](h, encoder_hidden_states=text, return_dict=False)[0]
            h = h + res.down_block_res_samples[k]
            k += 1
            skips.append(h)
        if block.downsamplers is not None:
            h = block.downsamplers[0](h) + res.down_block_res_samples[k]
            k += 1
            skips.append(h)
    h = unet.mid_block(h, emb, encoder_hidden_states=text) + res.mid_block_res_sample
    k = 0
    for block in unet.up_blocks:
        attns = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
            if attns:
                h = attns[j](h, encoder_hidden_states=text, return_dict=False)[0]
            h = h + res.up_block_res_samples[k]
            k += 1
        if block.upsamplers is not None:
            h = block.upsamplers[0](h, skips[-1].shape[2:]) + res.up_block_res_samples[k]
            k += 1
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def test_injected_residuals_enter_where_the_fork_adds_them():
    unet = tiny_pipeline(4).unet
    model = tiny_brushnet(unet, seed=4, std=0.2)
    gen = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen)
    t = torch.tensor([100, 700])
    with torch.no_grad():
        res = model(x, t, torch.randn(2, 5, 8, 8, generator=gen), conditioning_scale=0.7)
        expected = _reference_unet(unet, x, t, text, res)
        injector = UNetResidualInjector(unet)
        injector.set(res)
        got = unet(x, t, encoder_hidden_states=text).sample
        injector.clear()
        plain = unet(x, t, encoder_hidden_states=text).sample
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2


# ---- BrushNet backend --------------------------------------------------------------------------
def test_brushnet_backend(folders):
    syn = BrushNetSynthesizer(
        _opts(
            pipeline_path=str(folders["base"]),
            brushnet_path=str(folders["seg"]),
            brushnet_random_mask_path=str(folders["rand"]),
        )
    )
    assert isinstance(syn, Synthesizer) and syn.name == "brushnet"
    req = _request(b=3)
    out = syn.synthesize(req, np.random.default_rng(1))
    assert out.shape == req.images.shape and out.dtype == np.uint8
    assert np.array_equal(out[~req.masks], req.images[~req.masks])
    assert np.array_equal(out, syn.synthesize(req, np.random.default_rng(1)))
    off = syn.synthesize(_request(b=3, conditioning_scale=0.0), np.random.default_rng(1))
    assert not np.array_equal(out, off)  # the BrushNet residuals matter
    fewshot = syn.synthesize(_request(b=3, extras={"repaint": True}), np.random.default_rng(1))
    assert not np.array_equal(out, fewshot)  # the pasted pixels are visible to BrushNet
    assert syn._random_mask is None
    neg = syn.synthesize(_request(b=3, prior=NEG_PRIOR), np.random.default_rng(1))
    assert syn._random_mask is not None and np.array_equal(neg[~req.masks], req.images[~req.masks])


def test_negative_prompt_needs_the_random_mask_checkpoint(folders):
    syn = BrushNetSynthesizer(_opts(pipeline_path=str(folders["base"]), brushnet_path=str(folders["seg"])))
    with pytest.raises(WeightsError, match="brushnet_random_mask_path is not set"):
        syn.synthesize(_request(b=2, prior=NEG_PRIOR), np.random.default_rng(0))


# ---- GPU smoke (real weights) ------------------------------------------------------------------
def _env_path(name: str) -> str:
    value = os.environ.get(name)
    if not value or not Path(value).exists():
        pytest.skip(f"set {name} to a local weights folder")
    return value


@pytest.mark.gpu
@pytest.mark.weights
def test_gpu_sd_inpaint_real_weights():
    syn = SDInpaintSynthesizer(DiffusionOptions(pipeline_path=_env_path("UNIADC_SD_INPAINT"), max_batch=96))
    req = _request(b=6, size=256)
    out = syn.synthesize(req, np.random.default_rng(0))
    assert out.shape == req.images.shape and np.array_equal(out[~req.masks], req.images[~req.masks])


@pytest.mark.gpu
@pytest.mark.weights
def test_gpu_brushnet_real_weights():
    syn = BrushNetSynthesizer(
        DiffusionOptions(
            pipeline_path=_env_path("UNIADC_SD15"), brushnet_path=_env_path("UNIADC_BRUSHNET"), max_batch=96
        )
    )
    req = _request(b=6, size=256)
    out = syn.synthesize(req, np.random.default_rng(0))
    assert out.shape == req.images.shape and np.array_equal(out[~req.masks], req.images[~req.masks])


def test_gpu_example_config_is_valid():
    from schemas.config import load_run_config

    cfg = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "mvtec-gpu-example.yaml")
    assert cfg.synthesis.resolved_backend(cfg.setting) == "brushnet" and cfg.selection.scorer == "clip-region"
    assert cfg.synthesis.masks_per_sample * len(cfg.synthesis.noise_factors) == 96
    assert cfg.synthesis.diffusion.guidance_scale == 12.5 and cfg.synthesis.diffusion.steps == 10
