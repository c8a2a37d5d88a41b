"""Category-consistency selection: render a mini-batch of candidates per kept sample and keep the best one.

Zero-shot (:func:`select_zero_shot`): one source normal, ``n_masks`` masks drawn from the prior, each rendered
at every noise factor (``n_masks * len(noise_factors)`` candidates, mask-major), scored, argmax kept (first on
ties). Few-shot (:func:`select_few_shot`): ``n_masks`` cut-paste composites on one source normal, each
optionally repainted at every noise factor, scored by SSIM against the un-repainted composite over the pasted
box.

The kept sample's training mask is the region that actually changed: pixels where any channel of the kept
image differs from the source normal image.

Scorers (higher is better):

* ``mask_fidelity`` (:class:`MaskFidelityScorer`): Dice overlap between the visibly changed pixels
  (max-channel absolute difference to the reference >= ``threshold`` grey levels, default 10) and the
  candidate mask. It is 1 when the change is visible on the whole mask and nowhere else, and drops for
  invisible defects (e.g. darkening an already black background) and for changes leaking outside the mask.
* ``ssim`` (:class:`SSIMScorer`): mean scikit-image SSIM (``channel_axis=-1, data_range=255``) between
  candidate and reference inside the crop box with its context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

from schemas.config import CutPasteOptions
from schemas.priors import AnomalyPrior
from uniadc.synthesis.base import CandidateScorer, ScoreRequest, SynthesisRequest, Synthesizer
from uniadc.synthesis.cutpaste import SupportRegion, paste_region

FEW_SHOT_CONDITIONING = 0.75


@dataclass(frozen=True)
class SelectedSample:
    """The kept candidate of one selection mini-batch.

    Attributes:
        image: (H, W, 3) uint8 synthetic anomaly image.
        mask: (H, W) bool training mask: the drawn (or pasted) mask plus every pixel where ``image`` differs
            from the source normal image (the feather halo). Pixels of a pasted defect that happen to equal
            the normal image stay labelled.
        source_index: index of the source normal image among ``normals``.
        mask_shape: shape name of the drawn mask (``cutpaste`` in few-shot).
        mask_size: size name of the drawn mask, ``None`` for foreground masks and cut-paste.
        noise_factor: gamma the kept candidate was rendered with (0.0 for an un-repainted composite).
        score: its consistency score.
    """

    image: np.ndarray
    mask: np.ndarray
    source_index: int
    mask_shape: str
    mask_size: str | None
    noise_factor: float
    score: float


class MaskFidelityScorer:
    """Dice between the visibly changed region and the mask (see the module docstring).

    Args:
        threshold: grey levels of max-channel absolute difference that count as a visible change.
    """

    name = "mask_fidelity"

    def __init__(self, threshold: int = 10) -> None:
        if not 1 <= threshold <= 255:
            raise ValueError(f"threshold must be in [1, 255], got {threshold}")
        self.threshold = threshold

    def score(self, request: ScoreRequest) -> np.ndarray:
        """Returns (B,) float64 in [0, 1]."""
        cand, ref, masks = _check_score_request(request)
        scores = np.empty(len(cand), np.float64)
        for b in range(len(cand)):  # per item keeps the temporaries small
            diff = np.maximum(cand[b], ref[b])
            diff -= np.minimum(cand[b], ref[b])  # |cand - ref| without leaving uint8
            visible = (diff[..., 0] >= self.threshold) | (diff[..., 1] >= self.threshold)
            visible |= diff[..., 2] >= self.threshold
            both = np.count_nonzero(visible & masks[b])
            total = np.count_nonzero(visible) + np.count_nonzero(masks[b])
            scores[b] = 2.0 * both / total if total else 0.0
        return scores


class SSIMScorer:
    """Mean SSIM between candidate and reference inside each crop box (the paper's few-shot score)."""

    name = "ssim"

    def score(self, request: ScoreRequest) -> np.ndarray:
        """Returns (B,) float64; requires ``request.boxes`` (B, 4) as (y0, x0, y1, x1)."""
        cand, ref, _ = _check_score_request(request)
        boxes = request.boxes
        if boxes is None or np.shape(boxes) != (len(cand), 4):
            got = None if boxes is None else np.shape(boxes)
            raise ValueError(f"ssim needs boxes of shape ({len(cand)}, 4), got {got}")
        scores = np.empty(len(cand), np.float64)
        for b, (y0, x0, y1, x1) in enumerate(np.asarray(boxes, dtype=np.int64)):
            side = min(y1 - y0, x1 - x0)
            if side < 3:
                raise ValueError(f"boxes[{b}] = {(y0, x0, y1, x1)} is smaller than 3 pixels")
            win = min(7, side if side % 2 else side - 1)
            scores[b] = structural_similarity(
                cand[b, y0:y1, x0:x1], ref[b, y0:y1, x0:x1], win_size=win, channel_axis=-1, data_range=255
            )
        return scores


def _check_score_request(request: ScoreRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cand, ref, masks = request.candidates, request.references, request.masks
    if cand.ndim != 4 or cand.shape[-1] != 3 or cand.dtype != np.uint8:
        raise ValueError(f"candidates must be (B, H, W, 3) uint8, got {cand.shape} {cand.dtype}")
    if ref.shape != cand.shape or ref.dtype != np.uint8:
        raise ValueError(f"references must match candidates {cand.shape}, got {ref.shape} {ref.dtype}")
    if masks.shape != cand.shape[:3] or masks.dtype != bool:
        raise ValueError(f"masks must be (B, H, W) bool matching candidates, got {masks.shape} {masks.dtype}")
    return cand, ref, masks


def _check_normals(
    normals: np.ndarray, foregrounds: np.ndarray, n_masks: int, noise_factors: Sequence[float]
) -> np.ndarray:
    if normals.ndim != 4 or normals.shape[-1] != 3 or normals.dtype != np.uint8 or len(normals) == 0:
        raise ValueError(
            f"normals must be a non-empty (M, H, W, 3) uint8 array, got {normals.shape} {normals.dtype}"
        )
    if foregrounds.shape != normals.shape[:3] or foregrounds.dtype != bool:
        raise ValueError(f"foregrounds must be (M, H, W) bool matching normals, got {foregrounds.shape}")
    if n_masks < 1:
        raise ValueError(f"n_masks must be >= 1, got {n_masks}")
    gammas = np.asarray(noise_factors, dtype=np.float64)
    if gammas.ndim != 1 or len(gammas) == 0 or np.any(gammas <= 0) or np.any(gammas > 1):
        raise ValueError(
            f"noise_factors must be a non-empty list of values in (0, 1], got {list(noise_factors)}"
        )
    return gammas


def _render_and_score(
    images: np.ndarray,
    masks: np.ndarray,
    gammas: np.ndarray,
    prior: AnomalyPrior,
    other_priors: tuple[AnomalyPrior, ...],
    synthesizer: Synthesizer,
    scorer: CandidateScorer,
    rng: np.random.Generator,
    batch_size: int,
    boxes: np.ndarray | None = None,
    prompt: str | None = None,
    **request_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Render candidate k from (images[k // G], masks[k // G]) at gammas[k % G] in batches.

    Returns:
        The best candidate (H, W, 3) uint8 (first on ties) and all (K,) float64 scores.
    """
    n_gamma = len(gammas)
    total = len(images) * n_gamma
    best, best_score, scores = None, -np.inf, np.empty(total, np.float64)
    for start in range(0, total, batch_size):
        idx = np.arange(start, min(start + batch_size, total))
        src = idx // n_gamma
        request = SynthesisRequest(
            images=images[src],
            masks=masks[src],
            prior=prior,
            noise_factors=gammas[idx % n_gamma],
            prompts=(prompt,) * len(idx) if prompt else (),
            **request_kwargs,
        )
        cands = synthesizer.synthesize(request, rng)
        batch_scores = np.asarray(
            scorer.score(
                ScoreRequest(
                    candidates=cands,
                    masks=masks[src],
                    references=images[src],
                    prior=prior,
                    other_priors=other_priors,
                    boxes=None if boxes is None else boxes[src],
                )
            ),
            dtype=np.float64,
        )
        scores[idx] = batch_scores
        k = int(np.argmax(batch_scores))
        if batch_scores[k] > best_score:
            best, best_score = cands[k].copy(), float(batch_scores[k])
    return best, scores


def _default_mask_fn() -> Callable:
    from uniadc.masks import draw_mask

    return draw_mask


def select_zero_shot(
    normals: np.ndarray,
    foregrounds: np.ndarray,
    prior: AnomalyPrior,
    other_priors: Sequence[AnomalyPrior],
    synthesizer: Synthesizer,
    scorer: CandidateScorer,
    n_masks: int,
    noise_factors: Sequence[float],
    rng: np.random.Generator,
    donors: np.ndarray | None = None,
    *,
    batch_size: int = 32,
    mask_fn: Callable | None = None,
) -> SelectedSample:
    """Keep the most category-consistent of ``n_masks * len(noise_factors)`` prior-guided candidates.

    Args:
        normals: (M, H, W, 3) uint8 normal images; one is drawn as the source.
        foregrounds: (M, H, W) bool foreground masks of ``normals``.
        prior: the target category.
        other_priors: the other categories of the image class (for text-based scorers).
        synthesizer: rendering backend.
        scorer: consistency scorer (higher is better).
        n_masks: masks drawn per sample (the paper's mini-batch B).
        noise_factors: gammas each mask is rendered with.
        rng: the only source of randomness (source draw, masks, rendering).
        donors: (D, H, W, 3) uint8 images to borrow texture from; default ``normals``.
        batch_size: candidates per synthesizer call.
        mask_fn: ``draw_mask(prior, foreground, rng) -> MaskDraw(mask, shape, size)``; default
            ``uniadc.masks.draw_mask``.

    Returns:
        The kept sample; its mask is where it differs from the source normal.
    """
    gammas = _check_normals(normals, foregrounds, n_masks, noise_factors)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mask_fn = mask_fn if mask_fn is not None else _default_mask_fn()
    source = int(rng.integers(len(normals)))
    draws = [mask_fn(prior, foregrounds[source], rng) for _ in range(n_masks)]
    masks = np.stack([np.asarray(d.mask, dtype=bool) for d in draws])
    images = np.broadcast_to(normals[source], (n_masks, *normals.shape[1:]))
    best, scores = _render_and_score(
        images,
        masks,
        gammas,
        prior,
        tuple(other_priors),
        synthesizer,
        scorer,
        rng,
        batch_size,
        negative_prompt=prior.negative_prompt,
        donors=normals if donors is None else donors,
    )
    k = int(np.argmax(scores))
    draw = draws[k // len(gammas)]
    return SelectedSample(
        image=best,
        mask=masks[k // len(gammas)] | np.any(best != normals[source], axis=-1),
        source_index=source,
        mask_shape=str(draw.shape),
        mask_size=None if draw.size is None else str(draw.size),
        noise_factor=float(gammas[k % len(gammas)]),
        score=float(scores[k]),
    )


def select_few_shot(
    normals: np.ndarray,
    foregrounds: np.ndarray,
    regions: Sequence[SupportRegion],
    prior: AnomalyPrior,
    synthesizer: Synthesizer | None,
    scorer: CandidateScorer,
    n_masks: int,
    noise_factors: Sequence[float],
    rng: np.random.Generator,
    options: CutPasteOptions,
    *,
    other_priors: Sequence[AnomalyPrior] = (),
    batch_size: int = 32,
) -> SelectedSample:
    """Keep the best of ``n_masks`` cut-paste composites, each repainted at every noise factor.

    Repainting happens when ``synthesizer`` is given and ``options.repaint`` is true; the request carries the
    prompt ``"<category> defect"``, conditioning scale 0.75 and ``extras={"repaint": True}``. Otherwise the
    composites themselves are the candidates (noise factor 0.0).

    Args:
        normals: (M, H, W, 3) uint8 normal images; one is drawn as the source.
        foregrounds: (M, H, W) bool foreground masks of ``normals``.
        regions: support defects to paste (from :func:`~uniadc.synthesis.cutpaste.extract_regions`).
        prior: the target category.
        synthesizer: repainting backend, or ``None`` for plain cut-paste.
        scorer: consistency scorer; ``ssim`` compares each candidate with its composite over the pasted box.
        n_masks: composites per sample.
        noise_factors: gammas each composite is repainted with.
        rng: the only source of randomness.
        options: cut-paste options.
        other_priors: the other categories (for text-based scorers).
        batch_size: candidates per synthesizer call.

    Returns:
        The kept sample; its mask is where it differs from the source normal.
    """
    gammas = _check_normals(normals, foregrounds, n_masks, noise_factors)
    if not regions:
        raise ValueError("regions is empty: no support defect to paste")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from uniadc.masks import effective_foreground

    source = int(rng.integers(len(normals)))
    height, width = foregrounds.shape[1:]
    foreground = effective_foreground(foregrounds[source], height, width, ignore=prior.ignore_foreground)
    pasted = [
        paste_region(normals[source], foreground, regions[int(rng.integers(len(regions)))], options, rng)
        for _ in range(n_masks)
    ]
    images = np.stack([p.image for p in pasted])
    masks = np.stack([p.mask for p in pasted])
    boxes = np.array([p.box for p in pasted], dtype=np.int64)
    if synthesizer is not None and options.repaint:
        prompt = f"{prior.name.replace('_', ' ')} defect"
        best, scores = _render_and_score(
            images,
            masks,
            gammas,
            prior,
            tuple(other_priors),
            synthesizer,
            scorer,
            rng,
            batch_size,
            boxes=boxes,
            prompt=prompt,
            negative_prompt=prior.negative_prompt,
            donors=normals,
            conditioning_scale=FEW_SHOT_CONDITIONING,
            extras={"repaint": True},
        )
        k = int(np.argmax(scores))
        gamma = float(gammas[k % len(gammas)])
        drawn = masks[k // len(gammas)]
    else:
        scores = np.asarray(
            scorer.score(
                ScoreRequest(
                    candidates=images,
                    masks=masks,
                    references=images,
                    prior=prior,
                    other_priors=tuple(other_priors),
                    boxes=boxes,
                )
            ),
            dtype=np.float64,
        )
        k = int(np.argmax(scores))
        best, gamma, drawn = images[k], 0.0, masks[k]
    return SelectedSample(
        image=best,
        mask=drawn | np.any(best != normals[source], axis=-1),
        source_index=source,
        mask_shape="cutpaste",
        mask_size=None,
        noise_factor=gamma,
        score=float(scores[k]),
    )
