"""Tests of uniadc.metrics and storage.reports: analytic cases and independent brute-force references."""

from __future__ import annotations

import os
import tracemalloc

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label as sk_label
from sklearn.metrics import jaccard_score, roc_auc_score

from schemas.tables import METRICS
from storage import parquet
from storage.reports import read_metrics_table, write_metrics_table
from uniadc import metrics as M

# ------------------------------------------------------------ independent references (no code shared with M)


def reference_pro(scores: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Loop over every distinct score: FPR and mean region overlap recounted from scratch, then trapezoid."""
    scores = scores.astype(np.float64)
    regions = []
    for i, mask in enumerate(masks):
        labels = sk_label(mask, connectivity=2)
        regions += [(i, labels == r) for r in range(1, labels.max() + 1)]
    normal = ~masks
    curve = [(0.0, 0.0)]
    for t in sorted(set(scores.ravel().tolist()), reverse=True):
        above = scores >= t
        overlap = np.mean([(above[i] & region).sum() / region.sum() for i, region in regions])
        curve.append(((above & normal).sum() / normal.sum(), overlap))
    curve.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            x1, y1 = fpr_limit, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def reference_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels].astype(np.float64), scores[~labels].astype(np.float64)
    return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


@st.composite
def maps_and_masks(draw, max_side: int = 7):
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < draw(st.floats(0.05, 0.6))
    levels = draw(st.sampled_from([3, 6, 0]))  # few levels -> many ties; 0 -> continuous
    raw = rng.integers(0, levels, (n, h, w)) / levels if levels else rng.random((n, h, w))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return raw.astype(dtype), masks


# ---------------------------------------------------------------- PRO


def test_pro_perfect_map_is_one():
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:12, 1:15] = True  # third image all normal
    scores = masks.astype(np.float32) * 0.9 + 0.05
    assert M.pro(scores, masks) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pro_random_ranking_is_diagonal(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((12, 64, 64), bool)
    for i in range(8):
        y, x = rng.integers(0, 48, 2)
        masks[i, y : y + rng.integers(6, 16), x : x + rng.integers(6, 16)] = True
    scores = rng.random(masks.shape).astype(np.float32)
    assert M.pro(scores, masks) == pytest.approx(0.15, abs=0.01)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.1, 1.0])
def test_pro_constant_map_is_half_the_limit(fpr_limit):
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 1:3, 1:3] = True
    assert M.pro(np.full(masks.shape, 0.5), masks, fpr_limit) == pytest.approx(fpr_limit / 2, abs=1e-15)


def test_pro_two_regions_by_hand():
    # Region A = 2 px (0.9, 0.3), region B = 1 px (0.7), 12 normal px; a normal 0.3 ties with A's 2nd pixel.
    masks = np.zeros((1, 3, 5), bool)
    masks[0, 0, :2] = masks[0, 1, 4] = True
    scores = np.zeros((1, 3, 5))
    scores[0, 0, :2], scores[0, 1, 4] = (0.9, 0.3), 0.7
    scores[0][~masks[0]] = [0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01, 0.0]
    # Curve: (0,.25) ->(1/12,.25) ->(1/12,.75) ->(3/12,.75) ->(4/12,1) with the tie; cut at .3 on the last
    # segment where PRO = .75 + 3 * .05 = .9. Area = (.25 + .75 + .75) / 12 + .05 * (.75 + .9) / 2 = 449/2400.
    assert M.pro(scores, masks) == pytest.approx(449 / 720, abs=1e-15)
    # A diagonal neighbour joins one 8-connected region: 2 px + 1 px -> one region of 3 px.
    masks[0, 1, 2], scores[0, 1, 2] = True, 0.7
    assert M.pro(scores, masks) == pytest.approx(reference_pro(scores, masks), abs=1e-12)


@settings(max_examples=120, deadline=None)
@given(data=maps_and_masks(), fpr_limit=st.sampled_from([0.3, 0.05, 0.5, 1.0]) | st.floats(0.01, 1.0))
def test_pro_matches_brute_force(data, fpr_limit):
    scores, masks = data
    if not masks.any() or masks.all():
        with pytest.raises(ValueError, match="no (anomalous|normal) pixel"):
            M.pro(scores, masks, fpr_limit)
        return
    assert M.pro(scores, masks, fpr_limit) == pytest.approx(reference_pro(scores, masks, fpr_limit), abs=1e-9)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_pro_large_input_with_ties_at_the_cut(fpr_limit):
    # 4 score levels over 2**19 px: the normal score at the limit is tied with ~25% of the normal pixels, on
    # both sides of the partition that selects the top normal pixels.
    rng = np.random.default_rng(7)
    masks = np.zeros((8, 256, 256), bool)
    masks[:4, 100:130, 40:90] = True
    masks[2, 5:9, 200:250] = True
    scores = (rng.integers(0, 4, masks.shape) / 4 + masks * rng.integers(0, 2, masks.shape) / 4).astype(
        np.float32
    )
    expected = reference_pro(scores, masks, fpr_limit)
    assert M.pro(scores, masks, fpr_limit) == pytest.approx(expected, abs=1e-9)
    assert M.pro(scores.astype(np.float64), masks, fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_pro_memory_is_a_few_times_the_maps():
    rng = np.random.default_rng(0)
    masks = np.zeros((20, 256, 256), bool)
    masks[::2, 50:90, 60:120] = True
    scores = (rng.random(masks.shape) * 0.5 + masks * 0.3).astype(np.float32)
    tracemalloc.start()
    M.pro(scores, masks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2 * scores.nbytes


# ---------------------------------------------------------------- AUCs and image scores


@settings(max_examples=80, deadline=None)
@given(data=maps_and_masks())
def test_roc_auc_matches_pairwise_and_sklearn(data):
    scores, masks = data
    if not masks.any() or masks.all():
        with pytest.raises(ValueError, match="both classes"):
            M.pixel_auc(scores, masks)
        return
    value = M.pixel_auc(scores, masks)
    assert value == pytest.approx(reference_auc(scores, masks), abs=1e-12)
    assert value == pytest.approx(roc_auc_score(masks.ravel(), scores.ravel()), abs=1e-12)


def test_image_scores_and_auc():
    maps = np.zeros((3, 4, 5), np.float32)
    maps[0, 0, 0] = 1.0  # one hot pixel: max 1, top-2 mean 0.5
    maps[1, :2, :] = 0.6  # 10 px at 0.6: max 0.6, top-2 mean 0.6
    maps[2] = 0.1
    np.testing.assert_allclose(M.image_scores(maps), [1.0, 0.6, 0.1], rtol=1e-7)
    np.testing.assert_allclose(M.image_scores(maps, "top_k_mean", 2), [0.5, 0.6, 0.1], rtol=1e-7)
    labels = np.array([False, True, False])
    assert M.image_auc(maps, labels) == 0.5  # max ranks image 0 above image 1
    assert M.image_auc(maps, labels, "top_k_mean", 2) == 1.0
    with pytest.raises(ValueError, match="top_k"):
        M.image_scores(maps, "top_k_mean", 21)
    with pytest.raises(ValueError, match="reduction"):
        M.image_scores(maps, "median")
    with pytest.raises(ValueError, match="both classes"):  # all-normal test set
        M.image_auc(maps, np.zeros(3, bool))


@pytest.mark.parametrize(
    ("scores", "masks", "match"),
    [
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool), "differs from scores shape"),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4), np.uint8), "bool"),
        (np.zeros((4, 4)), np.zeros((4, 4), bool), r"\(N, H, W\)"),
        (np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), bool), "floating"),
        (np.full((2, 4, 4), np.nan), np.zeros((2, 4, 4), bool), "NaN"),
    ],
)
def test_invalid_maps_raise(scores, masks, match):
    with pytest.raises(ValueError, match=match):
        M.pro(scores, masks)
    with pytest.raises(ValueError, match=match):
        M.pixel_auc(scores, masks)


def test_pro_degenerate_masks_and_limit():
    scores = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ValueError, match="no anomalous pixel"):  # all-normal test set
        M.pro(scores, np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match="no normal pixel"):
        M.pro(scores, np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match="fpr_limit"):
        M.pro(scores, np.eye(4, dtype=bool)[None].repeat(2, 0), 0.0)


# ---------------------------------------------------------------- classification metrics


def test_pixel_and_image_classes():
    class_maps = np.zeros((2, 3, 2, 2), np.float32)
    class_maps[0, 1] = [[0.96, 0.96], [0.1, 0.96]]  # image 0: category 2 where the mean >= 0.3
    class_maps[1, 0] = [[0.2, 0.2], [0.2, 0.2]]  # image 1: mean < 0.3 -> all normal
    pred = M.pixel_classes(class_maps, threshold=0.3)
    np.testing.assert_array_equal(pred, [[[2, 2], [0, 2]], [[0, 0], [0, 0]]])
    np.testing.assert_array_equal(M.pixel_classes(class_maps, 0.3, class_maps.max(axis=1))[1], 0)
    np.testing.assert_array_equal(M.image_classes(pred, 3), [2, 0])
    tie = np.array([[[1, 1, 3, 3, 0]]])
    assert M.image_classes(tie, 3)[0] == 1  # equal areas: the lower category
    with pytest.raises(ValueError, match=r"values must be in \[0, 3\]"):
        M.image_classes(tie + 1, 3)


def test_single_labels_and_accuracy():
    gt = np.zeros((4, 3, 3), np.int16)
    gt[1, 0, 0] = 2
    gt[2, 0, 0], gt[2, 2, 2] = 1, 3  # several categories -> -1
    gt[3, 1:, 1:] = 3
    labels = M.single_labels(gt, 3)
    np.testing.assert_array_equal(labels, [0, 2, -1, 3])
    assert M.accuracy(np.array([0, 2, 1, 1]), labels) == pytest.approx(2 / 3)  # image 2 excluded
    with pytest.raises(ValueError, match="no single-category"):
        M.accuracy(np.array([1]), np.array([-1]))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), include_normal=st.booleans())
def test_mean_iou_matches_sklearn(seed, k, include_normal):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k + 1, (3, 5, 5)) * (rng.random((3, 5, 5)) < 0.5)
    pred = rng.integers(0, k + 1, (3, 5, 5)) * (rng.random((3, 5, 5)) < 0.5)
    classes = range(0 if include_normal else 1, k + 1)
    present = [c for c in classes if (gt == c).any() or (pred == c).any()]
    if not present:
        with pytest.raises(ValueError, match="mIoU is undefined"):
            M.mean_iou(pred, gt, k, include_normal)
        return
    expected = jaccard_score(gt.ravel(), pred.ravel(), labels=present, average="macro")
    assert M.mean_iou(pred, gt, k, include_normal) == pytest.approx(expected, abs=1e-12)
    official = jaccard_score(gt.ravel(), pred.ravel(), labels=list(classes), average="macro", zero_division=0)
    assert M.mean_iou(pred, gt, k, include_normal, absent="zero") == pytest.approx(official, abs=1e-12)


def test_mean_iou_by_hand():
    gt = np.array([[[0, 0, 1, 1]]])
    pred = np.array([[[0, 1, 1, 2]]])
    # IoU normal 1/2, cat 1 1/3, cat 2 0/1 (predicted, absent from gt), cat 3 absent everywhere
    assert M.mean_iou(pred, gt, 3) == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert M.mean_iou(pred, gt, 3, include_normal=False) == pytest.approx((1 / 3 + 0) / 2)
    assert M.mean_iou(pred, gt, 3, absent="zero") == pytest.approx((1 / 2 + 1 / 3) / 4)


# ---------------------------------------------------------------- report


def _image_class(rng: np.random.Generator, k: int) -> dict:
    gt = np.zeros((6, 32, 32), np.int16)
    for i in range(1, 5):
        gt[i, 4 * i : 4 * i + 8, 5:15] = 1 + (i % k)
    gt[5, 2:6, 2:6], gt[5, 20:26, 20:26] = 1, k  # several categories when k > 1
    class_maps = rng.random((6, k, 32, 32)).astype(np.float32) * 0.4
    for c in range(k):
        class_maps[:, c][gt == c + 1] += 0.55
    return {
        "anomaly_maps": class_maps.mean(axis=1),
        "gt_class_maps": gt,
        "predicted": M.pixel_classes(class_maps),
    }


def test_evaluate_table_and_parquet_roundtrip(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = {}
    for name, k in [("bottle", 3), ("pill", 2)]:
        case = _image_class(rng, k)
        rows[name] = M.evaluate(**case, num_classes=k)
        assert rows[name]["pro"] == M.pro(case["anomaly_maps"], case["gt_class_maps"] > 0)
        assert rows[name]["n_images"] == 6
    table = M.metrics_table(rows)
    assert table.columns == METRICS.names
    assert table["image_class"].to_list() == ["bottle", "pill", "mean"]
    mean_i_auc = (rows["bottle"]["i_auc"] + rows["pill"]["i_auc"]) / 2
    assert table.row(2, named=True)["i_auc"] == pytest.approx(mean_i_auc)
    assert table.row(2, named=True)["n_images"] == 12
    text = M.format_metrics_table(table)
    assert f"{100 * rows['pill']['miou']:.2f}" in text.splitlines()[3]
    path = write_metrics_table(table, tmp_path / "report" / "metrics.parquet")
    assert read_metrics_table(path).equals(table)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.parquet"]  # no temporary left behind
    with pytest.raises(ValueError, match="columns"):
        write_metrics_table(table.drop("pro"), path)
    with pytest.raises(ValueError, match="must have keys"):
        M.metrics_table({"bottle": {"i_auc": 1.0}})
    monkeypatch.setattr(parquet.pq, "write_table", _fail_halfway)  # the writer storage.reports goes through
    with pytest.raises(OSError, match="disk full"):
        write_metrics_table(table.with_columns(pl.col("pro") * 0), path)
    assert read_metrics_table(path).equals(table)  # the failed writes left the file intact
    assert [p.name for p in path.parent.iterdir()] == ["metrics.parquet"]


def _fail_halfway(table, where, **_kwargs):
    with open(where, "wb") as f:
        f.write(b"PAR1 partial")
    raise OSError("disk full")


def test_evaluate_excludes_multi_category_images_from_classification():
    rng = np.random.default_rng(1)
    case = _image_class(rng, 2)
    labels = M.single_labels(case["gt_class_maps"], 2)
    assert labels[5] == -1
    result = M.evaluate(**case, num_classes=2)
    keep = labels >= 0
    assert result["acc"] == M.accuracy(M.image_classes(case["predicted"][keep], 2), labels[keep])
    assert result["miou"] == M.mean_iou(case["predicted"][keep], case["gt_class_maps"][keep], 2)
    custom = M.evaluate(**case, num_classes=2, labels=np.array([0, -1, -1, -1, -1, -1]))
    assert custom["acc"] == float(M.image_classes(case["predicted"][:1], 2)[0] == 0)
    assert pl.DataFrame([custom]).height == 1


def test_valid_pixels_are_the_only_ones_that_count():
    """Metrics with a ``valid`` mask equal the metrics of the cropped maps, whatever the padding holds."""
    from uniadc.metrics import evaluate

    rng = np.random.default_rng(3)
    n, h, w = 8, 24, 40
    maps = rng.random((n, h, w)).astype(np.float32)
    gt = np.zeros((n, h, w), np.uint8)
    for i in range(1, n, 2):
        y, x = rng.integers(6, 14), rng.integers(12, 24)
        gt[i, y : y + 4, x : x + 5] = 1 + i % 2
        maps[i, y : y + 4, x : x + 5] += 0.4
    pred = np.where(maps > 0.9, 1 + (np.arange(w) % 2), 0).astype(np.uint8)
    valid = np.zeros((n, h, w), bool)
    valid[:, 4:20, 8:32] = True
    crop = (slice(None), slice(4, 20), slice(8, 32))
    expected = evaluate(maps[crop], gt[crop], pred[crop], 2)
    padded = maps.copy()
    padded[~valid] = 5.0  # the padding scores highest of all: it must not matter
    assert evaluate(padded, gt, np.where(valid, pred, 0).astype(np.uint8), 2, valid=valid) == expected
    assert evaluate(maps, gt, pred, 2) != expected
