"""A self-contained HTML page that explains a run: what was synthesised, what was predicted, how well.

Pure: takes arrays and tables, returns the HTML text (images inlined as base64 PNG).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from uniadc.visualize import class_colour, colour_classes, draw_outline, overlay


@dataclass(frozen=True)
class CategoryView:
    """What the report shows for one category.

    Attributes:
        name: category name; index: its class index (1..K).
        description: the prior's first description.
        synthetic: (n, H, W, 3) uint8 selected synthetic samples; synthetic_masks: (n, H, W) bool.
        test_images: (m, H, W, 3) uint8 test images of this category; test_gt: (m, H, W) uint8 class maps;
        test_pred: (m, H, W) uint8 predicted class maps; test_pred_names: predicted image class names.
    """

    name: str
    index: int
    description: str
    synthetic: np.ndarray
    synthetic_masks: np.ndarray
    test_images: np.ndarray
    test_gt: np.ndarray
    test_pred: np.ndarray
    test_pred_names: Sequence[str]


def _png(array: np.ndarray, size: int = 160) -> str:
    img = Image.fromarray(array)
    if img.width != size:
        img = img.resize((size, round(size * img.height / img.width)), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(array: np.ndarray, caption: str = "", size: int = 160) -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_png(array, size)}" width="{size}">{cap}</figure>'


def _legend(names: Sequence[str]) -> str:
    items = []
    for i, name in enumerate(names):
        r, g, b = class_colour(i)
        items.append(f'<span class="sw" style="background:rgb({r},{g},{b})"></span>{html.escape(name)}')
    return '<p class="legend">' + " &nbsp; ".join(items) + "</p>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(
    title: str,
    summary: Sequence[tuple[str, str]],
    metric_columns: Sequence[str],
    metric_rows: Sequence[Sequence[object]],
    categories: Sequence[CategoryView],
    class_names: Sequence[str],
    normal_examples: CategoryView | None = None,
) -> str:
    """The whole page.

    Args:
        title: page title.
        summary: (label, value) lines describing the run (dataset, setting, support, backends, threshold, ...).
        metric_columns, metric_rows: the metrics table, already formatted.
        categories: one view per defect category.
        class_names: names by class index (0 = normal).
        normal_examples: optional view of normal test images (its synthetic arrays may be empty).
    """
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        _table(["", ""], summary).replace("<thead><tr><th></th><th></th></tr></thead>", ""),
    ]
    parts += [
        "<h2>Metrics (percent)</h2>",
        _table(metric_columns, metric_rows),
        "<p>I-AUC: image-level ROC AUC of the max of the anomaly map. P-AUC: pixel-level ROC AUC. PRO: area "
        "under the per-region overlap curve up to FPR 0.3, divided by 0.3. Acc: image class = category with "
        "the largest predicted area (normal if no pixel passes the threshold). mIoU: per-class IoU of the "
        "pixel class map, normal included, averaged.</p>",
        "<h2>Class colours</h2>",
        _legend(class_names),
    ]
    for view in list(categories) + ([normal_examples] if normal_examples is not None else []):
        parts.append(f"<h2>{html.escape(view.name)}</h2>")
        if view.description:
            parts.append(f"<p>Prior: <em>{html.escape(view.description)}</em></p>")
        if len(view.synthetic):
            parts.append(
                "<h3>Synthetic training samples (red line: around the training mask)</h3><div class='strip'>"
            )
            parts += [
                _img(draw_outline(img, m, pad=max(2, img.shape[0] // 64)))
                for img, m in zip(view.synthetic, view.synthetic_masks, strict=True)
            ]
            parts.append("</div>")
        if len(view.test_images):
            parts.append("<h3>Test predictions: image | ground truth | predicted classes</h3>")
            for img, gt, pred, name in zip(
                view.test_images, view.test_gt, view.test_pred, view.test_pred_names, strict=True
            ):
                parts.append(
                    "<div class='strip'>"
                    + _img(img, "image")
                    + _img(colour_classes(gt), "ground truth")
                    + _img(overlay(img, pred), f"predicted: {name}")
                    + "</div>"
                )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}figure{display:inline-block;margin:3px}"
        "figcaption{font-size:12px;text-align:center}.strip{white-space:nowrap;overflow-x:auto}"
        ".sw{display:inline-block;width:14px;height:14px;margin-right:4px;vertical-align:middle;"
        "border:1px solid #888}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
