"""Training the discriminator on cached backbone features (paper §3.4; official schedule).

The backbone is frozen and there is no augmentation, so the features of every training image are computed
once and only the fusion network, the text projection, the scale and the "other" embedding are trained.
AdamW, poly learning-rate decay ``(1 - it / T) ** 0.9`` per iteration, a fixed number of iterations; the
model kept is the last iteration (no validation, no test image).

Batches: the real images (normal support images and, few-shot, real anomaly support images) fill at most half
of each batch (all of them when they fit, as the official sampler does), synthetic anomalies the rest; both
pools are walked through seeded permutations, so every image is seen equally often.

With a reference (``config.reference == "knn"``) the bank is built first from the dihedral views of the real
support normals. Every training image then gets its distance channels **leave-one-out**: an image made from
support image i (a normal view, an augmented copy, a synthetic defect rendered into it) is compared with a
bank without image i's patches; with a single support image, without the patches of that image (in any of
its eight views) that came from within half a side of the query location. Normal regions of training images
are therefore about as far from the bank as those of an unseen normal tile, and the model cannot learn "zero
distance = normal". The same leave-one-out maps of the support views calibrate the anomaly threshold
(``uniadc.reference.calibration``; docs/reference.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from schemas.config import DiscriminatorConfig
from uniadc.discriminator.losses import grid_loss
from uniadc.discriminator.model import Discriminator, image_features
from uniadc.reference import (
    ReferenceScorer,
    dihedral_masks,
    dihedral_view,
    dihedral_views,
    fit_calibration,
    fit_edge_gain,
    weighted_maps,
)


@dataclass(frozen=True)
class TrainingData:
    """Training images and their class masks.

    Attributes:
        normals: (N, H, W, 3) uint8 real normal support images (N may be 0).
        anomalies: (M, H, W, 3) uint8 anomaly images (synthetic, plus real support images in few-shot).
        anomaly_masks: (M, H, W) uint8 class maps: 0 normal, k in 1..K category k, K + 1 "other"
            (class-agnostic synthetic anomalies, open-set mode only).
        anomaly_is_real: optional (M,) bool, True for real anomaly support images (kept in every batch).
        reference_images: optional (k, H, W, 3) uint8 support normals for the reference bank (default: the
            ``normals`` themselves, each its own source).
        normal_source, anomaly_source: optional (N,) / (M,) int64 index into ``reference_images`` of the
            image each training image was made from (-1: none, e.g. a real anomaly).
        normal_view, anomaly_view: optional (N,) / (M,) int64 dihedral view the image was made in (0: as is).
        reference_valid: optional (k, H, W) bool, the picture pixels of each reference image (False on
            letterbox padding; default: all of them), for the edge-aware image score.
    """

    normals: np.ndarray
    anomalies: np.ndarray
    anomaly_masks: np.ndarray
    anomaly_is_real: np.ndarray | None = None
    reference_images: np.ndarray | None = None
    normal_source: np.ndarray | None = None
    normal_view: np.ndarray | None = None
    anomaly_source: np.ndarray | None = None
    anomaly_view: np.ndarray | None = None
    reference_valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("normals", "anomalies"):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
                raise ValueError(
                    f"{name} must be an (n, H, W, 3) uint8 array, got "
                    f"{getattr(a, 'shape', None)} {getattr(a, 'dtype', type(a).__name__)}"
                )
        m = self.anomalies.shape[0]
        if m == 0:
            raise ValueError("anomalies must hold at least one image, got 0")
        masks = self.anomaly_masks
        if (
            not isinstance(masks, np.ndarray)
            or masks.dtype != np.uint8
            or masks.shape != self.anomalies.shape[:3]
        ):
            raise ValueError(
                f"anomaly_masks must be a uint8 array of shape {self.anomalies.shape[:3]}, got "
                f"{getattr(masks, 'shape', None)} {getattr(masks, 'dtype', None)}"
            )
        if self.normals.shape[0] and self.normals.shape[1:3] != self.anomalies.shape[1:3]:
            raise ValueError(
                f"normals size {self.normals.shape[1:3]} differs from anomalies size "
                f"{self.anomalies.shape[1:3]}"
            )
        real = self.anomaly_is_real
        if real is not None and (
            not isinstance(real, np.ndarray) or real.dtype != bool or real.shape != (m,)
        ):
            raise ValueError(
                f"anomaly_is_real must be None or a ({m},) bool array, got "
                f"{getattr(real, 'shape', None)} {getattr(real, 'dtype', None)}"
            )
        n = self.normals.shape[0]
        for name, length in (
            ("normal_source", n),
            ("normal_view", n),
            ("anomaly_source", m),
            ("anomaly_view", m),
        ):
            a = getattr(self, name)
            if a is not None and (not isinstance(a, np.ndarray) or a.shape != (length,)):
                raise ValueError(
                    f"{name} must be None or a ({length},) int array, got {getattr(a, 'shape', a)}"
                )
        ref = self.reference_images
        if ref is not None and (
            ref.dtype != np.uint8 or ref.ndim != 4 or ref.shape[1:] != self.anomalies.shape[1:]
        ):
            raise ValueError(f"reference_images must be (k, H, W, 3) uint8 like anomalies, got {ref.shape}")
        k = len(ref) if ref is not None else n
        for name in ("normal_source", "anomaly_source"):
            a = getattr(self, name)
            if a is not None and len(a) and (a.min() < -1 or a.max() >= k):
                raise ValueError(f"{name} values must be -1 or indices below {k}")

    def sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reference images, source (N + M,), view (N + M,)) with the documented defaults filled in."""
        n, m = self.normals.shape[0], self.anomalies.shape[0]
        ref = self.reference_images if self.reference_images is not None else self.normals
        ns = self.normal_source if self.normal_source is not None else np.arange(n)
        if self.reference_images is None and self.normal_source is not None:
            raise ValueError("normal_source needs reference_images")
        a_s = self.anomaly_source if self.anomaly_source is not None else np.full(m, -1)
        nv = self.normal_view if self.normal_view is not None else np.zeros(n, np.int64)
        av = self.anomaly_view if self.anomaly_view is not None else np.zeros(m, np.int64)
        return ref, np.concatenate([ns, a_s]).astype(np.int64), np.concatenate([nv, av]).astype(np.int64)

    def picture(self) -> np.ndarray:
        """(k, H, W) bool picture pixels of the reference images (all True where not given)."""
        ref = self.sources()[0]
        if self.reference_valid is None:
            return np.ones(ref.shape[:3], bool)
        if np.shape(self.reference_valid) != ref.shape[:3]:
            raise ValueError(f"reference_valid must be {ref.shape[:3]}, got {np.shape(self.reference_valid)}")
        return np.asarray(self.reference_valid, bool)


class _Cycler:
    """Walks seeded permutations of ``pool`` indices, ``take(k)`` at a time.

    Every index appears once per pass and never twice in one ``take``: when a take straddles two passes,
    the indices it already holds are moved to the end of the next pass.
    """

    def __init__(self, pool: np.ndarray, generator: torch.Generator) -> None:
        self.pool, self.generator, self.queue = pool, generator, np.empty(0, dtype=np.int64)

    def take(self, k: int) -> np.ndarray:
        if k >= len(self.pool):
            return self.pool.copy()
        out, self.queue = self.queue[:k], self.queue[k:]
        if len(out) < k:
            perm = self.pool[torch.randperm(len(self.pool), generator=self.generator).numpy()]
            held = np.isin(perm, out)
            fresh, need = perm[~held], k - len(out)
            out = np.concatenate([out, fresh[:need]])
            self.queue = np.concatenate([fresh[need:], perm[held]])
        return out


class BatchSampler:
    """Index batches over [normals..., anomalies...]: real images up to half the batch, synthetic the rest."""

    def __init__(
        self, num_normals: int, anomaly_is_real: np.ndarray, batch_size: int, generator: torch.Generator
    ) -> None:
        real = np.concatenate([np.arange(num_normals), num_normals + np.flatnonzero(anomaly_is_real)])
        synthetic = num_normals + np.flatnonzero(~anomaly_is_real)
        if len(synthetic) == 0:
            self.real_slots = batch_size
        else:
            self.real_slots = min(len(real), batch_size // 2)
        self.synthetic_slots = batch_size - self.real_slots
        self.real = _Cycler(real.astype(np.int64), generator)
        self.synthetic = _Cycler(synthetic.astype(np.int64), generator)

    def next(self) -> np.ndarray:
        parts = [self.real.take(self.real_slots)] if self.real_slots else []
        if self.synthetic_slots and len(self.synthetic.pool):
            parts.append(self.synthetic.take(self.synthetic_slots))
        return np.sort(np.concatenate(parts))


def poly_factor(iteration: int, total: int, power: float = 0.9) -> float:
    """Poly learning-rate factor ``(1 - iteration / total) ** power``."""
    return (1.0 - iteration / total) ** power


def _resize_masks(masks: np.ndarray, size: int) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(masks))
    if t.shape[-2:] == (size, size):
        return t.clone()
    return F.interpolate(t[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].to(torch.uint8)


def train_discriminator(
    model: Discriminator,
    data: TrainingData,
    config: DiscriminatorConfig,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train the fusion network and embeddings in place; the last iteration's model is kept.

    Args:
        model: from :func:`build_discriminator`.
        data: training images and masks (resized to ``model.image_size``).
        config: schedule (iterations, batch_size, lr, weight_decay, cls_weight, grad_clip, num_threads).
        seed: seeds batch sampling.
        progress: optional callback ``progress(iterations_done, loss)`` after every iteration.

    Returns:
        The loss of every iteration (``config.iterations`` floats). The model is left in eval mode.
    """
    max_label = int(data.anomaly_masks.max())
    known = model.num_classes - int(model.config.open_set)
    if max_label > model.num_classes:
        hint = "" if model.config.open_set else f" (label {known + 1} = 'other' needs open_set=True)"
        raise ValueError(f"anomaly_masks hold label {max_label} but the model has {known} categories{hint}")
    if config.batch_size < 2 and data.normals.shape[0]:
        raise ValueError(
            f"config.batch_size must be >= 2 to mix real and synthetic images, got {config.batch_size}"
        )
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(model, data, config, seed, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    model: Discriminator,
    data: TrainingData,
    config: DiscriminatorConfig,
    seed: int,
    progress: Callable[[int, float], None] | None,
) -> list[float]:
    size = model.image_size
    model.eval()
    images = np.concatenate([data.normals, data.anomalies]) if data.normals.shape[0] else data.anomalies
    features = image_features(model, images)
    masks = torch.cat(
        [
            torch.zeros((data.normals.shape[0], size, size), dtype=torch.uint8),
            _resize_masks(data.anomaly_masks, size),
        ]
    )
    is_real = (
        data.anomaly_is_real if data.anomaly_is_real is not None else np.zeros(len(data.anomalies), bool)
    )
    distances = None
    choice = None
    if model.config.reference == "knn" and config.detector != "reference":
        from uniadc.discriminator.detector_choice import choose_detector

        choice = choose_detector(model, data, config, seed, lambda m, d, c, s: _train(m, d, c, s, None))
    if model.config.reference == "knn":
        distances = fit_reference(model, data, features, masks, config)
        if choice is not None:
            model.reference.probe.copy_(
                torch.tensor([choice.auc_learned, choice.auc_reference, choice.held_out_max])
            )
            if choice.use_learned or config.detector == "learned":
                model.reference.learned_tau_logit.fill_(choice.learned_tau_logit)
    generator = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(data.normals.shape[0], is_real, config.batch_size, generator)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda it: poly_factor(it, config.iterations))
    history: list[float] = []
    model.train()
    try:
        for it in range(config.iterations):
            idx = torch.from_numpy(sampler.next())
            logits = model.grid_logits(
                [f[idx] for f in features], None if distances is None else [d[idx] for d in distances]
            )
            loss = grid_loss(logits, masks[idx].long(), config.cls_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimiser.step()
            schedule.step()
            history.append(float(loss.detach()))
            if progress is not None:
                progress(it + 1, history[-1])
    finally:
        model.eval()
    return history


SPATIAL_RADIUS = 0.5  # k = 1: a query is matched only by parts of its tile at least half a side away


def leave_one_out_distances(
    reference: ReferenceScorer, features: list[Tensor], source: np.ndarray, view: np.ndarray, k: int
) -> list[Tensor]:
    """Distances of training images to the bank without their own source image.

    k >= 2: every patch of the source image is left out. k = 1: leaving the only image out leaves nothing,
    and leaving out only the identical view leaves the same pixels rotated (near-zero distances, far below a
    new tile's); so the patches of the source that came from within ``SPATIAL_RADIUS`` of the query
    location, in any view, are left out, and a location is matched by the distant half of its own tile.
    """
    owner = torch.from_numpy(source)
    spatial = k == 1
    exclude_view = torch.from_numpy(view if spatial else np.full(len(view), -1, np.int64))
    radius = SPATIAL_RADIUS if spatial else None
    chunks = [
        reference.distances(
            [f[s : s + 64] for f in features], owner[s : s + 64], exclude_view[s : s + 64], radius
        )
        for s in range(0, len(source), 64)
    ]
    return [torch.cat(level) for level in zip(*chunks, strict=True)]


def fit_reference(
    model: Discriminator,
    data: TrainingData,
    features: list[Tensor],
    masks: Tensor,
    config: DiscriminatorConfig,
) -> list[Tensor]:
    """Build the bank, compute leave-one-out distances of every training image, calibrate; returns distances."""
    ref_images, source, view = data.sources()
    if len(ref_images) == 0:
        raise ValueError("reference='knn' needs at least one normal support image for its bank")
    views, owner, view_index = dihedral_views(ref_images)
    view_features = image_features(model, views)
    model.reference = ReferenceScorer.from_features(view_features, owner, view_index)
    k = len(ref_images)
    distances = leave_one_out_distances(model.reference, features, source, view, k)
    size = (model.image_size, model.image_size)

    def maps(dist: list[Tensor]) -> np.ndarray:
        m = len(dist[0])
        parts = [model.reference.distance_map([d[s : s + 64] for d in dist], size) for s in range(0, m, 64)]
        return torch.cat(parts).numpy()

    n = data.normals.shape[0]
    normal_maps = maps(leave_one_out_distances(model.reference, view_features, owner, view_index, k))
    anomaly_maps = maps([d[n:] for d in distances])
    calibration = fit_calibration(normal_maps, anomaly_maps, masks[n:].numpy() > 0, config.calibration)
    normal_max = fit_calibration(normal_maps, rule="normal_max").threshold
    model.reference.set_calibration(calibration, normal_max)
    if config.image_score == "edge":
        fit_edge_score(model.reference, data, normal_maps, anomaly_maps, masks[n:].numpy() > 0, config)
    return distances


def fit_edge_score(
    reference: ReferenceScorer,
    data: TrainingData,
    normal_maps: np.ndarray,
    anomaly_maps: np.ndarray,
    anomaly_masks: np.ndarray,
    config: DiscriminatorConfig,
) -> None:
    """Fit the edge-aware image score (``uniadc.reference.edge``) on the same leave-one-out maps: band gains
    from the normal support views, then the image threshold on the gain-weighted maps by the run's rule.
    A synthetic sample's picture is its source image's, in the view it was made in (all pixels where it has
    no source)."""
    picture = data.picture()
    view_valid = dihedral_masks(picture)
    gain = fit_edge_gain(normal_maps, view_valid)
    _, source, view = data.sources()
    n = data.normals.shape[0]
    full = np.ones(picture.shape[1:], bool)
    anomaly_valid = np.stack(
        [
            dihedral_view(picture[s], int(v)) if s >= 0 else full
            for s, v in zip(source[n:], view[n:], strict=True)
        ]
    )
    weighted_normal = np.maximum(weighted_maps(normal_maps, view_valid, gain), 0.0)
    weighted_anomaly = np.maximum(weighted_maps(anomaly_maps, anomaly_valid, gain), 0.0)
    image = fit_calibration(
        weighted_normal, weighted_anomaly, anomaly_masks & anomaly_valid, config.calibration
    )
    reference.set_edge_score(gain, image)
