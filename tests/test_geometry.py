"""dataset.resize: squash (as before, byte for byte), letterbox (pad) and tiles stitched back (tile)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.config import DiscriminatorConfig, load_run_config
from storage.images import resize_image, resize_mask
from uniadc.discriminator import TrainingData, build_discriminator, train_discriminator
from uniadc.geometry import (
    canvas,
    cut_tiles,
    fit_image,
    fit_mask,
    letterbox_box,
    resolved_resize,
    stitch_mean,
    stitch_votes,
    tile_windows,
)
from uniadc.geometry.fitted import predict_canvas, predict_original


def test_auto_pads_only_elongated_images():
    assert resolved_resize("auto", 100, 150) == "squash"
    assert resolved_resize("auto", 100, 151) == "pad"
    assert resolved_resize("auto", 632, 222) == "pad"  # an MTD tile
    assert resolved_resize("tile", 10, 10) == "tile"
    with pytest.raises(ValueError, match="resize must be"):
        resolved_resize("crop", 10, 10)


def test_squash_is_the_previous_resize_byte_for_byte():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 300, 3), dtype=np.uint8)
    mask = rng.random((90, 300)) > 0.7
    fitted, valid = fit_image(image, 64, "squash")
    assert np.array_equal(fitted, resize_image(image, 64)) and valid.all()
    assert np.array_equal(fit_mask(mask, 64, "squash"), resize_mask(mask, 64))


def test_pad_keeps_the_aspect_ratio_and_marks_the_padding():
    image = np.zeros((100, 400, 3), np.uint8)
    image[:, 200:] = 200
    fitted, valid = fit_image(image, 64, "pad")
    assert letterbox_box(100, 400, 64) == (24, 0, 16, 64)
    assert valid.sum() == 16 * 64 and valid[24:40].all() and not valid[:24].any() and not valid[40:].any()
    # the padding mirrors the content at its edge: the same two halves, no flat band
    assert (
        (fitted[:24, :31] == 0).all() and (fitted[:24, 33:] == 200).all() and (fitted[40:, 33:] == 200).all()
    )
    assert np.array_equal(fitted[23], fitted[25]) and np.array_equal(fitted[40], fitted[38])
    assert fitted[30, 10, 0] == 0 and fitted[30, 50, 0] == 200  # content in place, not squashed
    mask = np.zeros((100, 400), bool)
    mask[40:60, 300:340] = True
    boxed = fit_mask(mask, 64, "pad")
    ys, xs = np.nonzero(boxed)
    assert 24 <= ys.min() and ys.max() < 40 and 46 <= xs.min() and xs.max() <= 55
    _, gt, v = canvas(image, mask.astype(np.uint8) * 2, 64, "auto")
    assert np.array_equal(v, valid) and set(np.unique(gt)) == {0, 2}


def test_windows_cover_the_image_and_stitching_inverts_cutting():
    windows = tile_windows(128, 1024, 256)
    assert {w.side for w in windows} == {128} and windows[0].left == 0 and windows[-1].left == 1024 - 128
    assert all(b.left - a.left <= 96 for a, b in zip(windows, windows[1:], strict=False))
    y, x = np.mgrid[0:128, 0:1024]
    smooth = (np.sin(x / 90.0) + np.cos(y / 40.0)).astype(np.float32)
    image = np.repeat(((smooth + 2) * 60).astype(np.uint8)[..., None], 3, axis=2)
    tiles = cut_tiles(image, windows, 256)
    assert tiles.shape == (len(windows), 256, 256, 3)
    maps = cut_tiles(image[..., 0], windows, 256).astype(np.float32)  # uint8 map tiles (nearest)
    back = stitch_mean(maps, windows, 128, 1024)
    assert np.abs(back - image[..., 0]).max() <= 1.0
    labels = np.zeros((len(windows), 256, 256), np.uint8)
    labels[3] = 2
    votes = stitch_votes(labels, windows, 128, 1024, 3)
    only_three = (x >= windows[3].left + 32) & (x < windows[4].left)  # covered by window 3 alone
    assert (votes[only_three] == 2).all() and (votes[:, :200] == 0).all()


def _strip(rng, defect_at: int | None, h: int = 128, w: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """A grey strip with fine noise; optionally a dark 20 x 24 px blob with its left edge at x=defect_at."""
    image = rng.integers(120, 136, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    if defect_at is not None:
        mask[50:70, defect_at : defect_at + 24] = True
        image[mask] = 30
    return image, mask


def test_tile_mode_localises_a_defect_on_a_1024x128_strip():
    rng = np.random.default_rng(0)
    size = 128  # 1-window-high tiles, every 96 px: 11 windows per strip
    normals = [_strip(rng, None)[0]]
    windows = tile_windows(128, 1024, size)
    normal_tiles = np.concatenate([cut_tiles(im, windows, size) for im in normals])
    anomalies, masks = [], []
    for at in (100, 400):
        im, m = _strip(rng, at)
        tiles, tile_masks = cut_tiles(im, windows, size), cut_tiles(m, windows, size)
        hit = tile_masks.reshape(len(windows), -1).any(axis=1)
        anomalies.append(tiles[hit])
        masks.append(tile_masks[hit].astype(np.uint8))
    # the paper head (no reference): the tiny backbone's stride-2 level makes a kNN bank of tiles slow
    cfg = DiscriminatorConfig(backbone="tiny", text_encoder="tiny", fusion_dim=16, iterations=40, batch_size=8,
                              num_threads=1, reference="none", augment_normal_copies=1)  # fmt: skip
    model = build_discriminator(cfg, [["a dark blob"]], image_size=size, seed=0)
    data = TrainingData(normal_tiles, np.concatenate(anomalies), np.concatenate(masks))
    train_discriminator(model, data, cfg, seed=0)
    test, test_mask = _strip(rng, 700)
    pred = predict_canvas(model, [test], 0.5, "tile")
    assert pred.modes == ["tile"]
    top, left, h, w = letterbox_box(128, 1024, size)  # the strip on its canvas: 16 x 128 px
    assert pred.valid[0].sum() == h * w and not pred.anomaly_maps[0][~pred.valid[0]].any()
    y, x = np.unravel_index(int(np.argmax(pred.anomaly_maps[0])), pred.anomaly_maps[0].shape)
    column = (x - left + 0.5) / w * 1024  # back to the strip's own columns
    assert 700 - 16 <= column <= 724 + 16, column
    assert top <= y < top + h
    squashed = predict_canvas(model, [test], 0.5, "squash")
    assert squashed.valid.all()
    for mode in ("tile", "pad"):  # `uniadc predict --resize`: maps at the strip's own size
        full = predict_original(model, test, 0.5, mode)
        assert full.anomaly_maps.shape == (1, 128, 1024) and full.class_maps.shape == (1, 128, 1024)
        if mode == "tile":
            y, x = np.unravel_index(int(np.argmax(full.anomaly_maps[0])), (128, 1024))
            assert test_mask[max(y - 8, 0) : y + 8, max(x - 16, 0) : x + 16].any(), (y, x)


def test_pipeline_on_elongated_images_pads_and_tiles(prefect_harness, tmp_path, one_torch_thread):
    import polars as pl

    from flows.pipeline import pipeline_flow
    from tests.helpers import write_priors

    rng = np.random.default_rng(1)
    root = tmp_path / "strips"
    for folder, n, at in (("train/good", 3, None), ("test/good", 2, None), ("test/blob", 2, 150)):
        for i in range(n):
            im, m = _strip(rng, at, h=64, w=256)
            path = root / "strip" / folder / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(path)
            if at is not None:
                mp = root / "strip" / "ground_truth" / "blob" / f"{i:03d}_mask.png"
                mp.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(m.astype(np.uint8) * 255).save(mp)
    priors = write_priors(tmp_path / "priors.yaml", "strip", ["blob"])
    results = {}
    for resize in ("auto", "tile"):
        cfg = load_run_config(None, data={
            "name": f"strip-{resize}", "dataset": {"kind": "mvtec", "root": str(root), "image_class": "strip",
                                                   "priors": str(priors), "resize": resize},
            "image_size": 64, "store": str(tmp_path / "store"),
            "synthesis": {"samples_per_category": 2, "masks_per_sample": 2, "noise_factors": [0.5]},
            "discriminator": {"backbone": "tiny", "text_encoder": "tiny", "iterations": 4, "batch_size": 4,
                              "fusion_dim": 16},
        })  # fmt: skip
        manifests = pipeline_flow(cfg)
        ev = manifests["evaluate"]
        results[resize] = (manifests, pl.read_parquet(Path(ev.run_dir) / ev.uris["metrics"]))
    auto_m, auto_metrics = results["auto"]
    assert auto_m["evaluate"].counts["resize_pad"] == 4  # 256 x 64 is beyond 1:1.5
    assert auto_m["support"].counts["normal"] == 2
    tile_m, tile_metrics = results["tile"]
    assert tile_m["evaluate"].counts["resize_tile"] == 4
    report = (Path(tile_m["evaluate"].run_dir) / "report.html").read_text()
    assert "dataset.resize tile (tile 4); metrics at long side 64, aspect kept" in report
    assert tile_m["support"].counts["normal"] == 2 * 5  # 64-px windows every 48 px along 256 px
    for metrics in (auto_metrics, tile_metrics):
        assert metrics["n_images"][0] == 4 and 0.0 <= metrics["p_auc"][0] <= 1.0
