"""The nearest-neighbour normal reference: exact distances, leave-one-out, calibration from training data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from schemas.config import DiscriminatorConfig
from uniadc.discriminator import TrainingData, build_discriminator, predict, restore_discriminator
from uniadc.discriminator.training import leave_one_out_distances, train_discriminator
from uniadc.reference import (
    ReferenceScorer,
    build_bank,
    dihedral_views,
    distance_map,
    embed_levels,
    fit_calibration,
    nearest_distances,
)

SIZE = 32


def _brute(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) query, (V, C, h', w') reference -> (B, h, w) min Euclidean distance, by cdist."""
    q = query.permute(0, 2, 3, 1).reshape(-1, query.shape[1]).double()
    r = ref.permute(0, 2, 3, 1).reshape(-1, ref.shape[1]).double()
    return torch.cdist(q, r).min(dim=1).values.reshape(query.shape[0], *query.shape[2:]).float()


def _features(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, 8, 8, generator=g), torch.randn(n, 7, 4, 4, generator=g)]


def test_nearest_distances_match_brute_force():
    bank_feats = embed_levels(_features(6, 0))
    query = embed_levels(_features(3, 1))
    bank = build_bank(bank_feats, torch.arange(6), torch.zeros(6, dtype=torch.long))
    got = nearest_distances(bank, query)
    for lvl in range(2):
        torch.testing.assert_close(got[lvl], _brute(query[lvl], bank_feats[lvl]), atol=2e-3, rtol=1e-3)


def test_dense_distances_match_brute_force_across_bank_chunks(monkeypatch):
    from uniadc.reference import bank as bank_module

    monkeypatch.setattr(bank_module, "BANK_CHUNK", 7)  # several blocks of bank rows, the last one partial
    bank_feats = embed_levels(_features(6, 0))
    query = embed_levels(_features(3, 1))
    bank = build_bank(bank_feats, torch.arange(6), torch.zeros(6, dtype=torch.long))
    got = bank_module.dense_distances(bank, query)
    for lvl in range(2):
        torch.testing.assert_close(got[lvl], _brute(query[lvl], bank_feats[lvl]), atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(got[lvl], nearest_distances(bank, query)[lvl], atol=1e-5, rtol=0)


def test_leave_one_out_never_finds_itself():
    """A query made from support image i, with i excluded, is at the distance of the other images only."""
    feats = embed_levels(_features(3, 2))  # three support images, one view each
    bank = build_bank(feats, torch.arange(3), torch.zeros(3, dtype=torch.long))
    with_self = nearest_distances(bank, [f[:1] for f in feats])
    assert all(float(d.max()) < 1e-3 for d in with_self)  # it is in the bank: distance 0 everywhere
    loo = nearest_distances(bank, [f[:1] for f in feats], exclude_owner=torch.tensor([0]))
    for lvl in range(2):
        assert float(loo[lvl].min()) > 0.05
        torch.testing.assert_close(loo[lvl], _brute(feats[lvl][:1], feats[lvl][1:]), atol=2e-3, rtol=1e-3)


def test_single_support_image_excludes_only_its_identical_view():
    feats = embed_levels(_features(4, 3))  # four views of one image
    bank = build_bank(feats, torch.zeros(4, dtype=torch.long), torch.arange(4))
    q = [f[2:3] for f in feats]
    got = nearest_distances(bank, q, exclude_owner=torch.tensor([0]), exclude_view=torch.tensor([2]))
    others = [torch.cat([f[:2], f[3:]]) for f in feats]
    for lvl in range(2):
        torch.testing.assert_close(got[lvl], _brute(q[lvl], others[lvl]), atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="leaves no reference"):
        one = build_bank(
            [f[:1] for f in feats], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        )
        nearest_distances(one, q, exclude_owner=torch.tensor([0]), exclude_view=torch.tensor([0]))


def test_dihedral_views_are_the_eight_symmetries():
    img = np.random.default_rng(0).integers(0, 255, (1, 5, 5, 3), dtype=np.uint8)
    views, owner, view = dihedral_views(img)
    assert views.shape == (8, 5, 5, 3) and owner.tolist() == [0] * 8 and view.tolist() == list(range(8))
    np.testing.assert_array_equal(views[0], img[0])
    assert len({v.tobytes() for v in views}) == 8


def test_distance_map_is_smoothed_mean_of_levels():
    d = [torch.zeros(1, 8, 8), torch.zeros(1, 4, 4)]
    d[0][0, 4, 4] = 1.0
    m = distance_map(d, (32, 32))
    assert m.shape == (1, 32, 32)
    assert float(m.max()) < 0.5 and int(m[0].argmax()) // 32 in range(15, 20)  # spread, centred on the spot


def test_calibration_balanced_and_normal_max():
    normal = np.zeros((3, 4, 4))
    normal[:, 0, 0] = [0.2, 0.3, 0.4]
    anomaly = np.full((2, 4, 4), 0.1)
    masks = np.zeros((2, 4, 4), bool)
    masks[:, 1, 1] = True
    anomaly[0, 1, 1], anomaly[1, 1, 1] = 0.8, 0.9
    bal = fit_calibration(normal, anomaly, masks, "balanced")
    assert 0.4 < bal.threshold < 0.8 and bal.rule == "balanced"
    assert fit_calibration(normal, rule="normal_max").threshold == pytest.approx(0.4)
    assert fit_calibration(normal, anomaly, masks).apply(np.array([bal.threshold]))[0] == pytest.approx(0.5)
    # no anomaly scores: falls back to normal_max
    assert fit_calibration(normal, anomaly, np.zeros_like(masks)).rule == "normal_max"


def _knn_config(**kw) -> DiscriminatorConfig:
    base = dict(
        backbone="tiny", text_encoder="tiny", fusion_dim=16, iterations=6, batch_size=4, num_threads=1
    )
    return DiscriminatorConfig(**(base | kw))


def _toy(seed: int = 0, k: int = 2) -> TrainingData:
    """k support tiles and two defect samples rendered into each (sources 0..k-1, 0..k-1)."""
    rng = np.random.default_rng(seed)
    normals = rng.integers(100, 140, (k, SIZE, SIZE, 3), dtype=np.uint8)
    anomalies = np.concatenate([normals, normals]).copy()
    masks = np.zeros((2 * k, SIZE, SIZE), np.uint8)
    for i in range(2 * k):
        start = 8 + 8 * i // k
        masks[i, 8:16, start : start + 8] = 1 + i % 2
        anomalies[i][masks[i] > 0] = 20 if i % 2 else 240
    return TrainingData(
        normals,
        anomalies,
        masks,
        reference_images=normals,
        normal_source=np.arange(k),
        anomaly_source=np.tile(np.arange(k), 2),
    )


def test_training_distances_are_leave_one_out():
    """Training images' distance channels never use their own source image's patches."""
    model = build_discriminator(_knn_config(), [["dark"], ["bright"]], SIZE, seed=0)
    data = _toy()
    train_discriminator(model, data, model.config, seed=0)
    from uniadc.discriminator import image_features

    feats = image_features(model, data.normals)
    full = model.reference.distances(feats)
    loo = leave_one_out_distances(model.reference, feats, np.arange(2), np.zeros(2, np.int64), 2)
    assert all(float(d.max()) < 1e-3 for d in full)  # each normal is in the full bank
    assert all(float(d.min()) > 1e-3 for d in loo)  # ... and never found when it is left out
    # only the other image's eight views are searched
    views, owner, _ = dihedral_views(data.normals)
    other = embed_levels(image_features(model, views[owner == 1]))
    mine = embed_levels([f[:1] for f in feats])
    for lvl in range(len(feats)):
        torch.testing.assert_close(loo[lvl][:1], _brute(mine[lvl], other[lvl]), atol=2e-3, rtol=1e-3)


def test_calibration_reads_no_test_image(tmp_path):
    """The fitted threshold is a function of the training data alone: checkpoint round trip, then the test
    images cannot change it, and predicting them does not change the model."""
    from storage.checkpoints import load_discriminator, save_discriminator

    model = build_discriminator(_knn_config(), [["dark"], ["bright"]], SIZE, seed=0)
    train_discriminator(model, _toy(), model.config, seed=0)
    tau = float(model.reference.threshold)
    assert np.isfinite(tau) and float(model.reference.normal_max) > 0
    again = build_discriminator(_knn_config(), [["dark"], ["bright"]], SIZE, seed=0)
    train_discriminator(again, _toy(), again.config, seed=0)
    assert float(again.reference.threshold) == tau  # deterministic given the training data
    path = save_discriminator(tmp_path / "m.safetensors", model, ["dark", "bright"])
    ck = load_discriminator(path)
    restored = restore_discriminator(ck.state, ck.config, ck.category_texts, ck.image_size, ck.seed)
    rng = np.random.default_rng(9)
    for test in (
        rng.integers(0, 255, (3, SIZE, SIZE, 3), dtype=np.uint8),
        np.zeros((2, SIZE, SIZE, 3), np.uint8),
    ):
        pred = predict(restored, test, 0.5)
        assert float(restored.reference.threshold) == tau
        assert pred.anomaly_maps.shape == test.shape[:3] and pred.class_argmax.min() >= 1


def test_knn_model_maps_are_calibrated_distances():
    model = build_discriminator(_knn_config(), [["dark"], ["bright"]], SIZE, seed=0)
    data = _toy()
    train_discriminator(model, data, model.config, seed=0)
    ref: ReferenceScorer = model.reference
    test = data.anomalies[:2]
    pred = predict(model, test, 0.5)
    from uniadc.discriminator import image_features

    d = ref.distance_map(ref.distances(image_features(model, test)), (SIZE, SIZE))
    torch.testing.assert_close(
        torch.from_numpy(pred.anomaly_maps), ref.calibrated_map(d), atol=1e-5, rtol=1e-4
    )
    # a normal support image is in the bank: nothing fires on it
    assert predict(model, data.normals, 0.5).image_scores.max() < 0.5


def test_knn_needs_normals():
    model = build_discriminator(_knn_config(), [["dark"], ["bright"]], SIZE, seed=0)
    d = _toy()
    data = TrainingData(d.normals[:0], d.anomalies, d.anomaly_masks)
    with pytest.raises(ValueError, match="at least one normal"):
        train_discriminator(model, data, model.config, seed=0)


def test_spatial_leave_out_matches_brute_force():
    """With ``radius``, own-image patches near the query's source position (in any view) are never used."""
    from uniadc.reference.views import view_coords

    g = torch.Generator().manual_seed(4)
    feats = embed_levels([torch.randn(8, 6, 4, 4, generator=g)])  # eight views of one image, one level
    bank = build_bank(feats, torch.zeros(8, dtype=torch.long), torch.arange(8))
    q = [feats[0][3:4]]  # made in view 3
    got = nearest_distances(bank, q, torch.tensor([0]), torch.tensor([3]), radius=0.5)[0][0].flatten()
    qv = q[0][0].permute(1, 2, 0).reshape(-1, 6).double()
    qc = torch.from_numpy(view_coords(4, 4, 3).reshape(-1, 2)).double()
    bv = bank.levels[0].double()
    bc = bank.coords[0].double()
    for i in range(16):
        far = (bc - qc[i]).abs().max(dim=1).values >= 0.5
        assert far.any()
        want = (bv[far] - qv[i]).norm(dim=1).min()
        assert abs(float(got[i]) - float(want)) < 2e-3
    # the identical location in the identical view is always excluded: never distance 0
    assert float(got.min()) > 1e-3


def test_detector_choice_probe_never_sees_the_held_out_tile():
    from uniadc.discriminator.detector_choice import choose_detector
    from uniadc.discriminator.training import _train

    model = build_discriminator(_knn_config(), [["dark"], ["bright"]], SIZE, seed=0)
    data = _toy()
    seen = {}

    def spy(m, d, c, s):
        seen["data"], seen["config"] = d, c
        return _train(m, d, c, s, None)

    choice = choose_detector(model, data, model.config, 0, spy)
    probe = seen["data"]
    held = data.reference_images[1]
    assert seen["config"].detector == "reference"  # the probe does not recurse
    assert len(probe.reference_images) == 1 and not np.array_equal(probe.reference_images[0], held)
    assert not any(np.array_equal(n, held) for n in probe.normals)
    assert len(probe.anomalies) == 2  # the two samples rendered into tile 1 are the validation defects
    assert np.isfinite(choice.auc_learned) and np.isfinite(choice.auc_reference)
    assert choice.validation_images == 8 + 2 and choice.probes == 1
    assert choice.use_learned == (choice.auc_learned > choice.auc_reference and choice.held_out_max < 0.5)
    # normal_max: the learned map's threshold is the largest score of the held-out normal views
    tau = 1 / (1 + math.exp(-choice.learned_tau_logit))
    assert abs(tau - float(np.clip(choice.held_out_max, 1e-6, 1 - 1e-6))) < 1e-6
    assert model.reference is None  # the model itself is untouched
    # one support tile: nothing to hold out, the reference decides
    one = TrainingData(data.normals[:1], data.anomalies[::2], data.anomaly_masks[::2])
    assert choose_detector(model, one, model.config, 0, spy).use_learned is False


def test_detector_choice_holds_out_two_tiles_in_turn_from_three():
    """k_normal >= 3: one probe per held-out tile (the last two), evidence pooled, no probe sees its tile."""
    from uniadc.discriminator.detector_choice import PROBES, choose_detector
    from uniadc.discriminator.training import _train

    data = _toy(3, k=3)
    normals = data.normals
    model = build_discriminator(_knn_config(), [["dark"], ["bright"]], SIZE, seed=0)
    probes = []

    def spy(m, d, c, s):
        probes.append(d)
        return _train(m, d, c, s, None)

    choice = choose_detector(model, data, model.config, 0, spy)
    assert PROBES == 2 and len(probes) == 2 and choice.probes == 2
    for held, probe in zip([2, 1], probes, strict=True):
        tile = normals[held]
        assert len(probe.reference_images) == 2
        assert not any(np.array_equal(r, tile) for r in probe.reference_images)
        assert not any(np.array_equal(n, tile) for n in probe.normals)
        assert len(probe.anomalies) == 4  # the two samples rendered into the held tile are left out
        assert set(probe.normal_source.tolist()) == {0, 1} and set(probe.anomaly_source.tolist()) == {0, 1}
    assert choice.validation_images == 2 * (8 + 2)


def test_forced_learned_detector_shifts_the_learned_map():
    model = build_discriminator(_knn_config(detector="learned"), [["dark"], ["bright"]], SIZE, seed=0)
    train_discriminator(model, _toy(), model.config, seed=0)
    assert model.reference.uses_learned and np.isfinite(model.reference.probe).all()
    ref_model = build_discriminator(_knn_config(detector="reference"), [["dark"], ["bright"]], SIZE, seed=0)
    train_discriminator(ref_model, _toy(), ref_model.config, seed=0)
    assert not ref_model.reference.uses_learned and np.isnan(ref_model.reference.probe).all()
