"""The MTD benchmark against the paper's UniADC(CLIP) row (``make bench-mtd``).

Settings: zero-shot k_normal in {1, 2, 4}; few-shot (k_normal, k_anomaly) in {(1,1), (2,1), (2,2), (4,1)}; three
seeds each; test = every MTD image outside the support set. Each run executes the pipeline stages (split ->
support -> regenerate -> train -> evaluate) as plain functions (the Prefect tasks' bodies, no API server), and
in the same run an ablation without synthesis: the discriminator trained on the support set alone (few-shot
only: zero-shot support has no anomaly to train on, so that ablation is undefined and reported as such).

Every row also carries ``knn``: the nearest-neighbour reference alone on the same split and bank (detection
metrics of its distance map; Acc / mIoU with its own training-data threshold and the discriminator's class
argmax), and normal_clean / defect_class_acc / all_normal_acc for reading Acc against the all-normal rate.

Writes ``benchmarks/results/mtd.md`` (table, command, date, git SHA, package versions) and
``benchmarks/results/mtd.json`` (list of {setting, k_normal, k_anomaly, seeds, i_auc, ..., miou_std,
normal_clean, defect_class_acc, all_normal_acc (+ _std), wall_s, knn: {...}, no_synthesis: {...} | null,
paper_clip: {...}}, metrics in percent).

Usage: ``python benchmarks/mtd.py [--only zero_shot:2] [--seeds 0 1 2] [--iterations 250] [--jobs 2]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

for _k, _v in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("OMP_NUM_THREADS", "1"),
    ("OPENBLAS_NUM_THREADS", "1"),
    ("MKL_NUM_THREADS", "1"),
):
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
MTD = ROOT.parent / "shared" / "datasets" / "mtd"
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("i_auc", "p_auc", "pro", "acc", "miou")
EXTRA = ("normal_clean", "defect_class_acc", "all_normal_acc")
SETTINGS = [
    ("zero_shot", 1, 0),
    ("zero_shot", 2, 0),
    ("zero_shot", 4, 0),
    ("few_shot", 1, 1),
    ("few_shot", 2, 1),
    ("few_shot", 2, 2),
    ("few_shot", 4, 1),
]
# The paper's UniADC(CLIP) MTD rows (shared/notes/paper-mtd.md): I-AUC, P-AUC, PRO, Acc, mIoU in percent.
PAPER = {
    ("zero_shot", 1, 0): (86.19, 80.80, 77.69, 55.82, 27.92),
    ("zero_shot", 2, 0): (90.31, 82.92, 78.99, 62.87, 30.56),
    ("zero_shot", 4, 0): (90.88, 84.88, 79.81, 63.98, 31.29),
    ("few_shot", 1, 1): (88.49, 82.41, 77.41, 60.81, 34.80),
    ("few_shot", 2, 1): (90.70, 84.49, 80.71, 63.78, 35.58),
    ("few_shot", 2, 2): (93.15, 86.20, 83.36, 71.34, 37.05),
    ("few_shot", 4, 1): (92.74, 84.98, 82.15, 64.40, 35.86),
}


def run_one(
    setting: str,
    k_normal: int,
    k_anomaly: int,
    seed: int,
    iterations: int,
    store: str,
    ablation: bool,
    resize: str = "auto",
) -> dict:
    """One seed of one setting; returns metrics (fractions) for UniADC and, when asked, the ablation."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from schemas.config import load_run_config
    from storage.priors import load_run_priors
    from tasks.evaluate import evaluate_key, evaluate_model
    from tasks.regenerate import category_key, regenerate_category
    from tasks.split import split_dataset, split_key
    from tasks.support import prepare_support, support_key
    from tasks.train import train_key, train_model

    name = f"{setting}-n{k_normal}-a{k_anomaly}-s{seed}"
    cfg = load_run_config(
        None,
        data={
            "name": name,
            "dataset": {"kind": "mtd", "root": str(MTD), "resize": resize},
            "setting": setting,
            "k_normal": k_normal,
            "k_anomaly": k_anomaly,
            "seed": seed,
            "image_size": 256,
            "store": store,
            "discriminator": {"iterations": iterations, "num_threads": 1},
        },
    )
    t0 = time.perf_counter()
    priors = load_run_priors(cfg)
    split = split_dataset.fn(cfg, split_key(cfg))
    support = prepare_support.fn(cfg, split, support_key(cfg, split))
    samples = [
        regenerate_category.fn(cfg, priors, c, support, category_key(cfg, priors, c, support))
        for c in priors.names
    ]
    t_syn = time.perf_counter() - t0
    model = train_model.fn(cfg, priors, support, samples, train_key(cfg, priors, support, samples))
    evaluation = evaluate_model.fn(cfg, priors, split, model, evaluate_key(cfg, split, model))

    ours, knn = _scores(evaluation, model, cfg.threshold, len(priors.categories))
    out = {"uniadc": ours, "knn": knn, "test": evaluation.counts["test"], "synthesis_s": t_syn}
    out["detector"] = _detector(model)
    out["classes"] = list(priors.names)
    if ablation and setting == "few_shot":
        model0 = train_model.fn(cfg, priors, support, [], train_key(cfg, priors, support, []))
        ev0 = evaluate_model.fn(cfg, priors, split, model0, evaluate_key(cfg, split, model0))
        out["no_synthesis"] = _scores(ev0, model0, cfg.threshold, len(priors.categories))[0]
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del np
    return out


def _detector(model) -> str:
    """Which map the trained model decides with, and the held-out AUROCs behind the choice."""
    import math

    from storage.checkpoints import reference_calibration

    cal = reference_calibration(Path(model.run_dir) / model.uris["checkpoint"]) or {}
    name = "learned" if math.isfinite(cal.get("learned_tau_logit", math.nan)) else "reference"
    auc = cal.get("probe_auc_learned", math.nan), cal.get("probe_auc_reference", math.nan)
    held = cal.get("probe_learned_max", math.nan)
    return (
        f"{name} ({100 * auc[0]:.1f}/{100 * auc[1]:.1f}, max {held:.3f})" if math.isfinite(auc[0]) else name
    )


def _scores(evaluation, model, threshold: float, k: int) -> tuple[dict, dict]:
    """(ours, knn) metrics of one evaluation, fractions.

    ours: the evaluate stage's metrics plus normal_clean, defect_class_acc and all_normal_acc. knn: the
    nearest-neighbour reference alone (its calibrated distance map, stored by evaluate as reference_maps)
    with its own training-data threshold (``normal_max``: the largest leave-one-out support-view score) and
    the discriminator's class argmax where it fires.
    """
    import numpy as np
    import polars as pl
    import zarr

    from storage.checkpoints import reference_calibration
    from uniadc import metrics
    from uniadc.analysis import confusion_matrix, gt_pixel_classes

    root = Path(evaluation.run_dir)
    row = pl.read_parquet(root / evaluation.uris["metrics"]).row(0, named=True)
    preds = pl.read_parquet(root / evaluation.uris["predictions"]).sort("zarr_index")
    labels = preds["label_index"].to_numpy().astype(np.int64)
    normal = labels == 0

    def extras(image_scores: np.ndarray, image_classes: np.ndarray, cut: float = threshold) -> dict:
        return {
            "normal_clean": float(np.mean(image_scores[normal] < cut)),
            "defect_class_acc": float(np.mean(image_classes[~normal] == labels[~normal])),
            "all_normal_acc": float(np.mean(normal)),
        }

    ours = {m: row[m] for m in METRICS} | extras(
        preds["image_score"].to_numpy(), preds["pred_index"].to_numpy()
    )
    group = zarr.open_group(str(root / evaluation.uris["zarr"]), mode="r")
    gt, argmax = group["gt_class_maps"][:], group["class_argmax"][:]
    named = gt_pixel_classes(argmax, gt, k)
    defect = (labels > 0) & (named > 0)  # a defect image whose mask vanished at run size names nothing
    named = named[defect]
    ours["gt_class_acc"] = float(np.mean(named == labels[defect]))
    ours["gt_confusion"] = confusion_matrix(labels[defect] - 1, named - 1, k, k).tolist()
    cal = reference_calibration(root / model.uris["checkpoint"])
    if cal is None:
        return ours, {}
    tau, scale, tau_n = cal["threshold"], cal["scale"], cal["normal_max"]
    maps = group["reference_maps"][:]
    valid = group["valid"][:] if "valid" in group else None
    valid = None if valid is None or valid.all() else valid  # letterboxed tiles: padding left out
    cut = 1.0 / (1.0 + np.exp(-(tau_n - tau) / scale))  # tau_n on the calibrated map
    classes = np.where(maps >= cut, argmax, 0).astype(np.uint8)
    knn = metrics.evaluate(maps, gt, classes, k, labels=labels, valid=valid)
    knn_scores = maps.reshape(len(maps), -1).max(axis=1)
    knn = {m: knn[m] for m in METRICS} | extras(knn_scores, metrics.image_classes(classes, k), cut)
    return ours, knn


def _summary(runs: list[dict], key: str) -> dict:
    import numpy as np

    vals = {m: [100 * r[key][m] for r in runs if r.get(key)] for m in (*METRICS, *EXTRA)}
    if not vals["i_auc"]:
        return {}
    return {
        **{m: float(np.mean(v)) for m, v in vals.items()},
        **{f"{m}_std": float(np.std(v)) for m, v in vals.items()},
    }


def _gt_classes(runs: list[dict], key: str) -> dict:
    """Mean GT-pixel class accuracy (percent) and the confusion summed over seeds (rows true, columns named)."""
    import numpy as np

    done = [r[key] for r in runs if r.get(key) and "gt_class_acc" in r[key]]
    if not done:
        return {}
    acc = [100 * r["gt_class_acc"] for r in done]
    return {
        "gt_class_acc": float(np.mean(acc)),
        "gt_class_acc_std": float(np.std(acc)),
        "gt_confusion": np.sum([r["gt_confusion"] for r in done], axis=0).tolist(),
    }


def _fmt(s: dict | None, keys: tuple[str, ...] = (*METRICS, *EXTRA)) -> str:
    return " | ".join(f"{s[m]:.2f} ± {s[m + '_std']:.2f}" if s and m in s else "n/a" for m in keys)


def _versions() -> str:
    from storage.layout import git_sha, package_versions

    v = package_versions()
    return git_sha(), ", ".join(f"{k} {v[k]}" for k in sorted(v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="*", default=None, help="settings as zero_shot:K or few_shot:K:A (default: all seven)"
    )
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=250)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one process each)")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument(
        "--resize", default="auto", choices=("auto", "squash", "pad", "tile"), help="dataset.resize"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--store", default=None, help="run store to reuse (regenerated samples are resumed)")
    args = parser.parse_args()
    if not MTD.is_dir():
        sys.exit(f"MTD not found at {MTD}: this benchmark reads the dataset from ../shared/datasets/mtd")
    settings = SETTINGS
    if args.only:
        wanted = {tuple([s.split(":")[0], *map(int, s.split(":")[1:])]) for s in args.only}
        settings = [s for s in SETTINGS if (s[0], s[1]) in wanted or s in wanted]
    store = args.store or tempfile.mkdtemp(prefix="uniadc-mtd-")
    results = []
    print(
        f"MTD benchmark: {len(settings)} settings x seeds {args.seeds}, {args.iterations} iterations, "
        f"{args.jobs} parallel runs, store {store}",
        flush=True,
    )
    detail = args.out / "mtd-detail.json"
    if detail.is_file():  # results of settings run before, merged by setting
        results = [
            r
            for r in json.loads(detail.read_text())
            if (r["setting"], r["k_normal"], r["k_anomaly"]) not in set(settings)
        ]
    for setting, kn, ka in settings:
        t = time.perf_counter()
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(
                pool.map(
                    run_one,
                    *zip(  # noqa: B905 - transposing equal-length tuples
                        *[
                            (setting, kn, ka, s, args.iterations, store, not args.no_ablation, args.resize)
                            for s in args.seeds
                        ]
                    ),
                )
            )
        wall = time.perf_counter() - t
        ours, abl, knn = _summary(runs, "uniadc"), _summary(runs, "no_synthesis"), _summary(runs, "knn")
        for summary, key in ((ours, "uniadc"), (abl, "no_synthesis")):
            if summary:
                summary.update(_gt_classes(runs, key))
        paper = PAPER[(setting, kn, ka)]
        peak = max(r["peak_rss_mb"] for r in runs)
        results.append(
            {
                "setting": setting,
                "k_normal": kn,
                "k_anomaly": ka,
                "seeds": args.seeds,
                **ours,
                "wall_s": round(wall, 1),
                "peak_rss_mb": round(peak),
                "test_images": runs[0]["test"],
                "paper_clip": dict(zip(METRICS, paper, strict=True)),
                "knn": knn or None,
                "detector": [r["detector"] for r in runs],
                "classes": runs[0]["classes"],
                "no_synthesis": abl or None,
                "command": "python benchmarks/mtd.py " + " ".join(sys.argv[1:]),
            }
        )
        print(
            f"{setting} k_normal={kn} k_anomaly={ka}: ours {_fmt(ours)} | knn {_fmt(knn)} | paper(CLIP) "
            f"{' | '.join(f'{p:.2f}' for p in paper)} | w/o synthesis {_fmt(abl)} | wall {wall:.0f} s, "
            f"peak RSS {peak:.0f} MB per process",
            flush=True,
        )
        write_results(results, args)  # after every setting, so an interrupted run keeps what it measured


def _gt_lines(results: list[dict]) -> list[str]:
    """The GT-pixel classification section: accuracy per row and the confusion summed over seeds."""
    rows = [r for r in results if r.get("gt_confusion")]
    if not rows:
        return []
    lines = [
        "",
        "## Classification on ground-truth defect pixels (detection left out)",
        "",
        "Per defect image, the class the discriminator names most often on its ground-truth defect pixels; "
        "accuracy over defect images (chance = 1 / number of classes), and the confusion summed over seeds "
        "(rows = true class, columns = named class).",
        "",
    ]
    for r in rows:
        abl = (r.get("no_synthesis") or {}).get("gt_class_acc")
        without = f"; w/o synthesis {abl:.2f}" if abl is not None else ""
        names = r.get("classes") or [str(i + 1) for i in range(len(r["gt_confusion"]))]
        lines += [
            f"- {r['setting']} k_n {r['k_normal']} k_a {r['k_anomaly']}: ours {r['gt_class_acc']:.2f} "
            f"± {r['gt_class_acc_std']:.2f}{without}",
            "",
            "| true \\ named | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
            *(
                f"| {n} | " + " | ".join(str(v) for v in row) + " |"
                for n, row in zip(names, r["gt_confusion"], strict=True)
            ),
            "",
        ]
    return lines


def write_results(results: list[dict], args) -> None:
    sha, versions = _versions()
    args.out.mkdir(parents=True, exist_ok=True)
    order = {s: i for i, s in enumerate(SETTINGS)}
    results = sorted(results, key=lambda r: order[(r["setting"], r["k_normal"], r["k_anomaly"])])
    (args.out / "mtd-detail.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# MTD benchmark: uniadc (offline default: procedural/cut-paste synthesis, EfficientNet-Lite0 + MiniLM)",
        "",
        "- commands: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", "") for r in results) if c),
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- git SHA: {sha}",
        f"- packages: {versions}",
        f"- machine: {os.cpu_count()} CPU cores, no GPU; {args.jobs} runs in parallel, 1 torch thread each",
        "- protocol: seeded support draw (defect images with an empty mask are never drawn as support); test = "
        f"every MTD image outside the support set; dataset.resize {args.resize} at 256 (auto letterboxes tiles "
        "beyond 1:1.5, padding left out of the metrics); anomaly threshold "
        "fitted on training data only (the largest score of the leave-one-out support views, stored in the "
        "checkpoint; 0.5 on the calibrated map); last training iteration kept; no test statistics used.",
        "- map used: which anomaly map the default kept per seed (discriminator.detector: auto), with the pixel "
        "AUROC of the learned / reference map on the support tiles held out from probe models (one; two in turn "
        "with k_normal >= 3) and the learned map's maximum on their normal views (the learned map is kept only "
        "if it wins and stays < 0.5).",
        "- rows: ours = the default pipeline (discriminator.reference: knn); knn = the nearest-neighbour "
        "reference alone (same bank, same maps, its own threshold = largest leave-one-out support-view score, "
        "classes from the discriminator's class argmax); w/o synthesis = the discriminator trained on the "
        "support set alone (few-shot only: zero-shot support holds no defect); paper = UniADC(CLIP), Tables 1-2.",
        "- metrics in percent, mean ± std over seeds. normal clean = normal test images with no pixel above the "
        "threshold; class acc = defect images whose image class is their true class; all-normal = the Acc of "
        "calling every image normal on that test set.",
        "",
        "| setting | k_n | k_a | | I-AUC | P-AUC | PRO | Acc | mIoU | normal clean | class acc | all-normal "
        "| wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours = {k: v for k, v in r.items() if k in METRICS or k in EXTRA or k.endswith("_std")}
        lines.append(
            f"| {r['setting']} | {r['k_normal']} | {r['k_anomaly']} | ours | {_fmt(ours)} | {r['wall_s']} |"
        )
        lines.append(f"| | | | knn | {_fmt(r.get('knn'))} | |")
        if r.get("detector"):
            lines.append(f"| | | | map used, per seed | {', '.join(r['detector'])} | | | | | | | | |")
        lines.append(f"| | | | w/o synthesis | {_fmt(r.get('no_synthesis'))} | |")
        paper = " | ".join(f"{r['paper_clip'][m]:.2f}" for m in METRICS)
        lines.append(f"| | | | paper (CLIP) | {paper} | | | | |")
    lines += _gt_lines(results)
    (args.out / "mtd.md").write_text("\n".join(lines) + "\n")
    stats = (*METRICS, *EXTRA, "gt_class_acc")
    keep = (
        "setting",
        "k_normal",
        "k_anomaly",
        "seeds",
        *stats,
        *(f"{m}_std" for m in stats),
        "gt_confusion",
        "classes",
        "wall_s",
    )
    (args.out / "mtd.json").write_text(
        json.dumps(
            [
                {k: r.get(k) for k in keep}
                | {
                    "knn": r.get("knn"),
                    "no_synthesis": r.get("no_synthesis"),
                    "paper_clip": r["paper_clip"],
                    "detector": r.get("detector"),
                }
                for r in results
            ],
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out / 'mtd.md'} and {args.out / 'mtd.json'}")


if __name__ == "__main__":
    main()
