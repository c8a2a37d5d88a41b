"""A self-contained HTML page that explains a run: how well per category, which defects it confuses, what
was synthesised, and every test image worst first.

Pure: takes arrays and tables, returns the HTML text (images inlined as base64 PNG/JPEG, figures as SVG), so
the file opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from uniadc.analysis import pr_curve, pro_curve, roc_curve
from uniadc.analysis.svg import count_heatmap, line_plot
from uniadc.visualize import class_colour, colour_classes, draw_outline, heatmap, overlay

THUMB = 112
OPEN_TEST_ITEMS = 24  # the worst ones shown at once; the rest in a collapsed section


@dataclass(frozen=True)
class SyntheticView:
    """Selected synthetic samples of one category: (n, H, W, 3) uint8 images and (n, H, W) bool masks."""

    name: str
    description: str
    images: np.ndarray
    masks: np.ndarray


@dataclass(frozen=True)
class ImageView:
    """One test image as the report shows it (arrays already at thumbnail size).

    ``true_index``: 0 normal, k category, -1 several; ``pred_index``: the predicted image class.
    """

    image_id: str
    true_index: int
    true_name: str
    pred_index: int
    pred_name: str
    score: float
    image: np.ndarray
    gt: np.ndarray
    anomaly: np.ndarray
    classes: np.ndarray


def thumbnail(array: np.ndarray, size: int = THUMB, nearest: bool = False) -> np.ndarray:
    """Resize an (H, W[, 3]) array so its width is ``size`` (nearest for label maps)."""
    if array.dtype != np.uint8:
        img = Image.fromarray(np.asarray(array, np.float32), mode="F")
    else:
        img = Image.fromarray(array)
    if img.width != size:
        h = max(1, round(size * img.height / img.width))
        img = img.resize((size, h), Image.NEAREST if nearest else Image.BILINEAR)
    return np.asarray(img)


def outcome(item: ImageView) -> tuple[int, str]:
    """Rank (0 = worst) and name of a test image's outcome."""
    if item.true_index != 0 and item.pred_index == 0:
        return 0, "missed defect"
    if item.true_index > 0 and item.pred_index != item.true_index:
        return 1, "wrong class"
    if item.true_index == 0 and item.pred_index != 0:
        return 2, "false alarm"
    return (3, "defect found") if item.true_index != 0 else (4, "normal, correct")


def worst_first(items: Sequence[ImageView]) -> list[ImageView]:
    """Missed defects (lowest score first), wrong classes, false alarms (highest score first), then correct."""

    def key(item: ImageView) -> tuple[int, float]:
        rank, _ = outcome(item)
        return rank, item.score if rank in (0, 4) else -item.score

    return sorted(items, key=key)


def data_uri(array: np.ndarray, size: int, jpeg: bool = False) -> str:
    img = Image.fromarray(array)
    if img.width != size:
        img = img.resize((size, max(1, round(size * img.height / img.width))), Image.NEAREST)
    buf = io.BytesIO()
    if jpeg:
        img.convert("RGB").save(buf, format="JPEG", quality=85)
        kind = "jpeg"
    else:
        img.save(buf, format="PNG", optimize=True)
        kind = "png"
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode()


def _img(array: np.ndarray, caption: str = "", size: int = THUMB, jpeg: bool = False) -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    alt = html.escape(caption or "image")
    return f'<figure><img src="{data_uri(array, size, jpeg)}" width="{size}" alt="{alt}">{cap}</figure>'


def _legend(names: Sequence[str]) -> str:
    items = []
    for i, name in enumerate(names):
        r, g, b = class_colour(i)
        items.append(f'<span class="sw" style="background:rgb({r},{g},{b})"></span>{html.escape(name)}')
    return '<p class="legend">' + " &nbsp; ".join(items) + "</p>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def category_section(rows: Sequence[dict]) -> str:
    columns = ["category", "I-AUC", "P-AUC", "PRO", "Acc (recall)", "IoU", "images"]
    body = [
        [r["category"], *(_pct(r[c]) for c in ("i_auc", "p_auc", "pro", "acc", "iou")), r["n_images"]]
        for r in rows
    ]
    return (
        "<h2>Per category (percent)</h2>"
        + _table(columns, body, "per-category")
        + "<p>Detection metrics of a category use the normal test images and that category's images only. "
        "Acc (recall): share of the category's images whose image class is that category (for <em>normal</em>: "
        "share of normal images called normal). IoU: pixel IoU of that class over all test images. "
        "<em>mean</em>: unweighted over the defect categories.</p>"
    )


def confusion_section(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str]) -> str:
    body = [[name, *(int(v) for v in matrix[i]), int(matrix[i].sum())] for i, name in enumerate(rows)]
    body.append(["total", *(int(v) for v in matrix.sum(axis=0)), int(matrix.sum())])
    return (
        "<h2>Confusion matrix (images)</h2>"
        + _table(["true \\ predicted", *columns, "total"], body, "confusion")
        + count_heatmap(matrix, rows, columns, "image classes: true (rows) vs predicted (columns)")
    )


def curves_section(
    scores: np.ndarray, is_defect: np.ndarray, anomaly_maps: np.ndarray, masks: np.ndarray
) -> str:
    """Image-level ROC and PR curves (exact) and the PRO curve up to FPR 0.3 (sampled)."""
    figures = []
    if is_defect.any() and not is_defect.all():
        fpr, tpr, _ = roc_curve(scores, is_defect)
        auc = float(np.trapezoid(tpr, fpr))
        figures.append(
            line_plot(
                [(f"AUC {100 * auc:.1f}", fpr, tpr)],
                "image ROC",
                "false positive rate",
                "true positive rate",
                diagonal=True,
            )  # fmt: skip
        )
        recall, precision, _ = pr_curve(scores, is_defect)
        base = float(is_defect.mean())
        figures.append(
            line_plot(
                [(f"defect share {100 * base:.0f} %", np.r_[0.0, recall], np.r_[1.0, precision])],
                "image precision-recall",
                "recall",
                "precision",
            )  # fmt: skip
        )
    if masks.any() and not masks.all():
        fpr, overlap = pro_curve(anomaly_maps, masks)
        figures.append(
            line_plot(
                [("PRO", fpr, overlap)],
                "per-region overlap",
                "false positive rate (pixels)",
                "PRO",
                xlim=(0.0, 0.3),
            )  # fmt: skip
        )
    if not figures:
        return ""
    return "<h2>Curves</h2><div class='figs'>" + "".join(figures) + "</div>"


def synthetic_section(views: Sequence[SyntheticView]) -> str:
    parts = ["<h2>Selected synthetic training samples</h2><p>Red line: around the training mask.</p>"]
    for v in views:
        desc = f" — <em>{html.escape(v.description)}</em>" if v.description else ""
        parts.append(
            f"<details class='synthetic'><summary>{html.escape(v.name)}: {len(v.images)} samples{desc}</summary>"
            "<div class='grid'>"
        )
        parts += [
            _img(draw_outline(img, m, pad=max(2, img.shape[0] // 64)), jpeg=True)
            for img, m in zip(v.images, v.masks, strict=True)
        ]
        parts.append("</div></details>")
    return "".join(parts)


def _test_row(item: ImageView) -> str:
    _, what = outcome(item)
    head = (
        f"<p class='item'><b>{html.escape(what)}</b>: {html.escape(item.image_id)} — true "
        f"<b>{html.escape(item.true_name)}</b>, predicted <b>{html.escape(item.pred_name)}</b>, score "
        f"{item.score:.3f}</p>"
    )
    return (
        f"<div class='test {what.replace(' ', '-').replace(',', '')}'>{head}<div class='strip'>"
        + _img(item.image, "image", jpeg=True)
        + _img(colour_classes(item.gt), "ground truth")
        + _img(heatmap(item.anomaly), "anomaly map", jpeg=True)
        + _img(overlay(item.image, item.classes), "predicted classes", jpeg=True)
        + "</div></div>"
    )


def tests_section(items: Sequence[ImageView]) -> str:
    ordered = worst_first(items)
    counts: dict[str, int] = {}
    for item in ordered:
        counts[outcome(item)[1]] = counts.get(outcome(item)[1], 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    shown, rest = ordered[:OPEN_TEST_ITEMS], ordered[OPEN_TEST_ITEMS:]
    parts = [
        f"<h2>Every test image, worst first</h2><p>{len(ordered)} images: {html.escape(summary)}.</p>",
        *(_test_row(i) for i in shown),
    ]
    if rest:
        parts.append(f"<details class='more-tests'><summary>the other {len(rest)} test images</summary>")
        parts += [_test_row(i) for i in rest]
        parts.append("</details>")
    return "".join(parts)


STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
    "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
    ".info td{text-align:left}"
    "figure{display:inline-block;margin:3px;vertical-align:top}figcaption{font-size:11px;text-align:center}"
    ".strip{white-space:nowrap;overflow-x:auto}.grid{display:flex;flex-wrap:wrap}.figs svg{margin:4px}"
    ".sw{display:inline-block;width:14px;height:14px;margin-right:4px;vertical-align:middle;border:1px solid #888}"
    ".item{margin:.6em 0 .1em}.missed-defect .item b:first-child,.false-alarm .item b:first-child,"
    ".wrong-class .item b:first-child{color:#c00}details{margin:.4em 0}summary{cursor:pointer}"
)


def render_report(
    title: str,
    summary: Sequence[tuple[str, str]],
    metric_columns: Sequence[str],
    metric_rows: Sequence[Sequence[object]],
    category_rows: Sequence[dict],
    confusion: np.ndarray,
    class_names: Sequence[str],
    synthetic: Sequence[SyntheticView],
    tests: Sequence[ImageView],
    anomaly_maps: np.ndarray,
    gt_masks: np.ndarray,
) -> str:
    """The whole page.

    Args:
        title: page title; summary: (label, value) lines describing the run.
        metric_columns, metric_rows: the summary metrics table, already formatted.
        category_rows: rows of :func:`uniadc.analysis.category_metrics` (fractions).
        confusion: image counts, rows = true class 0..K, columns = predicted class (``class_names`` order).
        class_names: names by class index (0 = normal; ``other`` last for an open-set model).
        synthetic: the selected samples of every category; tests: every test image.
        anomaly_maps, gt_masks: ``(N, H, W)`` maps and bool ground truth of every test image (PRO curve).
    """
    scores = np.array([t.score for t in tests], np.float64)
    is_defect = np.array([t.true_index != 0 for t in tests], bool)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        _table(["", ""], summary, "info").replace("<thead><tr><th></th><th></th></tr></thead>", ""),
        "<h2>Metrics (percent)</h2>",
        _table(metric_columns, metric_rows, "summary"),
        "<p>I-AUC: image-level ROC AUC of the max of the anomaly map. P-AUC: pixel-level ROC AUC. PRO: area "
        "under the per-region overlap curve up to FPR 0.3, divided by 0.3. Acc: image class = category with "
        "the largest predicted area (normal if no pixel passes the threshold). mIoU: per-class IoU of the "
        "pixel class map, normal included, averaged.</p>",
        category_section(category_rows),
        confusion_section(confusion, class_names[: confusion.shape[0]], class_names[: confusion.shape[1]]),
        curves_section(scores, is_defect, anomaly_maps, gt_masks),
        "<h2>Class colours</h2>",
        _legend(class_names),
        synthetic_section(synthetic),
        tests_section(tests),
    ]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
