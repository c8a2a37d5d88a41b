"""The anomaly decision threshold, fitted on training data only.

Inputs are reference distance maps of training images computed leave-one-out (``bank.nearest_distances``
with the image's own source excluded), so their normal regions are as far from the bank as a new normal
tile's: the real normal support views and the synthetic defect samples with their masks. No test image is an
input. The threshold ``tau`` separates the image-level scores of the two groups: the maximum of each normal
map, and the maximum inside the mask of each synthetic sample. ``rule``:

- ``balanced``: the tau maximising (share of normal maps below tau + share of synthetic defects at or above
  tau) / 2, the midpoint of the best interval (ties: the lowest such interval);
- ``normal_max``: the largest normal score (no normal training view fires; conservative).

The calibrated map is ``sigmoid((D - tau) / scale)``: 0.5 exactly at tau, so the run's decision threshold
0.5 means tau. ``scale`` = (largest normal score - median normal pixel) / ln 19, the spread of the normal maps
(the map is stored as float32: a slope set by tau alone could saturate it and tie the scores).

The normal maps are the eight dihedral views of each support normal, each against the bank without its own
source image (k >= 2) or without its own view (k = 1): the geometry of a new tile, none of the photometric
augmentation the training copies carry (which inflates the leave-one-out distances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Rule = Literal["balanced", "normal_max"]


@dataclass(frozen=True)
class Calibration:
    """tau and scale of the calibrated map, and what they were fitted on."""

    threshold: float
    scale: float
    rule: str
    normal_scores: int
    anomaly_scores: int

    def apply(self, distances: np.ndarray) -> np.ndarray:
        z = (np.asarray(distances, np.float64) - self.threshold) / self.scale
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)


def _balanced_threshold(normal: np.ndarray, anomaly: np.ndarray) -> float:
    """tau maximising (TNR + TPR) / 2 over image scores; ties go to the largest tau (fewer false alarms)."""
    values = np.unique(np.concatenate([normal, anomaly]))
    top = values[-1] + max(1e-6, 1e-6 * abs(values[-1]))
    cand = np.append(values, top)  # firing means score >= t; ``top`` fires on nothing
    tnr = np.searchsorted(np.sort(normal), cand, side="left") / len(normal)
    tpr = 1.0 - np.searchsorted(np.sort(anomaly), cand, side="left") / len(anomaly)
    score = tnr + tpr
    j = int(np.flatnonzero(score >= score.max() - 1e-12)[-1])
    if j == 0:
        return float(cand[0])
    return float((cand[j - 1] + cand[j]) / 2.0) if j < len(values) else float(top)


def fit_calibration(
    normal_maps: np.ndarray,
    anomaly_maps: np.ndarray | None = None,
    anomaly_masks: np.ndarray | None = None,
    rule: Rule = "balanced",
) -> Calibration:
    """Fit tau and scale from leave-one-out training maps.

    Args:
        normal_maps: (N, H, W) distance maps of normal training views (N >= 1).
        anomaly_maps: (M, H, W) distance maps of synthetic defect samples, or None.
        anomaly_masks: (M, H, W) bool/int defect masks of those samples.
        rule: ``balanced`` (needs anomalies with non-empty masks; otherwise falls back to ``normal_max``)
            or ``normal_max``.
    """
    normal_maps = np.asarray(normal_maps, np.float64)
    if normal_maps.ndim != 3 or normal_maps.shape[0] == 0:
        raise ValueError(f"normal_maps must be (N >= 1, H, W), got {normal_maps.shape}")
    normal = normal_maps.reshape(len(normal_maps), -1).max(axis=1)
    anomaly = np.zeros(0)
    if anomaly_maps is not None and len(anomaly_maps):
        if anomaly_masks is None or np.shape(anomaly_masks) != np.shape(anomaly_maps):
            raise ValueError("anomaly_masks must match anomaly_maps")
        m = np.asarray(anomaly_masks).reshape(len(anomaly_maps), -1) > 0
        d = np.asarray(anomaly_maps, np.float64).reshape(len(anomaly_maps), -1)
        anomaly = np.array([d[i][m[i]].max() for i in range(len(d)) if m[i].any()])
    used = rule if len(anomaly) else "normal_max"
    if used == "balanced":
        tau = _balanced_threshold(normal, anomaly)
    elif used == "normal_max":
        tau = float(normal.max())
    else:
        raise ValueError(f"rule must be balanced or normal_max, got {rule!r}")
    # the spread of the normal scores sets the slope, so the calibrated map neither saturates nor flattens
    median = float(np.median(normal_maps))
    scale = max((float(normal.max()) - median) / math.log(19.0), 1e-3)
    return Calibration(tau, scale, used, len(normal), len(anomaly))
