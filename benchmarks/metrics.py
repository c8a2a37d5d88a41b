"""Benchmark of uniadc.metrics.pro against anomalib's AUPRO and two exact references (``make bench``).

Data: synthetic float32 sigmoid anomaly maps with elliptic defects on ~60% of the images, 100 maps of 512² and
1,000 maps of 256², fixed seed. Every method runs in its own subprocess on the same .npy files, so wall time,
CPU time (all threads) and peak memory (growth of ru_maxrss after the maps are loaded) are measured alike:

- ours: ``uniadc.metrics.pro`` (project venv), best of ``--repeats`` runs;
- anomalib: ``anomalib.metrics.aupro._AUPRO`` 2.7.0 in the throw-away ``.bench-venv`` (built by
  benchmarks/anomalib_venv.sh when missing; never a project dependency);
- full-sort reference: the MVTec AD algorithm (global stable argsort, float64 cumulative sums, ties merged);
- brute force: a loop over every distinct threshold, too slow at full size, so it runs on a subsample (the
  first 6 maps at 64x64, every size/64-th pixel) where ours is timed again.

Usage: python benchmarks/metrics.py [--repeats 3] [--sizes 100x512 1000x256] [--no-anomalib] [--no-full-sort]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
FPR_LIMIT = 0.3
SUBSAMPLE = (6, 64)  # brute force: first 6 maps, every (size / 64)-th pixel in each direction: 6 x 64 x 64


def make_maps(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) float32 sigmoid maps and bool masks: smooth noise + pixel noise + blurred defects."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    scores = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[:size, :size] / size
    cells = size // 16 + 1
    for i in range(n):
        if rng.random() < 0.6:
            for _ in range(rng.integers(1, 4)):
                (cy, cx), (ry, rx) = rng.uniform(0.1, 0.9, 2), rng.uniform(0.02, 0.15, 2)
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        base = ndimage.zoom(rng.normal(size=(cells, cells)), 16, order=1)[:size, :size] * 0.8
        base += 0.5 * rng.normal(size=(size, size))
        if masks[i].any():
            base += 3.0 * ndimage.gaussian_filter(masks[i].astype(np.float32), size / 64)
        scores[i] = 1 / (1 + np.exp(-(base - 1.5)))
    return scores, masks


def global_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions of every mask numbered across the whole set: ((N, H, W) int64 labels, region count)."""
    from scipy import ndimage

    labels = np.zeros(masks.shape, np.int64)
    count = 0
    for i, mask in enumerate(masks):
        lab, found = ndimage.label(mask, structure=np.ones((3, 3)))
        labels[i] = np.where(lab > 0, lab + count, 0)
        count += found
    return labels, count


def full_sort_pro(scores: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """MVTec AD's exact algorithm: global stable argsort, float64 cumulative FPR/PRO, ties merged."""
    labels, count = global_regions(masks)
    labels = labels.ravel()
    sizes = np.bincount(labels)
    flat = scores.ravel().astype(np.float64)
    order = np.argsort(-flat, kind="stable")
    normal = labels[order] == 0
    fpr = np.cumsum(normal) / normal.sum()
    gain = np.where(normal, 0.0, 1.0 / (sizes[labels[order]] * count))
    overlap = np.cumsum(gain)
    ranked = flat[order]
    last = np.r_[ranked[1:] != ranked[:-1], True]
    fpr, overlap = np.r_[0.0, fpr[last]], np.r_[0.0, overlap[last]]
    inside = np.searchsorted(fpr, fpr_limit, "right")  # points with fpr <= limit
    x, y = fpr[:inside], overlap[:inside]
    if inside < fpr.size and x[-1] < fpr_limit:
        y_lim = y[-1] + (overlap[inside] - y[-1]) * (fpr_limit - x[-1]) / (fpr[inside] - x[-1])
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    return float(np.trapezoid(y, x) / fpr_limit)


def brute_force_pro(scores: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Loop over every distinct score as threshold: FPR and mean region overlap recounted each time."""
    labels, count = global_regions(masks)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(scores)[::-1]:
        above = scores >= t
        hits = np.bincount(labels[above], minlength=count + 1)[1:]
        points.append((np.count_nonzero(above & normal) / normal.sum(), float(np.mean(hits / sizes))))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1, x1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0), fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def anomalib_pro(scores: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    import torch
    from anomalib.metrics.aupro import _AUPRO

    metric = _AUPRO(fpr_limit=fpr_limit)
    metric.update(torch.from_numpy(scores), torch.from_numpy(masks))
    return float(metric.compute())


def ours_pro(scores: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    from uniadc.metrics import pro

    return pro(scores, masks, fpr_limit)


METHODS = {"ours": ours_pro, "anomalib": anomalib_pro, "full_sort": full_sort_pro, "brute": brute_force_pro}


def worker(method: str, data: Path, repeats: int, subsample: bool) -> None:
    """Runs one method on the saved maps; prints one JSON line: value, best wall/CPU time, peak memory."""
    if method == "anomalib":  # imports outside the timing and the memory baseline
        import anomalib.metrics.aupro  # noqa: F401
    else:
        import scipy.ndimage  # noqa: F401

        sys.path.insert(0, str(ROOT))
        import uniadc.metrics  # noqa: F401
    scores, masks = np.load(data / "scores.npy"), np.load(data / "masks.npy")
    if subsample:
        n, side = SUBSAMPLE
        step = scores.shape[1] // side
        scores, masks = (np.ascontiguousarray(a[:n, ::step, ::step]) for a in (scores, masks))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        value = METHODS[method](scores, masks, FPR_LIMIT)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"value": value, "time": min(walls), "cpu": min(cpus), "peak_mb": peak_mb}))


def run(method: str, data: Path, repeats: int, subsample: bool = False) -> dict:
    python = BENCH_PYTHON if method == "anomalib" else Path(sys.executable)
    cmd = [str(python), __file__, "--worker", method, "--data", str(data), "--repeats", str(repeats)]
    cmd += ["--subsample"] if subsample else []
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{method} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_bench_venv() -> bool:
    if BENCH_PYTHON.exists():
        return True
    print("no .bench-venv: building it with `bash benchmarks/anomalib_venv.sh` (minutes; ~6 GB)", flush=True)
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "anomalib_venv.sh")], cwd=ROOT)
    if result.returncode != 0:
        print(
            "could not build .bench-venv (run `bash benchmarks/anomalib_venv.sh` by hand); skipping anomalib"
        )
    return result.returncode == 0


def line(name: str, r: dict, ours: dict) -> str:
    diff = "" if r is ours else f"{abs(r['value'] - ours['value']):>12.2e}"
    return f"  {name:<34}{r['time']:>9.3f}{r['cpu']:>9.3f}{r['peak_mb']:>10.0f}{r['value']:>20.15f}{diff}"


def bench(n: int, size: int, repeats: int, with_anomalib: bool, with_full_sort: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="uniadc-bench-") as tmp:
        data = Path(tmp)
        scores, masks = make_maps(n, size)
        np.save(data / "scores.npy", scores)
        np.save(data / "masks.npy", masks)
        print(
            f"\n== {n} maps of {size}x{size}: {scores.size:,} px, {masks.mean():.2%} anomalous, "
            f"{int(masks.reshape(n, -1).any(1).sum())} defective images, float32 =="
        )
        del scores, masks
        header = f"  {'method':<34}{'wall [s]':>9}{'cpu [s]':>9}{'peak MB':>10}{'PRO':>20}{'|diff|':>12}"
        print(header, flush=True)
        ours = run("ours", data, repeats)
        print(line("ours (uniadc.metrics.pro)", ours, ours), flush=True)
        others = {}
        if with_anomalib:
            others["anomalib 2.7.0 AUPRO"] = run("anomalib", data, 1)
            print(line("anomalib 2.7.0 AUPRO", others["anomalib 2.7.0 AUPRO"], ours), flush=True)
        if with_full_sort:
            name = "full-sort reference (MVTec)"
            others[name] = run("full_sort", data, 1)
            print(line(name, others[name], ours), flush=True)
        sub_n, side = SUBSAMPLE
        sub_ours, brute = run("ours", data, repeats, True), run("brute", data, 1, True)
        print(f"  subsample {sub_n}x{side}x{side} (first {sub_n} maps, every {size // side}th pixel):")
        print(line("ours (uniadc.metrics.pro)", sub_ours, sub_ours))
        print(line("brute force (loop over thresholds)", brute, sub_ours))
        for name, r in {**others, "brute force (subsample)": brute}.items():
            base = sub_ours if r is brute else ours
            mem = f", {r['peak_mb'] / base['peak_mb']:.1f}x less peak memory" if base["peak_mb"] >= 8 else ""
            speed = f"{r['time'] / base['time']:.1f}x faster (wall), {r['cpu'] / base['cpu']:.1f}x less CPU"
            print(f"  ours vs {name}: {speed}{mem}, |value difference| {abs(r['value'] - base['value']):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (best time is reported)")
    parser.add_argument("--sizes", nargs="+", default=["100x512", "1000x256"], help="NxSIZE data sets")
    parser.add_argument("--no-anomalib", action="store_true", help="skip anomalib (no .bench-venv needed)")
    parser.add_argument("--no-full-sort", action="store_true", help="skip the full-sort reference")
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--subsample", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.repeats, args.subsample)
        return
    with_anomalib = not args.no_anomalib and ensure_bench_venv()
    print(f"uniadc PRO benchmark, fpr_limit {FPR_LIMIT}; best of runs; peak = ru_maxrss growth after loading")
    for spec in args.sizes:
        n, size = (int(v) for v in spec.split("x"))
        bench(n, size, args.repeats, with_anomalib, not args.no_full_sort)


if __name__ == "__main__":
    main()
