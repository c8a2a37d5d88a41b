"""Which anomaly map a reference-aware discriminator uses, decided on support tiles it never trained on.

The learned map (mean of the class maps) wins where the synthetic defects resemble the real ones and the
test tiles resemble the support tiles; the nearest-neighbour reference wins where they do not (MTD: the
learned head fires on almost every unseen tile). Neither can be told from the training images the head has
seen, so with ``k_normal >= 2`` *probe* models are trained, each without one support tile and everything
made from it, and both maps are scored on the held-out tile: its eight dihedral views (normal) and the
synthetic samples rendered into it (defects, pixel labels = their masks). With ``k_normal >= 3`` the last
``PROBES`` tiles are held out in turn (one probe each) and the evidence is pooled: one tile is too little to
trust the learned map with (MTD few-shot (4, 1), test seed 2: the learned map stayed at 0.34 on the one
held-out tile, then left about 30 points fewer normal test tiles clean than the reference). The learned map
is kept only when both hold:

- it separates the held-out synthetic defects from the held-out normal views better (higher pixel AUROC);
- it does not fire on an unseen normal tile at the paper's threshold: its maximum over every held-out view is
  below 0.5. A head that calls a normal tile it has never seen defective has learned the support tiles, not
  normality; that it still ranks *synthetic* defects well says little about real ones (MTD dev seeds: held-out
  AUROC learned 66-67 vs reference 56-65, yet on the real test the reference wins by 25 I-AUC points, and the
  learned map reaches 0.9995 on the held-out normal views; on the demo it stays at 0.1).

Otherwise the reference is used (and always with one support tile: nothing can be held out). The learned
map's threshold is fitted on the same held-out maps with the run's calibration rule
(``discriminator.calibration``, :mod:`uniadc.reference.calibration`): ``normal_max`` = the largest score of
the held-out normal views, ``balanced`` = the best separation of those views from the held-out synthetic
defects. No test image is an input.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from schemas.config import DiscriminatorConfig
from uniadc.discriminator.model import Discriminator, anomaly_logit_from_class_logits, image_features
from uniadc.metrics import pixel_auc
from uniadc.reference import dihedral_views
from uniadc.reference.calibration import fit_calibration

PROBES = 2  # support tiles held out in turn (one probe each) when k_normal >= 3


@dataclass(frozen=True)
class DetectorChoice:
    """The decision and what it rests on (AUROCs are NaN when no probe was trained)."""

    use_learned: bool
    learned_tau_logit: float
    auc_learned: float
    auc_reference: float
    held_out_max: float
    validation_images: int
    probes: int = 0


@dataclass(frozen=True)
class _HeldOut:
    """Both maps of one probe on its held-out tile; the first ``views`` images are its normal views."""

    learned: np.ndarray
    reference: np.ndarray
    masks: np.ndarray
    views: int


def _maps(model: Discriminator, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(learned probability maps, reference distance maps) at the model's image size."""
    size = (model.image_size, model.image_size)
    learned, reference = [], []
    with torch.inference_mode():
        for s in range(0, len(images), 16):
            feats = image_features(model, images[s : s + 16])
            dist = model.reference_distances(feats)
            logits = torch.nn.functional.interpolate(
                model.grid_logits(feats, dist), size=size, mode="bilinear", align_corners=False
            )
            learned.append(torch.sigmoid(anomaly_logit_from_class_logits(logits)).numpy())
            reference.append(model.reference.distance_map(dist, size).numpy())
    return np.concatenate(learned), np.concatenate(reference)


def _probe(model, data, config, seed, train, held: int) -> _HeldOut | None:
    """Train a probe without support tile ``held`` (and what was made from it); its maps on that tile."""
    from uniadc.discriminator.training import TrainingData, _resize_masks

    ref_images, source, view = data.sources()
    k = len(ref_images)
    n = data.normals.shape[0]
    n_src, a_src = source[:n], source[n:]
    val = a_src == held
    if not val.any():
        return None
    keep_n, keep_a = n_src != held, a_src != held
    real = data.anomaly_is_real if data.anomaly_is_real is not None else np.zeros(len(a_src), bool)
    kept = np.array([i for i in range(k) if i != held], np.int64)
    remap = np.full(k, -1, np.int64)
    remap[kept] = np.arange(len(kept))

    def sub(src: np.ndarray) -> np.ndarray:
        return np.where(src >= 0, remap[np.clip(src, 0, None)], -1).astype(np.int64)

    probe_data = TrainingData(
        normals=data.normals[keep_n],
        anomalies=data.anomalies[keep_a],
        anomaly_masks=data.anomaly_masks[keep_a],
        anomaly_is_real=real[keep_a],
        reference_images=ref_images[kept],
        reference_valid=data.picture()[kept],
        normal_source=sub(n_src[keep_n]),
        normal_view=view[:n][keep_n],
        anomaly_source=sub(a_src[keep_a]),
        anomaly_view=view[n:][keep_a],
    )
    probe = copy.deepcopy(model)
    train(probe, probe_data, config.model_copy(update={"detector": "reference"}), seed)
    views = dihedral_views(ref_images[held : held + 1])[0]
    images = np.concatenate([views, data.anomalies[val]])
    masks = np.concatenate(
        [
            np.zeros(views.shape[:3], bool),
            _resize_masks(data.anomaly_masks[val], model.image_size).numpy() > 0,
        ]
    )
    learned, reference = _maps(probe, images)
    return _HeldOut(learned, reference, masks, len(views))


def choose_detector(
    model: Discriminator,
    data,
    config: DiscriminatorConfig,
    seed: int,
    train: Callable[[Discriminator, object, DiscriminatorConfig, int], object],
) -> DetectorChoice:
    """Train probes without the last support tiles and compare both maps on them (see module doc).

    Args:
        model: the untrained model (copied, not changed).
        data: the (augmented) ``TrainingData`` with its sources.
        config: the training config; the probes use ``detector="reference"`` to avoid recursion.
        seed: training seed of the probes.
        train: the training function (``training._train``), passed in to keep imports one way.
    """
    none = DetectorChoice(False, 0.0, math.nan, math.nan, math.nan, 0)
    k = len(data.sources()[0])
    held = [k - 1 - i for i in range(min(PROBES, k - 1))]
    outs = [o for o in (_probe(model, data, config, seed, train, h) for h in held) if o is not None]
    if not outs:
        return none
    learned = np.concatenate([o.learned for o in outs])
    reference = np.concatenate([o.reference for o in outs])
    masks = np.concatenate([o.masks for o in outs])
    normal = np.concatenate([np.arange(len(o.masks)) < o.views for o in outs])
    auc_l, auc_r = pixel_auc(learned, masks), pixel_auc(reference, masks)
    held_max = float(learned[normal].max())
    fit = fit_calibration(learned[normal], learned[~normal], masks[~normal], config.calibration)
    tau = float(np.clip(fit.threshold, 1e-6, 1 - 1e-6))
    use = bool(auc_l > auc_r and held_max < 0.5)
    return DetectorChoice(use, math.log(tau / (1 - tau)), auc_l, auc_r, held_max, len(learned), len(outs))
