"""Small inline SVG figures for the self-contained report: line plots (curves) and a count heatmap."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def line_plot(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    ylim: tuple[float, float] = (0.0, 1.0),
    diagonal: bool = False,
    size: tuple[int, int] = (320, 260),
) -> str:
    """``series`` of (legend, xs, ys) drawn as polylines in a labelled box."""
    w, h = size
    left, right, top, bottom = 44, 10, 22, 36
    pw, ph = w - left - right, h - top - bottom

    def px(x: np.ndarray, y: np.ndarray) -> str:
        xs = left + (np.asarray(x, float) - xlim[0]) / (xlim[1] - xlim[0]) * pw
        ys = top + ph - (np.asarray(y, float) - ylim[0]) / (ylim[1] - ylim[0]) * ph
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys, strict=True))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="plot" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{w / 2}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
    ]
    for i in range(5):
        fx = xlim[0] + (xlim[1] - xlim[0]) * i / 4
        fy = ylim[0] + (ylim[1] - ylim[0]) * i / 4
        x, y = left + pw * i / 4, top + ph - ph * i / 4
        out.append(
            f'<text x="{x:.0f}" y="{top + ph + 13}" text-anchor="middle" font-size="10">{fx:.2g}</text>'
        )
        out.append(f'<text x="{left - 4}" y="{y + 3:.0f}" text-anchor="end" font-size="10">{fy:.2g}</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{h - 4}" text-anchor="middle" font-size="11">{html.escape(xlabel)}</text>'
    )
    out.append(
        f'<text x="11" y="{top + ph / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 11 {top + ph / 2})">{html.escape(ylabel)}</text>'
    )
    if diagonal:
        out.append(
            f'<polyline points="{px(np.array(xlim), np.array(ylim))}" stroke="#bbb" '
            'stroke-dasharray="4 3" fill="none"/>'
        )
    for i, (name, xs, ys) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        out.append(f'<polyline points="{px(xs, ys)}" stroke="{colour}" stroke-width="1.5" fill="none"/>')
        out.append(
            f'<text x="{left + pw - 4}" y="{top + ph - 6 - 13 * (len(series) - 1 - i)}" text-anchor="end" '
            f'font-size="10" fill="{colour}">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def count_heatmap(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str) -> str:
    """A confusion matrix as coloured cells with their counts; colour = share of the row."""
    matrix = np.asarray(matrix)
    cell, left, top = 46, 110, 90
    w, h = max(left + cell * len(columns) + 10, 400), top + cell * len(rows) + 10
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="confusion" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{left}" y="14" font-size="12">{html.escape(title)}</text>',
        f'<text x="{left}" y="30" font-size="10">columns: predicted; rows: true</text>',
    ]
    for j, name in enumerate(columns):
        x = left + cell * j + cell / 2
        out.append(
            f'<text x="{x}" y="{top - 6}" font-size="10" '
            f'transform="rotate(-40 {x} {top - 6})">{html.escape(name)}</text>'
        )
    for i, name in enumerate(rows):
        y = top + cell * i
        out.append(
            f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end" font-size="11">{html.escape(name)}</text>'
        )
        for j in range(len(columns)):
            share = float(shares[i, j])
            good = i == j
            colour = f"rgba(44,160,44,{share:.3f})" if good else f"rgba(214,39,40,{share:.3f})"
            out.append(
                f'<rect x="{left + cell * j}" y="{y}" width="{cell}" height="{cell}" fill="{colour}" stroke="#ccc"/>'
            )
            out.append(
                f'<text x="{left + cell * j + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                f'font-size="12">{int(matrix[i, j])}</text>'
            )
    out.append("</svg>")
    return "".join(out)
