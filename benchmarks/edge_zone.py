"""Where the reference map's errors sit: the picture's edge band against its interior, from a run store.

Reads the evaluate stage of every run in a store (``reference_maps``, ``gt_class_maps``, ``valid``) and prints,
per run, the share of defect pixels within ``--band`` px of the picture edge (letterbox padding excluded), the
pixel AUROC of the reference map in that band and inside it, where the normal and the defect images have their
maximum, and the image AUROC of the maximum over the whole picture and over the interior alone. A diagnostic of
test maps after the fact: nothing here feeds a run.

Usage: ``python benchmarks/edge_zone.py --store /tmp/mtd-res [--runs 'few_shot-n2-a1-s*'] [--band 16]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

from uniadc.metrics import roc_auc

PIXEL_SAMPLE = 4_000_000  # pixels drawn per zone for the pixel AUROC (the full maps hold ~88 M)


def edge_band(valid: np.ndarray, band: int) -> np.ndarray:
    """(N, H, W) bool: picture pixels within ``band`` px (chessboard distance) of the picture's edge."""
    out = np.zeros(valid.shape, bool)
    for i, v in enumerate(valid):
        dist = ndimage.distance_transform_cdt(np.pad(v, 1), metric="chessboard")[1:-1, 1:-1]
        out[i] = v & (dist <= band)
    return out


def run_summary(evaluate_dir: Path, band: int, rng: np.random.Generator) -> dict[str, float]:
    group = zarr.open_group(str(next(evaluate_dir.glob("*.zarr"))), mode="r")
    maps, defect = group["reference_maps"][:], group["gt_class_maps"][:] > 0
    valid = group["valid"][:].astype(bool) if "valid" in group else np.ones(defect.shape, bool)
    edge = edge_band(valid, band)
    inner = valid & ~edge
    out = {"edge_defect_share": float(defect[edge].sum() / max(defect[valid].sum(), 1))}
    for name, zone in (("edge", edge), ("inner", inner)):
        scores, labels = maps[zone], defect[zone]
        pick = rng.choice(len(scores), min(len(scores), PIXEL_SAMPLE), replace=False)
        out[f"pixel_auroc_{name}"] = roc_auc(scores[pick], labels[pick])
    flat = np.where(valid, maps, -np.inf).reshape(len(maps), -1)
    is_defect = defect.reshape(len(maps), -1).any(axis=1)
    at_edge = edge.reshape(len(maps), -1)[np.arange(len(maps)), flat.argmax(axis=1)]
    out["normal_max_at_edge"] = float(at_edge[~is_defect].mean())
    out["defect_max_at_edge"] = float(at_edge[is_defect].mean())
    out["image_auroc"] = roc_auc(flat.max(axis=1), is_defect)
    out["image_auroc_inner_max"] = roc_auc(
        np.where(inner, maps, -np.inf).reshape(len(maps), -1).max(1), is_defect
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--runs", default="*", help="glob of run names inside the store")
    parser.add_argument("--band", type=int, default=16, help="edge band width in pixels at run size")
    args = parser.parse_args()
    runs = sorted(p for p in args.store.glob(args.runs) if any(p.glob("evaluate-*")))
    if not runs:
        raise SystemExit(f"{args.store}: no run matching {args.runs!r} has an evaluate stage")
    rng = np.random.default_rng(0)
    print(
        f"band {args.band} px | run | defect px in band | pixel AUROC band / inner | max at edge normal / defect "
        "| I-AUROC max / inner max"
    )
    for run in runs:
        # the reference map depends on the support bank only: a run's evaluate stages (with and without
        # synthesis) hold the same one
        s = run_summary(min(run.glob("evaluate-*")), args.band, rng)
        print(
            f"{run.name} | {100 * s['edge_defect_share']:.1f} % | "
            f"{100 * s['pixel_auroc_edge']:.1f} / {100 * s['pixel_auroc_inner']:.1f} | "
            f"{100 * s['normal_max_at_edge']:.1f} / {100 * s['defect_max_at_edge']:.1f} % | "
            f"{100 * s['image_auroc']:.2f} / {100 * s['image_auroc_inner_max']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
