"""The DINOv3 backbone and the dino.txt text tower on tiny random models built here (no weights exist offline)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from schemas.config import ConfigError, DiscriminatorConfig, load_run_config
from storage.checkpoints import load_discriminator, save_discriminator
from storage.demo import build_demo_dataset
from uniadc.discriminator import build_discriminator, predict, restore_discriminator
from uniadc.discriminator.dinov3 import (
    DinoTxtTextTower,
    check_dino_weights,
    encode_dinotxt,
    evenly_spaced_layers,
    load_dinotxt,
)
from uniadc.synthesis.runtime import WeightsError

TEXTS = [["a dark crack"], ["a bright spot"]]


def tiny_dinov3(folder: Path, seed: int = 0) -> Path:
    """A 4-layer, 32-wide DINOv3 ViT with 2 register tokens, saved as a transformers folder."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    config = DINOv3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_register_tokens=2, patch_size=16, image_size=64,
    )  # fmt: skip
    DINOv3ViTModel(config).save_pretrained(folder)
    return folder


def tiny_dinotxt(path: Path, seed: int = 0, wrap: bool = True) -> DinoTxtTextTower:
    """A 2+1-block, 64-wide text tower saved the way a full dino.txt checkpoint nests it."""
    torch.manual_seed(seed)
    tower = DinoTxtTextTower(context=77, dim=64, depth=2, head_depth=1, out_dim=48).eval()
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = {f"text_model.{k}": v for k, v in tower.state_dict().items()}
    state["vision_head.blocks.0.weight"] = torch.zeros(3)  # other parts of the file are ignored
    torch.save({"model": state} if wrap else state, path)
    return tower


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("dino")
    folder = tiny_dinov3(root / "dinov3")
    tiny_dinotxt(root / "dinotxt.pth")
    return folder, root / "dinotxt.pth"


def dino_config(weights, **kw) -> DiscriminatorConfig:
    folder, text = weights
    base = dict(
        backbone="dinov3", text_encoder="dinotxt", dinov3_weights=str(folder), dinotxt_weights=str(text),
        fusion_dim=16, iterations=4, batch_size=4, num_threads=1, reference="none",
    )  # fmt: skip
    return DiscriminatorConfig(**(base | kw))


def test_layers_are_the_official_choice():
    assert evenly_spaced_layers(12) == (2, 5, 8, 11)
    assert evenly_spaced_layers(4) == (0, 1, 2, 3)
    assert evenly_spaced_layers(2) == (0, 1)


def test_backbone_levels_are_normed_patch_tokens_of_the_chosen_layers(weights):
    from transformers import DINOv3ViTModel

    model = build_discriminator(dino_config(weights), TEXTS, image_size=64, seed=0)
    backbone = model.backbone
    assert (
        backbone.layers == (0, 1, 2, 3) and backbone.strides == (16,) * 4 and backbone.channels == (32,) * 4
    )
    x = torch.randn(2, 3, 64, 96)  # not square: DINOv3's RoPE takes any multiple of the patch
    levels = backbone(x)
    assert [tuple(lv.shape) for lv in levels] == [(2, 32, 4, 6)] * 4
    reference = DINOv3ViTModel.from_pretrained(str(weights[0])).eval()
    with torch.no_grad():
        out = reference(pixel_values=backbone.renormalise(x), output_hidden_states=True)
    tokens = reference.norm(out.hidden_states[3])[:, 3:]  # layer 2 (0-based), class + 2 register tokens off
    assert torch.allclose(levels[2], tokens.transpose(1, 2).reshape(2, 32, 4, 6), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        backbone(torch.randn(1, 3, 60, 64))


def test_dinotxt_loads_a_nested_prefixed_checkpoint_exactly(tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    tower = tiny_dinotxt(tmp_path / "t.pth")
    loaded = load_dinotxt(tmp_path / "t.pth")
    tokens = SimpleTokenizer(context_length=77)(["a dark crack", "a bright spot on the surface"])
    with torch.no_grad():
        assert torch.equal(tower(tokens), loaded(tokens))
    emb = encode_dinotxt(TEXTS, tmp_path / "t.pth")
    assert emb.shape == (2, 24)  # the second (patch-aligned) half of the 48-d embedding
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    tiny_dinotxt(tmp_path / "flat.pth", wrap=False)  # an un-nested state dict loads too
    assert torch.allclose(encode_dinotxt(TEXTS, tmp_path / "flat.pth"), emb)


def test_a_checkpoint_of_another_layout_is_one_line(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="discriminator.dinotxt_weights") as err:
        load_dinotxt(tmp_path / "other.pth")
    assert "\n" not in str(err.value)
    state = {
        f"text_model.{k}": v for k, v in DinoTxtTextTower(dim=64, depth=1, out_dim=8).state_dict().items()
    }
    del state["text_model.backbone.ln_final.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="backbone.ln_final.bias"):
        load_dinotxt(tmp_path / "broken.pth")


def test_preflight_names_the_key_and_path(tmp_path, weights):
    missing = tmp_path / "nowhere"
    with pytest.raises(WeightsError) as err:
        check_dino_weights(dino_config(weights, dinov3_weights=str(missing)))
    assert "discriminator.dinov3_weights" in str(err.value) and str(missing) in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsError, match="is not set"):
        check_dino_weights(dino_config(weights, dinov3_weights=None))
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(WeightsError, match="not 'dinov3_vit'"):
        check_dino_weights(dino_config(weights, dinov3_weights=str(tmp_path / "vit")))
    with pytest.raises(WeightsError, match="discriminator.dinotxt_weights"):
        check_dino_weights(dino_config(weights, dinotxt_weights=str(missing / "t.pth")))
    check_dino_weights(dino_config(weights))


def test_dinotxt_without_weights_needs_an_explicit_fallback(weights):
    with pytest.raises(ValueError, match="text_fallback"):
        DiscriminatorConfig(text_encoder="dinotxt")
    cfg = DiscriminatorConfig(text_encoder="dinotxt", text_fallback="minilm")
    assert cfg.resolved_text_encoder() == "minilm"
    assert dino_config(weights).resolved_text_encoder() == "dinotxt"
    with pytest.raises(ConfigError, match="discriminator"):
        load_run_config(None, data={"dataset": {"kind": "demo", "root": "x"},
                                    "discriminator": {"text_encoder": "dinotxt"}})  # fmt: skip


def test_tiny_text_fallback_builds(weights):
    cfg = dino_config(weights, text_encoder="dinotxt", dinotxt_weights=None, text_fallback="clip",
                      clip_model="tiny-random")  # fmt: skip
    model = build_discriminator(cfg, TEXTS, image_size=64, seed=0)
    assert model.class_embeddings().shape[0] == 2


def test_checkpoint_save_load_predict(tmp_path, weights):
    from uniadc.discriminator import TrainingData, train_discriminator

    rng = np.random.default_rng(0)
    normals = rng.integers(100, 140, (2, 64, 64, 3), dtype=np.uint8)
    anomalies = rng.integers(100, 140, (4, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((4, 64, 64), np.uint8)
    for i in range(4):
        masks[i, 16:40, 16:40] = 1 + i % 2
    anomalies[masks > 0] = 20
    cfg = dino_config(weights)
    model = build_discriminator(cfg, TEXTS, image_size=64, seed=0)
    train_discriminator(model, TrainingData(normals, anomalies, masks), cfg, seed=0)
    save_discriminator(tmp_path / "ckpt.safetensors", model)
    ckpt = load_discriminator(tmp_path / "ckpt.safetensors")
    again = restore_discriminator(
        ckpt.state, ckpt.config, ckpt.category_texts, ckpt.image_size, ckpt.seed, ckpt.backbone_sha256
    )
    a, b = predict(model, anomalies, 0.5), predict(again, anomalies, 0.5)
    assert np.allclose(a.anomaly_maps, b.anomaly_maps, atol=1e-6)
    assert np.array_equal(a.class_maps, b.class_maps)
    other = tiny_dinov3(tmp_path / "other-vit", seed=1)  # other backbone weights: refused
    with pytest.raises(ValueError, match="backbone_sha256"):
        restore_discriminator(
            ckpt.state, ckpt.config.model_copy(update={"dinov3_weights": str(other)}), ckpt.category_texts,
            ckpt.image_size, ckpt.seed, ckpt.backbone_sha256,
        )  # fmt: skip


def test_uniadc_run_end_to_end_with_dinov3(prefect_harness, tmp_path, weights, one_torch_thread):
    from flows.cli import app

    data = tmp_path / "data"
    build_demo_dataset(data, image_size=64, n_train=3, n_test_good=2, n_test_per_defect=1,
                       image_classes=("brick",))  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "dino", "dataset": {"kind": "demo", "root": str(data), "image_class": "brick"},
        "image_size": 64, "store": str(tmp_path / "store"),
        "synthesis": {"samples_per_category": 2, "masks_per_sample": 2, "noise_factors": [0.5]},
        "discriminator": {"fusion_dim": 16, "iterations": 4, "batch_size": 4},
    }))  # fmt: skip
    folder, text = weights
    sets = ["--set", "discriminator.backbone=dinov3", "--set", f"discriminator.dinov3_weights={folder}",
            "--set", "discriminator.text_encoder=dinotxt",
            "--set", f"discriminator.dinotxt_weights={text}"]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--config", str(config), *sets])
    assert result.exit_code == 0, result.output
    report = next((tmp_path / "store").rglob("report.html")).read_text()
    assert "dinov3 + dinotxt" in report
    missing = tmp_path / "no-weights"
    result = runner.invoke(app, ["run", "--config", str(config), "--set", "discriminator.backbone=dinov3",
                                 "--set", f"discriminator.dinov3_weights={missing}"])  # fmt: skip
    text_out = result.output.strip()
    assert result.exit_code == 2 and len(text_out.splitlines()) == 1, text_out
    assert "discriminator.dinov3_weights" in text_out and str(missing) in text_out
