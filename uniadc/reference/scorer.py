"""The normal reference as an ``nn.Module``: bank buffers + calibration, saved inside the checkpoint."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from uniadc.reference.bank import (
    ReferenceBank,
    build_bank,
    dense_distances,
    embed_levels,
    nearest_distances,
)
from uniadc.reference.calibration import Calibration
from uniadc.reference.edge import NUM_BANDS, edge_weighted_max
from uniadc.reference.maps import distance_map

# buffers added after checkpoints were first written: a checkpoint without them loads with these unset
OPTIONAL_BUFFERS = ("edge_gain", "image_threshold", "image_scale")


class ReferenceScorer(nn.Module):
    """Nearest-neighbour reference over the dihedral views of the support normals.

    Buffers (``bank_l``, ``owner_l``, ``view_l``, ``coords_l`` per level; ``threshold``, ``scale``,
    ``normal_max``) are part of the model's state, so a checkpoint carries its bank and its calibration.
    ``threshold`` is NaN until calibrated. ``edge_gain``, ``image_threshold`` and ``image_scale`` (NaN: unset)
    hold the edge-aware image score (``uniadc.reference.edge``) and its own calibration.
    """

    def __init__(self, bank: ReferenceBank) -> None:
        super().__init__()
        self.num_levels = len(bank.levels)
        for i, (b, o, v, c) in enumerate(zip(bank.levels, bank.owners, bank.views, bank.coords, strict=True)):
            self.register_buffer(f"bank_{i}", b.float().contiguous())
            self.register_buffer(f"owner_{i}", o.long())
            self.register_buffer(f"view_{i}", v.long())
            self.register_buffer(f"coords_{i}", c.float())
        self.register_buffer("threshold", torch.tensor(math.nan))
        self.register_buffer("scale", torch.tensor(1.0))
        # the ``normal_max`` tau (largest leave-one-out normal score), kept for reports and the kNN baseline
        self.register_buffer("normal_max", torch.tensor(math.nan))
        # finite: the model's anomaly map is its learned map, shifted so 0.5 is this logit (detector_choice)
        self.register_buffer("learned_tau_logit", torch.tensor(math.nan))
        # held-out support tile: pixel AUROC of the learned and the reference map, learned map's max on its
        # normal views (NaN: no probe)
        self.register_buffer("probe", torch.tensor([math.nan, math.nan, math.nan]))
        self.register_buffer("edge_gain", torch.full((NUM_BANDS,), math.nan))
        self.register_buffer("image_threshold", torch.tensor(math.nan))
        self.register_buffer("image_scale", torch.tensor(1.0))

    @classmethod
    def from_features(
        cls, view_features: list[Tensor], owner: np.ndarray, view: np.ndarray
    ) -> ReferenceScorer:
        """From backbone features of the views (``views.dihedral_views`` of the support normals)."""
        return cls(build_bank(embed_levels(view_features), torch.from_numpy(owner), torch.from_numpy(view)))

    @classmethod
    def empty_like_state(cls, state: dict[str, Tensor], prefix: str = "reference.") -> ReferenceScorer:
        """A scorer with the buffer shapes found in ``state`` (to load a checkpoint into)."""
        n = sum(1 for k in state if k.startswith(prefix + "bank_"))
        if n == 0:
            raise ValueError(f"no {prefix}bank_* tensors in the state")
        return cls(
            ReferenceBank(
                [torch.zeros_like(state[f"{prefix}bank_{i}"]) for i in range(n)],
                [torch.zeros_like(state[f"{prefix}owner_{i}"]) for i in range(n)],
                [torch.zeros_like(state[f"{prefix}view_{i}"]) for i in range(n)],
                [torch.zeros_like(state[f"{prefix}coords_{i}"]) for i in range(n)],
            )
        )

    def bank(self) -> ReferenceBank:
        return ReferenceBank(
            [getattr(self, f"bank_{i}") for i in range(self.num_levels)],
            [getattr(self, f"owner_{i}") for i in range(self.num_levels)],
            [getattr(self, f"view_{i}") for i in range(self.num_levels)],
            [getattr(self, f"coords_{i}") for i in range(self.num_levels)],
        )

    @property
    def uses_learned(self) -> bool:
        return bool(torch.isfinite(self.learned_tau_logit))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.threshold))

    def set_calibration(self, calibration: Calibration, normal_max: float) -> None:
        self.threshold.fill_(calibration.threshold)
        self.scale.fill_(calibration.scale)
        self.normal_max.fill_(normal_max)

    @property
    def has_edge_score(self) -> bool:
        return bool(torch.isfinite(self.image_threshold)) and bool(torch.isfinite(self.edge_gain).all())

    def set_edge_score(self, gain: np.ndarray, calibration: Calibration) -> None:
        """Band gains and the image threshold/scale fitted on the gain-weighted leave-one-out maps."""
        self.edge_gain.copy_(torch.as_tensor(np.asarray(gain, np.float32)))
        self.image_threshold.fill_(calibration.threshold)
        self.image_scale.fill_(calibration.scale)

    def distances_from_calibrated(self, maps: np.ndarray) -> np.ndarray:
        """Invert :meth:`calibrated_map`: calibrated maps in (0, 1) -> distances (the map never saturates:
        its slope is set so that distances up to 2, the largest between unit vectors, stay inside float32)."""
        a = np.clip(np.asarray(maps, np.float64), 1e-12, 1.0 - 1e-7)
        return (float(self.threshold) + float(self.scale) * (np.log(a) - np.log1p(-a))).astype(np.float32)

    def edge_image_scores(self, dmaps: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated edge-aware image scores of (N, H, W) distance maps (0.5 at the image threshold) and the
        flat index of each image's weighted maximum."""
        if not self.has_edge_score:
            raise ValueError(
                "the reference has no edge-aware image score (image_score: edge, after training)"
            )
        top, at = edge_weighted_max(dmaps, valid, self.edge_gain.numpy())
        z = (top.astype(np.float64) - float(self.image_threshold)) / float(self.image_scale)
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32), at

    def calibrated_map(self, dmap: Tensor) -> Tensor:
        return torch.sigmoid(self.logit(dmap))

    def distances(
        self,
        features: list[Tensor],
        exclude_owner: Tensor | None = None,
        exclude_view: Tensor | None = None,
        radius: float | None = None,
    ) -> list[Tensor]:
        """Per-level nearest-neighbour distances (B, h_l, w_l) of backbone features: to the whole bank
        (``bank.dense_distances``, the traceable inference path) or leaving out what the arguments name
        (``bank.nearest_distances``, for training)."""
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(features)}")
        if exclude_owner is None and exclude_view is None and radius is None:
            return dense_distances(self.bank(), embed_levels(features))
        return nearest_distances(self.bank(), embed_levels(features), exclude_owner, exclude_view, radius)

    def distance_map(self, distances: list[Tensor], size: tuple[int, int]) -> Tensor:
        return distance_map(distances, size)

    def logit(self, dmap: Tensor) -> Tensor:
        """Calibrated anomaly logit ``(D - tau) / scale``; sigmoid of it is 0.5 at tau."""
        if not self.calibrated:
            raise ValueError("the reference is not calibrated (fit_calibration after training)")
        return (dmap - self.threshold) / self.scale
