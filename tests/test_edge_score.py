"""The edge-aware image score (uniadc.reference.edge) and the decisions made with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_reference import SIZE, _knn_config, _toy
from uniadc import metrics
from uniadc.discriminator import build_discriminator, restore_discriminator
from uniadc.discriminator.decision import edge_decisions
from uniadc.discriminator.training import train_discriminator
from uniadc.geometry.fitted import predict_canvas, predict_original
from uniadc.reference import dihedral_masks, dihedral_views, edge_distance, edge_weighted_max, fit_edge_gain
from uniadc.reference.calibration import Calibration
from uniadc.reference.edge import BAND_EDGES_AT_256, band_index


def test_edge_distance_is_chessboard_distance_to_outside():
    valid = np.zeros((1, 9, 12), bool)
    valid[0, 1:8, 2:11] = True  # a 7 x 9 picture letterboxed in a 9 x 12 canvas
    d = edge_distance(valid)[0]
    yy, xx = np.mgrid[:9, :12]
    brute = np.where(valid[0], np.minimum.reduce([yy - 0, 8 - yy, xx - 1, 11 - xx]), 0)
    np.testing.assert_array_equal(d, brute)
    assert d[1, 2] == 1 and d[4, 6] == 4 and d[0, 0] == 0
    full = edge_distance(np.ones((1, 5, 5), bool))[0]  # the canvas border counts as outside
    assert full[0, 0] == 1 and full[2, 2] == 3


def test_bands_scale_with_canvas_size():
    d = np.array([0, 1, 2, 3, 4, 16, 63, 64, 500])
    np.testing.assert_array_equal(band_index(d, 256), [-1, 0, 1, 1, 2, 5, 8, 9, 9])
    # at 128 px every band is half as wide: 32 px is the interior's lower edge
    assert band_index(np.array([32]), 128)[0] == len(BAND_EDGES_AT_256) - 1
    assert band_index(np.array([31]), 128)[0] == len(BAND_EDGES_AT_256) - 2


def _ramp_maps(n: int, size: int, rise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Normal distance maps that rise by ``rise`` towards the picture edge, plus noise."""
    valid = np.ones((n, size, size), bool)
    d = edge_distance(valid).astype(np.float64)
    base = 0.5 + rise * np.exp(-d / (size / 16))
    return (base + 0.01 * rng.standard_normal(base.shape)).astype(np.float32), valid


def test_gain_flattens_the_normal_edge_profile_and_is_one_inside():
    rng = np.random.default_rng(0)
    maps, valid = _ramp_maps(6, 64, 0.3, rng)
    gain = fit_edge_gain(maps, valid)
    assert gain[-1] == pytest.approx(1.0)
    assert gain[0] < 0.8 and np.all(np.diff(gain) >= -1e-3)  # weaker towards the edge
    band = band_index(edge_distance(valid), 64)
    weighted = maps * gain[band]
    for b in np.unique(band):  # each band's mean lands on the interior's
        assert weighted[band == b].mean() == pytest.approx(maps[band == len(gain) - 1].mean(), rel=0.02)


def test_bands_without_pixels_take_the_next_inner_gain():
    rng = np.random.default_rng(1)
    valid = np.zeros((2, 256, 256), bool)
    valid[:, 100:120] = True  # a thin letterboxed strip: no pixel is more than 10 px from its edge
    d = edge_distance(valid)
    maps = np.where(valid, 0.5 + 0.3 * np.exp(-d / 4.0) + 0.01 * rng.standard_normal(d.shape), 0.0)
    gain = fit_edge_gain(maps.astype(np.float32), valid)
    top = int(band_index(d, 256).max())
    assert top < len(gain) - 1
    np.testing.assert_allclose(gain[top:], 1.0)  # the innermost band present stands for the interior
    assert gain[0] < 1.0


def test_weighted_max_prefers_an_interior_defect_over_a_normal_rim():
    rng = np.random.default_rng(2)
    normals, valid = _ramp_maps(4, 64, 0.3, rng)
    gain = fit_edge_gain(normals, valid)
    test, tvalid = _ramp_maps(2, 64, 0.3, rng)
    test[1, 28:34, 28:34] += 0.2  # a defect in the middle, lower than the normal rim's peak
    plain = test.reshape(2, -1).max(1)
    scores, at = edge_weighted_max(test, tvalid, gain)
    assert plain[1] - plain[0] < 0.1  # the plain max barely tells them apart
    assert scores[1] - scores[0] > 0.1
    y, x = divmod(int(at[1]), 64)
    assert 28 <= y < 34 and 28 <= x < 34
    # padding never gives the score
    pad = tvalid.copy()
    pad[:, :, :8] = False
    test[0, :, :8] = 5.0
    assert edge_weighted_max(test, pad, gain)[0][0] < 2.0


def test_dihedral_masks_follow_the_image_views():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    masks = images[..., 0] > 128
    views, _, _ = dihedral_views(images)
    np.testing.assert_array_equal(dihedral_masks(masks), views[..., 0] > 128)


def _edge_model():
    model = build_discriminator(_knn_config(detector="reference"), [["dark"], ["bright"]], SIZE, seed=0)
    train_discriminator(model, _toy(), model.config, seed=0)
    return model


def test_training_fits_the_edge_score_from_support_views_only():
    model = _edge_model()
    ref = model.reference
    assert model.edge_image_score and ref.has_edge_score
    assert np.isfinite(float(ref.image_threshold)) and float(ref.image_scale) > 0
    again = _edge_model()  # deterministic given the training data
    np.testing.assert_array_equal(again.reference.edge_gain.numpy(), ref.edge_gain.numpy())
    # a normal support tile is in the bank: its edge-aware score stays below the threshold
    pred = predict_canvas(model, list(_toy().normals), 0.5, "squash")
    assert (pred.image_scores < 0.5).all() and (pred.image_classes == 0).all()
    plain = build_discriminator(_knn_config(detector="reference", image_score="max"), [["d"], ["b"]], SIZE, 0)
    train_discriminator(plain, _toy(), plain.config, seed=0)
    assert not plain.edge_image_score and not np.isfinite(float(plain.reference.image_threshold))


def test_canvas_and_original_predictions_take_the_same_decision():
    model = _edge_model()
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (SIZE, SIZE * 2, 3), dtype=np.uint8), _toy().anomalies[1]]
    canvas = predict_canvas(model, images, 0.5, "pad")
    for i, im in enumerate(images):
        one = predict_original(model, im, 0.5, "pad")
        assert one.image_scores[0] == pytest.approx(canvas.image_scores[i], abs=1e-6)
        assert one.image_classes[0] == canvas.image_classes[i]
        if canvas.image_scores[i] < 0.5:
            assert not one.class_maps.any() and not canvas.class_maps[i].any()


def test_edge_decisions_clear_quiet_images_and_name_silent_ones():
    class _Ref:
        threshold, scale = 0.0, 1.0
        has_edge_score = True

        def distances_from_calibrated(self, maps):
            return maps

        def edge_image_scores(self, dmaps, valid):
            flat = dmaps.reshape(len(dmaps), -1)
            return flat.max(1), flat.argmax(1)

    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 1, 1] = 0.2  # quiet: below 0.5, its firing pixels are cleared
    maps[1, 2, 3] = 0.9  # fires with no firing pixel: named by the argmax there
    maps[2, 0, 0] = 0.9
    class_maps = np.zeros((3, 4, 4), np.uint8)
    class_maps[0, 1, 1] = 2
    class_maps[2, 3, 3] = 1
    argmax = np.full((3, 4, 4), 1, np.uint8)
    argmax[1, 2, 3] = 2
    scores, classes, cleared = edge_decisions(
        _Ref(), maps, np.ones((3, 4, 4), bool), class_maps, argmax, 0.5, 2
    )
    np.testing.assert_allclose(scores, [0.2, 0.9, 0.9])
    np.testing.assert_array_equal(classes, [0, 2, 1])
    assert not cleared[0].any() and cleared[2, 3, 3] == 1


def test_old_checkpoints_without_edge_buffers_load_and_score_by_max(tmp_path):
    from storage.checkpoints import load_discriminator, save_discriminator

    model = _edge_model()
    path = save_discriminator(tmp_path / "m.safetensors", model, ["dark", "bright"])
    ck = load_discriminator(path)
    state = {
        k: v for k, v in ck.state.items() if not k.endswith(("edge_gain", "image_threshold", "image_scale"))
    }
    old = restore_discriminator(state, ck.config.model_copy(update={"image_score": "max"}), ck.category_texts,
                                ck.image_size, ck.seed)  # fmt: skip
    assert not old.edge_image_score
    images = list(_toy().anomalies)
    pred = predict_canvas(old, images, 0.5, "squash")
    np.testing.assert_allclose(pred.image_scores, pred.anomaly_maps.reshape(len(images), -1).max(1))
    new = restore_discriminator(ck.state, ck.config, ck.category_texts, ck.image_size, ck.seed)
    assert new.edge_image_score
    assert float(new.reference.image_threshold) == float(model.reference.image_threshold)


def test_metrics_take_given_image_scores():
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[2:, 3, 3] = 1
    maps = np.random.default_rng(5).random((4, 8, 8)).astype(np.float32)
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    out = metrics.evaluate(maps, gt, gt, 1, image_scores=scores)
    assert out["i_auc"] == 1.0
    assert out["p_auc"] == metrics.evaluate(maps, gt, gt, 1)["p_auc"]
    with pytest.raises(ValueError, match="image_scores"):
        metrics.evaluate(maps, gt, gt, 1, image_scores=scores[:3])


def test_calibration_object_drives_the_image_threshold():
    model = _edge_model()
    ref = model.reference
    ref.set_edge_score(
        np.ones(len(BAND_EDGES_AT_256), np.float32), Calibration(0.3, 0.05, "normal_max", 1, 0)
    )
    dmaps = np.full((1, SIZE, SIZE), 0.3, np.float32)
    scores, _ = ref.edge_image_scores(dmaps, np.ones_like(dmaps, bool))
    assert scores[0] == pytest.approx(0.5)
    d = ref.distances_from_calibrated(ref.calibrated_map(torch.from_numpy(dmaps)).numpy())
    np.testing.assert_allclose(d, dmaps, atol=1e-4)
