"""Stage ``train``: the multi-task discriminator on support normals + selected synthetic defects.

Training data: the real normal support images, every selected synthetic sample of every category (with its
class mask), and in few-shot the real anomaly support images (kept in every batch). With
``discriminator.open_set`` a set of class-agnostic synthetic anomalies (all mask types, random appearance) is
added under the extra "other" class. No test image is read here. The model kept is the last iteration.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prefect import task

from schemas.config import RunConfig
from schemas.manifests import Manifest
from schemas.priors import AnomalyPrior, PriorsFile
from schemas.tables import SAMPLES
from storage.arrays import open_group, read_samples
from storage.checkpoints import checkpoint_digest, load_discriminator, save_discriminator
from storage.layout import RunLayout
from storage.parquet import read_parts, read_table
from tasks.common import artifact_key, cache_key, match_submitter_threads
from tasks.progress import StageProgress
from uniadc.augment import augment_with_views
from uniadc.discriminator import Discriminator, TrainingData, build_discriminator, restore_discriminator
from uniadc.discriminator import train_discriminator as fit

STAGE = "train"
STAGE_VERSION = "8"  # 7: the learned map's threshold fitted on the probe's held-out tile (calibration rule);
# 8: the edge-aware image score fitted on the support views' pictures
OPEN_SET_SAMPLES = 16


def train_key(config: RunConfig, priors: PriorsFile, support: Manifest, samples: Sequence[Manifest]) -> str:
    texts = "|".join(p.model_dump_json(include={"name", "descriptions"}) for p in priors.categories)
    return cache_key(
        STAGE,
        STAGE_VERSION,
        support.content_hash,
        *(m.content_hash for m in samples),
        texts,
        config.discriminator.model_dump_json(),
        str(config.seed),
        str(config.image_size),
        config.setting,
    )


def load_training_data(
    root: Path, support: Manifest, samples: Sequence[Manifest], few_shot: bool
) -> TrainingData:
    """Read the training arrays of a run through its manifests."""
    group = open_group(root / support.uris["zarr"])
    rows = read_table(root / support.uris["rows"])
    labels = rows["label_index"].to_numpy()
    idx_normal = np.flatnonzero(labels == 0)
    idx_real = np.flatnonzero(labels > 0) if few_shot else np.zeros(0, np.int64)
    normals = read_samples(group, "images", idx_normal)
    # stores written before the support stage kept ``valid`` have none: every pixel is picture there
    picture = read_samples(group, "valid", idx_normal) if "valid" in group else None
    source_of = {image_id: i for i, image_id in enumerate(rows["image_id"].to_numpy()[idx_normal])}
    images, masks, real, sources = [], [], [], []
    for m in samples:
        g = open_group(root / m.uris["zarr"])
        idx = np.arange(m.counts["samples"])
        images.append(read_samples(g, "images", idx))
        masks.append(read_samples(g, "class_masks", idx))
        real.append(np.zeros(len(idx), bool))
        ids = read_parts(root / m.uris["rows"], SAMPLES).sort("zarr_index")["source_image_id"].to_list()
        sources.append(np.array([source_of.get(i, -1) for i in ids], np.int64))
    if len(idx_real):
        images.append(read_samples(group, "images", idx_real))
        masks.append(read_samples(group, "class_masks", idx_real))
        real.append(np.ones(len(idx_real), bool))
        sources.append(np.full(len(idx_real), -1, np.int64))
    if not images:
        raise ValueError("no anomaly images to train on: no synthetic samples and no real anomaly support")
    anomalies = np.concatenate(images)
    return TrainingData(
        normals=normals,
        anomalies=anomalies,
        anomaly_masks=np.concatenate(masks),
        anomaly_is_real=np.concatenate(real),
        reference_images=normals,
        reference_valid=picture,
        normal_source=np.arange(len(normals), dtype=np.int64),
        normal_view=np.zeros(len(normals), np.int64),
        anomaly_source=np.concatenate(sources),
        anomaly_view=np.zeros(len(anomalies), np.int64),
    )


def class_agnostic_anomalies(
    config: RunConfig, normals: np.ndarray, foregrounds: np.ndarray, other_label: int
) -> tuple[np.ndarray, np.ndarray]:
    """Open-set training data: anomalies of every mask type and a random appearance, labelled ``other_label``."""
    from uniadc.selection import select_zero_shot
    from uniadc.synthesis.registry import get_scorer, get_synthesizer

    prior = AnomalyPrior(name="other", descriptions=("an anomaly",))
    synthesizer = get_synthesizer("procedural", config.synthesis)
    scorer = get_scorer("mask_fidelity", config.selection)
    images, masks = [], []
    for i in range(OPEN_SET_SAMPLES):
        rng = np.random.default_rng([config.seed, zlib.crc32(b"open-set"), i])
        s = select_zero_shot(
            normals, foregrounds, prior, (), synthesizer, scorer, 4, config.synthesis.noise_factors, rng
        )
        images.append(s.image)
        masks.append(s.mask.astype(np.uint8) * other_label)
    return np.stack(images), np.stack(masks)


def augment_training_data(data: TrainingData, config: RunConfig) -> TrainingData:
    """Seeded augmented copies of the normals and the anomalies (``uniadc.augment``)."""
    d = config.discriminator
    rng = np.random.default_rng([config.seed, zlib.crc32(b"augment")])
    normals, _, normal_views = augment_with_views(data.normals, None, d.augment_normal_copies, rng)
    anomalies, masks, anomaly_views = augment_with_views(
        data.anomalies, data.anomaly_masks, d.augment_anomaly_copies, rng
    )
    real = data.anomaly_is_real if data.anomaly_is_real is not None else np.zeros(len(data.anomalies), bool)
    ref, source, _ = data.sources()
    n = len(data.normals)
    return TrainingData(
        normals=normals,
        anomalies=anomalies,
        anomaly_masks=masks,
        anomaly_is_real=np.tile(real, 1 + d.augment_anomaly_copies),
        reference_images=ref,
        reference_valid=data.reference_valid,
        normal_source=np.tile(source[:n], 1 + d.augment_normal_copies),
        normal_view=normal_views,
        anomaly_source=np.tile(source[n:], 1 + d.augment_anomaly_copies),
        anomaly_view=anomaly_views,
    )


def load_model(path: str | Path) -> Discriminator:
    ckpt = load_discriminator(path)
    return restore_discriminator(
        ckpt.state, ckpt.config, ckpt.category_texts, ckpt.image_size, ckpt.seed, ckpt.backbone_sha256
    )


@task(name="train", persist_result=True)
def train_model(
    config: RunConfig, priors: PriorsFile, support: Manifest, samples: list[Manifest], key: str
) -> Manifest:
    """Train the discriminator for ``discriminator.iterations`` and save the last iteration."""
    match_submitter_threads(config)
    layout = RunLayout.for_run(config)
    data = load_training_data(layout.root, support, samples, few_shot=config.setting == "few_shot")
    if config.discriminator.open_set:
        group = open_group(layout.root / support.uris["zarr"])
        labels = read_table(layout.root / support.uris["rows"])["label_index"].to_numpy()
        fgs = read_samples(group, "foregrounds", np.flatnonzero(labels == 0))
        extra, extra_masks = class_agnostic_anomalies(config, data.normals, fgs, len(priors.categories) + 1)
        real = (
            data.anomaly_is_real if data.anomaly_is_real is not None else np.zeros(len(data.anomalies), bool)
        )
        ref, source, view = data.sources()
        n = len(data.normals)
        data = TrainingData(
            normals=data.normals,
            anomalies=np.concatenate([data.anomalies, extra]),
            anomaly_masks=np.concatenate([data.anomaly_masks, extra_masks]),
            anomaly_is_real=np.concatenate([real, np.zeros(len(extra), bool)]),
            reference_images=ref,
            reference_valid=data.reference_valid,
            normal_source=source[:n],
            normal_view=view[:n],
            # the open-set samples are rendered into random support normals: compare them with no exclusion
            anomaly_source=np.concatenate([source[n:], np.full(len(extra), -1, np.int64)]),
            anomaly_view=np.concatenate([view[n:], np.zeros(len(extra), np.int64)]),
        )
    data = augment_training_data(data, config)
    model = build_discriminator(
        config.discriminator,
        [list(p.descriptions) for p in priors.categories],
        config.image_size,
        config.seed,
    )
    iterations = config.discriminator.iterations
    with StageProgress(artifact_key(config, "train-progress"), "train", iterations, unit="it") as bar:
        history = fit(
            model,
            data,
            config.discriminator,
            config.seed,
            progress=lambda it, loss: bar.update(it, loss=loss),
        )
    out = layout.stage_dir(STAGE, key) / "model.safetensors"
    save_discriminator(out, model, priors.names)
    digest = checkpoint_digest(out)
    return Manifest(
        stage=STAGE,
        run_dir=str(layout.root),
        uris={"checkpoint": str(out.relative_to(layout.root))},
        counts={
            "iterations": len(history),
            "normals": len(data.normals),
            "anomalies": len(data.anomalies),
            "final_loss_milli": int(round(1000 * float(np.mean(history[-10:])))),
        },
        content_hash=digest,
        cache_key=key,
    )
