"""The one interface every synthesis backend implements, and the one every candidate scorer implements.

A backend turns a batch of images + masks into candidate defect images for one category. It gets everything
any backend needs (the diffusion backends read the prompts, the negative prompt and the noise factors; the
procedural backend reads the prior's typed ``appearance``), so the regenerate flow never changes when a backend
is added. Backends are pure: no file I/O, explicit generator, inputs never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from schemas.priors import AnomalyPrior


@dataclass(frozen=True)
class SynthesisRequest:
    """A batch of B candidates to render for one category.

    Attributes:
        images: (B, H, W, 3) uint8 images to repaint (normal images, or cut-paste composites in few-shot).
        masks: (B, H, W) bool, True where the defect goes.
        prior: the category's prior.
        noise_factors: (B,) float in (0, 1]; gamma of the paper: how far the region departs from the original.
        prompts: B prompt strings (default: the prior's descriptions, cycled).
        negative_prompt: optional negative prompt (the prior's).
        donors: optional (M, H, W, 3) uint8 other normal images a backend may borrow texture from.
        conditioning_scale: diffusion control strength (1.0 zero-shot; 0.75 for few-shot repainting).
    """

    images: np.ndarray
    masks: np.ndarray
    prior: AnomalyPrior
    noise_factors: np.ndarray
    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = None
    donors: np.ndarray | None = None
    conditioning_scale: float = 1.0
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be (B, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}"
            )
        if self.masks.shape != self.images.shape[:3] or self.masks.dtype != bool:
            raise ValueError(
                f"masks must be (B, H, W) bool matching images, got {self.masks.shape} {self.masks.dtype}"
            )
        if np.shape(self.noise_factors) != (b,):
            raise ValueError(f"noise_factors must have shape ({b},), got {np.shape(self.noise_factors)}")
        if self.prompts and len(self.prompts) != b:
            raise ValueError(f"prompts must be empty or have {b} entries, got {len(self.prompts)}")

    @property
    def batch_prompts(self) -> tuple[str, ...]:
        """Prompts per item: explicit ones, else the prior's descriptions cycled over the batch."""
        if self.prompts:
            return self.prompts
        d = self.prior.descriptions
        return tuple(d[i % len(d)] for i in range(self.images.shape[0]))


@runtime_checkable
class Synthesizer(Protocol):
    """A synthesis backend."""

    name: str

    def synthesize(self, request: SynthesisRequest, rng: np.random.Generator) -> np.ndarray:
        """Render the batch; returns (B, H, W, 3) uint8. Pixels outside each mask must equal the input."""
        ...


@dataclass(frozen=True)
class ScoreRequest:
    """Candidates of one selection mini-batch to score against their category.

    Attributes:
        candidates: (B, H, W, 3) uint8 rendered candidates.
        masks: (B, H, W) bool defect masks.
        references: (B, H, W, 3) uint8 what each candidate was rendered from (normal image or cut-paste composite).
        prior: the target category's prior.
        other_priors: the other categories of the same image class (for softmax-style scorers).
        boxes: optional (B, 4) int (y0, x0, y1, x1) crop boxes with context (few-shot SSIM scoring).
    """

    candidates: np.ndarray
    masks: np.ndarray
    references: np.ndarray
    prior: AnomalyPrior
    other_priors: tuple[AnomalyPrior, ...] = ()
    boxes: np.ndarray | None = None


@runtime_checkable
class CandidateScorer(Protocol):
    """Category-consistency score of candidates; higher is better, the argmax is kept."""

    name: str

    def score(self, request: ScoreRequest) -> np.ndarray:
        """Returns (B,) float64 scores."""
        ...
