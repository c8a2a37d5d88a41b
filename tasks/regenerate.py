"""Stage ``regenerate``: for one defect category, N selected synthetic samples (paper §3.2–3.3).

Per sample: draw the candidate masks (or cut-paste composites), render them at every noise factor, score them
and keep the best. Samples are written to ``regenerate/<category>-<key>/samples.zarr`` and committed in batches
as Parquet parts; a sample is visible only once its row is committed. Every sample has its own generator seeded
from (seed, category, sample index), so a run killed at any point resumes where it stopped and produces exactly
the samples an uninterrupted run would have.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
import socket
import zlib

import numpy as np
import polars as pl
from prefect import task

from schemas.config import RunConfig, SynthesisConfig
from schemas.manifests import Manifest
from schemas.priors import AnomalyPrior, PriorsFile
from schemas.tables import SAMPLES
from storage.arrays import create_group, open_group, read_samples, write_sample
from storage.faults import crash_point
from storage.layout import RunLayout, provenance
from storage.parquet import read_parts, read_table, write_part
from tasks.common import artifact_key, cache_key
from tasks.progress import StageProgress

STAGE = "regenerate"
STAGE_VERSION = "1"
# few-shot samples only (zero-shot keys stay): 2: edge defects pasted on the foreground's edge, labels hole-filled
CUTPASTE_VERSION = "2"
COMMIT_EVERY = 4


def sample_rng(seed: int, category: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode()), index])


def category_key(config: RunConfig, priors: PriorsFile, category: str, support: Manifest) -> str:
    """Everything that decides this category's samples, and nothing that does not.

    The other categories' priors enter only when the scorer compares prompts across categories (clip-region),
    so editing one category's prior recomputes that category alone.
    """
    backend = config.synthesis.resolved_backend(config.setting)
    scorer = config.selection.resolved_scorer(backend)
    prior = priors.category(category)
    others = ""
    if scorer == "clip-region":
        others = "|".join(p.model_dump_json() for p in priors.categories if p.name != category)
    return cache_key(
        STAGE,
        STAGE_VERSION,
        prior.model_dump_json(),
        str(priors.names.index(category) + 1),
        config.setting,
        config.synthesis.model_dump_json(),
        config.selection.model_dump_json(),
        str(config.seed),
        str(config.image_size),
        support.content_hash,
        others,
        *([CUTPASTE_VERSION] if config.setting == "few_shot" else []),
    )


def _load_support(layout: RunLayout, support: Manifest) -> tuple[dict[str, np.ndarray], pl.DataFrame]:
    group = open_group(layout.root / support.uris["zarr"])
    rows = read_table(layout.root / support.uris["rows"])
    idx = np.arange(rows.height)
    return {name: read_samples(group, name, idx) for name in ("images", "masks", "foregrounds")}, rows


@functools.lru_cache(maxsize=4)
def _synthesizer(name: str, synthesis_json: str):
    """One backend per process and configuration: diffusion pipelines load once, not once per category."""
    from uniadc.synthesis.registry import get_synthesizer

    return get_synthesizer(name, SynthesisConfig.model_validate_json(synthesis_json))


def _selector(
    config: RunConfig,
    prior: AnomalyPrior,
    others: tuple[AnomalyPrior, ...],
    arrays: dict[str, np.ndarray],
    rows: pl.DataFrame,
):
    """A function rng -> SelectedSample for this category and setting."""
    from uniadc import selection
    from uniadc.synthesis.cutpaste import extract_regions
    from uniadc.synthesis.registry import get_scorer

    backend = config.synthesis.resolved_backend(config.setting)
    scorer = get_scorer(config.selection.resolved_scorer(backend), config.selection)
    labels = rows["label_index"].to_numpy()
    normal = labels == 0
    normals, fgs = arrays["images"][normal], arrays["foregrounds"][normal]
    syn = config.synthesis
    # diffusion backends render a sample's candidates in one call (they split on OOM themselves)
    batch = syn.masks_per_sample * len(syn.noise_factors) if backend in ("sd-inpaint", "brushnet") else 32
    if config.setting == "few_shot":
        label = rows.filter(pl.col("label_name") == prior.name)
        support_ids = np.flatnonzero((rows["label_name"] == prior.name).to_numpy())
        regions = []
        for i in support_ids:
            regions += extract_regions(
                arrays["images"][i],
                arrays["masks"][i],
                rows["image_id"][int(i)],
                syn.cutpaste,
                valid=arrays["foregrounds"][i],
            )
        if not regions:
            # every support defect is below min_region_px at this resolution (tiny blowholes at 256²):
            # use the largest component instead of failing, and say so in the log.
            tiny = syn.cutpaste.model_copy(update={"min_region_px": 1})
            for i in support_ids:
                regions += extract_regions(
                    arrays["images"][i],
                    arrays["masks"][i],
                    rows["image_id"][int(i)],
                    tiny,
                    valid=arrays["foregrounds"][i],
                )
            regions = sorted(regions, key=lambda r: int(r.mask.sum()))[-1:]
            print(
                f"{prior.name}: no support region of >= {syn.cutpaste.min_region_px} px; using the largest "
                f"({int(regions[0].mask.sum()) if regions else 0} px)"
            )
        if not regions:
            raise ValueError(
                f"category {prior.name!r}: the support images {label['image_id'].to_list()} have "
                f"empty defect masks at image_size {config.image_size}"
            )
        repaint = _synthesizer(
            "procedural" if backend in ("cutpaste", "procedural") else backend, syn.model_dump_json()
        )
        return lambda rng: selection.select_few_shot(
            normals,
            fgs,
            regions,
            prior,
            repaint,
            scorer,
            syn.masks_per_sample,
            syn.noise_factors,
            rng,
            syn.cutpaste,
            other_priors=others,
            batch_size=batch,
        )
    if backend == "cutpaste":
        raise ValueError("synthesis.backend: 'cutpaste' needs real anomalies (setting few_shot)")
    synthesizer = _synthesizer(backend, syn.model_dump_json())
    return lambda rng: selection.select_zero_shot(
        normals,
        fgs,
        prior,
        others,
        synthesizer,
        scorer,
        syn.masks_per_sample,
        syn.noise_factors,
        rng,
        batch_size=batch,
    )


def committed(rows_dir) -> pl.DataFrame:
    return read_parts(rows_dir, SAMPLES)


@task(name="regenerate-category", persist_result=True)
def regenerate_category(
    config: RunConfig, priors: PriorsFile, category: str, support: Manifest, key: str
) -> Manifest:
    """Synthesise and select ``synthesis.samples_per_category`` samples of ``category``; resumable."""
    layout = RunLayout.for_run(config)
    out = layout.stage_dir(STAGE, key, unit=category)
    n, size = config.synthesis.samples_per_category, config.image_size
    prior = priors.category(category)
    label = priors.names.index(category) + 1
    group = create_group(
        out / "samples.zarr",
        {
            "images": ((n, size, size, 3), "uint8"),
            "masks": ((n, size, size), "bool"),
            "class_masks": ((n, size, size), "uint8"),
        },
        attrs=provenance(
            config.to_json(),
            {"stage": STAGE, "category": category, "prior": prior.model_dump_json(), "cache_key": key},
        ),
    )
    done = set(committed(out / "samples")["zarr_index"].to_list())
    todo = [i for i in range(n) if i not in done]
    if todo:
        arrays, rows = _load_support(layout, support)
        others = tuple(p for p in priors.categories if p.name != category)
        select = _selector(config, prior, others, arrays, rows)
        source_ids = rows.filter(pl.col("label_index") == 0)["image_id"].to_list()
        config_hash = config.config_hash()
        label_text = f"regenerate-{category}"
        with StageProgress(
            artifact_key(config, f"{label_text}-progress"), label_text, n, unit="samples"
        ) as bar:
            bar.update(n - len(todo))
            for start in range(0, len(todo), COMMIT_EVERY):
                batch = todo[start : start + COMMIT_EVERY]
                cols: dict[str, list] = {name: [] for name in SAMPLES.names}
                for i in batch:
                    s = select(sample_rng(config.seed, category, i))
                    write_sample(
                        group, i, images=s.image, masks=s.mask, class_masks=s.mask.astype(np.uint8) * label
                    )
                    crash_point("sample-written")
                    bar.update(bar.done + 1)
                    for name, value in (
                        ("sample_id", f"{category}-{key[:12]}-{i:04d}"),
                        ("run_id", config.name),
                        ("category", category),
                        ("label_index", label),
                        ("split", "synthetic"),
                        ("source_image_id", source_ids[s.source_index]),
                        ("mask_type", s.mask_shape),
                        ("mask_size", s.mask_size),
                        ("seed", config.seed),
                        ("noise_factor", s.noise_factor),
                        ("selection_score", s.score),
                        ("zarr_index", i),
                        ("config_hash", config_hash),
                        ("created_at", dt.datetime.now(dt.UTC)),
                    ):
                        cols[name].append(value)
                write_part(out / "samples", batch[0], cols, SAMPLES)
                crash_point("part-committed")
    rows_df = committed(out / "samples").sort("zarr_index")
    if rows_df["zarr_index"].to_list() != list(range(n)):
        raise RuntimeError(f"{out}: committed samples {rows_df['zarr_index'].to_list()} are not 0..{n - 1}")
    digest = hashlib.sha256()
    for name in ("images", "masks"):
        digest.update(np.ascontiguousarray(group[name][:]).tobytes())
    return Manifest(
        stage=STAGE,
        key=category,
        run_dir=str(layout.root),
        uris={
            "zarr": str((out / "samples.zarr").relative_to(layout.root)),
            "rows": str((out / "samples").relative_to(layout.root)),
        },
        counts={
            "samples": n,
            "label_index": label,
            "mean_score_milli": int(round(1000 * float(rows_df["selection_score"].mean()))),
        },
        content_hash=digest.hexdigest(),
        cache_key=key,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
