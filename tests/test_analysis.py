"""Per-category metrics, confusion matrices and curves (uniadc.analysis) and the report built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uniadc.analysis import category_metrics, confusion_matrix, pr_curve, pro_curve, roc_curve
from uniadc.metrics import pro, roc_auc
from uniadc.report import ImageView, outcome, render_report, worst_first


def _scene():
    """Two normal images, two of category 1 (found), one of category 2 (called 1), 8x8."""
    gt = np.zeros((5, 8, 8), np.uint8)
    gt[2, 1:3, 1:3] = 1
    gt[3, 4:7, 4:7] = 1
    gt[4, 0:2, 5:8] = 2
    maps = np.full((5, 8, 8), 0.1)
    maps[2, 1:3, 1:3] = 0.9
    maps[3, 4:7, 4:7] = 0.8
    maps[4, 0:2, 5:8] = 0.7
    maps[1, 7, 7] = 0.75  # a false-alarm pixel in a normal image
    pred = np.zeros_like(gt)
    pred[2][gt[2] == 1] = 1
    pred[3][gt[3] == 1] = 1
    pred[4][gt[4] == 2] = 1  # right place, wrong class
    labels = np.array([0, 0, 1, 1, 2])
    return maps, gt, pred, labels


def test_category_metrics_rows():
    maps, gt, pred, labels = _scene()
    rows = {r["category"]: r for r in category_metrics(maps, gt, pred, labels, ["normal", "a", "b"])}
    assert list(rows) == ["normal", "a", "b", "mean"]
    assert rows["normal"]["acc"] == 1.0 and math.isnan(rows["normal"]["i_auc"])
    assert rows["a"]["i_auc"] == 1.0 and rows["a"]["acc"] == 1.0 and rows["a"]["n_images"] == 2
    assert rows["b"]["acc"] == 0.0 and rows["b"]["iou"] == 0.0
    # class a: 13 true pixels, 13 + 6 predicted (b's pixels called a): IoU 13 / 19
    assert rows["a"]["iou"] == pytest.approx(13 / 19)
    # b against the normals: its 0.7 pixels rank below the 0.75 false alarm -> image AUC 0.5
    assert rows["b"]["i_auc"] == 0.5
    assert rows["mean"]["acc"] == 0.5 and rows["mean"]["n_images"] == 3


def test_confusion_matrix_counts_and_checks():
    m = confusion_matrix(np.array([0, 0, 1, 2, -1]), np.array([0, 1, 1, 3, 2]), 3, 4)
    assert m.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]  # label -1 left out; column 3 = other
    with pytest.raises(ValueError, match="predicted classes"):
        confusion_matrix(np.array([0]), np.array([4]), 3, 4)


def test_curves_agree_with_the_exact_metrics():
    rng = np.random.default_rng(1)
    scores, labels = rng.random(200), rng.random(200) < 0.3
    fpr, tpr, _ = roc_curve(scores, labels)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, labels))
    recall, precision, _ = pr_curve(scores, labels)
    assert recall[-1] == 1.0 and precision[-1] == pytest.approx(labels.mean())
    maps = rng.random((6, 32, 32))
    masks = np.zeros((6, 32, 32), bool)
    masks[:3, 8:16, 8:16] = True
    maps[masks] += 0.3
    f, p = pro_curve(maps, masks, points=601)
    assert np.trapezoid(p, f) / 0.3 == pytest.approx(pro(maps, masks), abs=2e-3)
    with pytest.raises(ValueError, match="both classes"):
        roc_curve(scores, np.ones(200, bool))


def _item(i, true, pred, score):
    z = np.zeros((8, 8), np.uint8)
    return ImageView(f"img{i}", true, f"c{true}", pred, f"c{pred}", score, np.zeros((8, 8, 3), np.uint8), z,
                    np.zeros((8, 8), np.float32), z)  # fmt: skip


def test_worst_first_order():
    items = [_item(0, 0, 0, 0.1), _item(1, 1, 1, 0.9), _item(2, 0, 2, 0.6), _item(3, 2, 0, 0.3),
             _item(4, 1, 0, 0.2), _item(5, 2, 1, 0.8), _item(6, 0, 1, 0.9)]  # fmt: skip
    order = [outcome(i)[1] + f":{i.image_id}" for i in worst_first(items)]
    assert order == ["missed defect:img4", "missed defect:img3", "wrong class:img5", "false alarm:img6",
                     "false alarm:img2", "defect found:img1", "normal, correct:img0"]  # fmt: skip


def test_report_has_every_section_and_every_test_image():
    maps, gt, pred, labels = _scene()
    names = ["normal", "a", "b"]
    rows = category_metrics(maps, gt, pred, labels, names)
    conf = confusion_matrix(labels, np.array([0, 1, 1, 1, 1]), 3, 3)
    items = [_item(i, int(labels[i]), int(p), float(maps[i].max())) for i, p in enumerate([0, 1, 1, 1, 1])]
    page = render_report("t", [("k", "v")], ["c"], [["x"]], rows, conf, names, [], items, maps, gt > 0)
    for needle in ("Per category", "Confusion matrix", "image ROC", "image precision-recall",
                   "per-region overlap", "Every test image, worst first", "1 false alarm"):  # fmt: skip
        assert needle in page, needle
    assert page.count("class='test ") == 5 and page.count("<img") == 5 * 4
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_gt_pixel_classes_take_the_majority_on_ground_truth_pixels_only():
    from uniadc.analysis.breakdown import gt_pixel_classes

    gt = np.zeros((3, 4, 4), np.uint8)
    gt[0, :2, :2] = 2  # image 0: class 2 on four pixels
    gt[1, 0, :3] = 1  # image 1: class 1 on three pixels
    argmax = np.full((3, 4, 4), 3, np.uint8)  # class 3 everywhere off the defects
    argmax[0, :2, :2] = [[2, 2], [2, 1]]
    argmax[1, 0, :3] = [1, 2, 2]  # the majority names class 2 where the truth is 1
    np.testing.assert_array_equal(gt_pixel_classes(argmax, gt, 3), [2, 2, 0])  # image 2 has no defect
    with pytest.raises(ValueError, match="must be equal"):
        gt_pixel_classes(argmax[:, :2], gt, 3)
