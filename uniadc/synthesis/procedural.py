"""Offline zero-shot defect renderer driven by the prior's typed ``appearance``.

The renderer needs no weights. For every candidate it resolves an appearance (the prior's, with ``any`` fields
and a missing appearance sampled from the generator), builds a target patch and blends it into the image with
an alpha derived from the mask:

* ``smooth``: the region is shaded darker or brighter with a depth profile (deepest far from the mask edge)
  modulated by low-frequency Perlin noise: holes, stains, lighting unevenness.
* ``rough``: as ``smooth`` plus streaky high-frequency Perlin grain: abrasions, fraying.
* ``transplant``: texture copied from a random place of a donor normal image (or the image itself), flipped or
  transposed so oriented textures break their pattern, mean-matched to the destination and tone-shifted.

On colour images a random colour tint (up to 60 % of the tone change per channel) is added; grey images stay
grey. The noise factor ``gamma`` scales the tone change linearly: the region's mean departs by about
``appearance.contrast * gamma * 255`` grey levels.

Locality contract (tested): alpha is a Gaussian blur (sigma ``feather_px`` for soft edges, at most
``SHARP_SIGMA_PX`` for sharp ones, kernel truncated at ``TRUNCATE`` sigma) of the mask, doubled and clipped to
1, so the mask interior is at full strength and the feather spreads outward. A pixel whose Chebyshev distance
to the mask exceeds :func:`halo_radius` is therefore bit-identical to the input, and every mask pixel changes
by at least one grey level in some channel. The region that actually changed (what selection returns as the
training mask) thus contains the mask and lies inside the mask dilated by a ``(2R+1) x (2R+1)`` square.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from schemas.config import ProceduralOptions
from schemas.priors import Appearance
from uniadc.noise import fractal, perlin
from uniadc.synthesis.base import SynthesisRequest

SHARP_SIGMA_PX = 0.5
TRUNCATE = 2.0
_TONES = ("darker", "brighter")
_TEXTURES = ("smooth", "rough", "transplant")
_EDGES = ("sharp", "soft")


def edge_sigma(edge: str, feather_px: float) -> float:
    """Gaussian feather sigma in pixels for an edge style."""
    return feather_px if edge == "soft" else min(feather_px, SHARP_SIGMA_PX)


def halo_radius(sigma: float) -> int:
    """Chebyshev radius beyond which a feathered mask has exactly zero alpha (scipy's kernel radius)."""
    return int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0


def resolve_appearance(appearance: Appearance | None, rng: np.random.Generator) -> Appearance:
    """Concrete appearance for one candidate: ``any`` fields and a missing appearance come from ``rng``."""
    if appearance is None:
        return Appearance(
            tone=_TONES[rng.integers(2)],
            texture=_TEXTURES[rng.integers(3)],
            edge=_EDGES[rng.integers(2)],
            contrast=float(rng.uniform(0.2, 0.5)),
        )
    tone = _TONES[rng.integers(2)] if appearance.tone == "any" else appearance.tone
    texture = _TEXTURES[rng.integers(3)] if appearance.texture == "any" else appearance.texture
    return appearance.model_copy(update={"tone": tone, "texture": texture})


@dataclass(frozen=True)
class _Footprint:
    """Where and how strongly one mask is rendered: crop box, and crop-sized mask, alpha and depth profile."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray, sigma: float) -> _Footprint:
        height, width = mask.shape
        pad = halo_radius(sigma) + 1
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, height)
        x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, width)
        m = mask[y0:y1, x0:x1]
        alpha = m.astype(np.float32)
        if sigma > 0:
            alpha = np.minimum(
                2.0 * ndimage.gaussian_filter(alpha, sigma, mode="constant", truncate=TRUNCATE), 1.0
            )
        depth = ndimage.distance_transform_edt(m).astype(np.float32)
        depth = np.clip(depth / max(0.6 * float(depth.max()), 1.0), 0.0, 1.0)
        return cls((int(y0), int(y1), int(x0), int(x1)), m, alpha, 0.55 + 0.45 * np.sqrt(depth))


class ProceduralSynthesizer:
    """The offline renderer behind the :class:`~uniadc.synthesis.base.Synthesizer` interface.

    ``request.extras["repaint"] = True`` switches to few-shot repainting: the pasted real defect keeps its
    structure and only its local contrast and shading are varied (by ``gamma``); no new defect is drawn.

    Args:
        options: feather and Perlin scale (``schemas.config.ProceduralOptions``).
    """

    name = "procedural"

    def __init__(self, options: ProceduralOptions | None = None) -> None:
        self.options = options or ProceduralOptions()

    def max_halo_radius(self) -> int:
        """Largest :func:`halo_radius` this renderer can use (soft edges)."""
        return halo_radius(self.options.feather_px)

    def synthesize(self, request: SynthesisRequest, rng: np.random.Generator) -> np.ndarray:
        """Render every candidate of the batch.

        Args:
            request: images (B, H, W, 3) uint8, masks (B, H, W) bool, prior, noise factors (B,), optional
                donors (M, H, W, 3) uint8; ``extras["repaint"]`` selects repainting.
            rng: the only source of randomness.

        Returns:
            (B, H, W, 3) uint8; pixels farther than ``halo_radius`` (Chebyshev) from the mask equal the input.
        """
        images, masks = request.images, request.masks
        gammas = np.asarray(request.noise_factors, dtype=np.float64)
        if np.any(~np.isfinite(gammas)) or np.any(gammas <= 0) or np.any(gammas > 1):
            raise ValueError(f"noise_factors must lie in (0, 1], got {gammas.tolist()}")
        donors = request.donors
        if donors is not None and (
            donors.ndim != 4
            or donors.shape[1:] != images.shape[1:]
            or donors.dtype != np.uint8
            or len(donors) == 0
        ):
            raise ValueError(
                f"donors must be (M, H, W, 3) uint8 like the images, got {donors.shape} {donors.dtype}"
            )
        repaint = bool(request.extras.get("repaint", False))
        out = images.copy()
        footprints: dict[float, _Footprint] = {}  # per sigma, for runs of identical masks (one mask x gammas)
        for b in range(images.shape[0]):
            if not masks[b].any():
                continue
            if b == 0 or not np.array_equal(masks[b], masks[b - 1]):
                footprints = {}
            look = resolve_appearance(request.prior.appearance, rng)
            sigma = edge_sigma(look.edge, self.options.feather_px)
            if sigma not in footprints:
                footprints[sigma] = _Footprint.of(masks[b], sigma)
            self._render(out[b], images[b], footprints[sigma], float(gammas[b]), look, donors, repaint, rng)
        return out

    # ------------------------------------------------------------------ one candidate
    def _render(
        self,
        dst: np.ndarray,
        img: np.ndarray,
        fp: _Footprint,
        gamma: float,
        look: Appearance,
        donors: np.ndarray | None,
        repaint: bool,
        rng: np.random.Generator,
    ) -> None:
        height, width = img.shape[:2]
        y0, y1, x0, x1 = fp.box
        m, alpha = fp.mask, fp.alpha
        window = img[y0:y1, x0:x1]
        h, w = m.shape
        grey = bool(
            np.array_equal(window[..., 0], window[..., 1]) and np.array_equal(window[..., 0], window[..., 2])
        )
        x = (
            window[..., :1].astype(np.float32) if grey else window.astype(np.float32)
        )  # grey: render one channel
        sign = -1.0 if look.tone == "darker" else 1.0
        amp = look.contrast * gamma * 255.0
        res_y = max(1, round(self.options.perlin_scale * h / height))
        res_x = max(1, round(self.options.perlin_scale * w / width))
        if repaint:
            target = self._repaint(x, m, gamma, look, rng, res_y, res_x)
        else:
            shade = fp.depth * (1.0 + 0.25 * perlin(h, w, res_y, res_x, rng))
            delta = (amp * np.maximum(shade, 0.0))[..., None]
            if look.texture == "transplant":
                base = self._transplant(x, m, img, donors, rng)
                delta = 0.7 * delta
            else:
                base = x
            target = _tone(base, m, delta, sign)
            if look.texture == "rough":
                target += (0.6 * amp * _grain(h, w, rng))[..., None]
            if not grey:
                tint = rng.dirichlet(np.ones(3)) - 1.0 / 3.0
                tint *= rng.uniform(0.0, 0.6) / max(float(np.abs(tint).max()), 1e-6)
                target += delta * tint.astype(np.float32)
        blended = np.rint(x + alpha[..., None] * (target - x)).clip(0, 255).astype(np.uint8)
        if grey:
            blended = np.repeat(blended, 3, axis=-1)
        _ensure_change(blended, window, m, sign)
        dst[y0:y1, x0:x1] = blended

    @staticmethod
    def _transplant(
        x: np.ndarray, m: np.ndarray, img: np.ndarray, donors: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        """A crop-sized patch from a random place of a donor (or ``img``), re-oriented and mean-matched."""
        source = img if donors is None else donors[rng.integers(len(donors))]
        height, width = source.shape[:2]
        h, w = m.shape
        side = max(h, w) if max(h, w) <= min(height, width) else 0
        if side and rng.random() < 0.5:
            oy, ox = rng.integers(height - side + 1), rng.integers(width - side + 1)
            patch = source[oy : oy + side, ox : ox + side].transpose(1, 0, 2)[:h, :w]
        else:
            oy, ox = rng.integers(height - h + 1), rng.integers(width - w + 1)
            patch = source[oy : oy + h, ox : ox + w]
        if rng.random() < 0.5:
            patch = patch[::-1]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        patch = patch.astype(np.float32)
        if x.shape[-1] == 1:
            patch = patch.mean(-1, keepdims=True)
        return patch + (x[m].mean(0) - patch[m].mean(0))

    def _repaint(
        self,
        x: np.ndarray,
        m: np.ndarray,
        gamma: float,
        look: Appearance,
        rng: np.random.Generator,
        res_y: int,
        res_x: int,
    ) -> np.ndarray:
        """Vary a pasted defect's local contrast and shading by ``gamma`` while keeping its structure."""
        h, w = m.shape
        mean = x[m].mean(0)
        gain = 1.0 + 1.2 * gamma * perlin(h, w, res_y + 1, res_x + 1, rng)
        shift = 0.5 * look.contrast * gamma * 255.0 * fractal(h, w, res_y + 1, res_x + 1, 2, rng)
        return mean + (x - mean) * gain[..., None] + shift[..., None]


def _tone(x: np.ndarray, m: np.ndarray, delta: np.ndarray, sign: float) -> np.ndarray:
    """Shift the region's mean by about ``sign * delta`` grey levels, multiplicatively so texture survives.

    Darkening scales pixels toward 0, brightening toward 255, each by at most 92 %.
    """
    mean = float(x[m].mean())
    if sign < 0:
        return x * (1.0 - np.clip(delta / max(mean, 1.0), 0.0, 0.92))
    return x + (255.0 - x) * np.clip(delta / max(255.0 - mean, 1.0), 0.0, 0.92)


def _grain(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Streaky zero-mean grain for rough textures: Perlin stretched along one axis plus fine noise; (h, w)."""
    fine, coarse = max(1, round(max(h, w) / 2.5)), max(1, round(max(h, w) / 16))
    streaks = perlin(h, w, fine, coarse, rng) if rng.random() < 0.5 else perlin(h, w, coarse, fine, rng)
    speckle = perlin(h, w, max(1, h // 3), max(1, w // 3), rng)
    return 0.7 * streaks + 0.5 * speckle


def _ensure_change(blended: np.ndarray, original: np.ndarray, m: np.ndarray, sign: float) -> None:
    """Move every unchanged mask pixel by one grey level (in the tone's direction if possible), in place."""
    same = m & np.all(blended == original, axis=-1)
    if not same.any():
        return
    vals = original[same].astype(np.int16)
    step = np.where(vals == 0, 1, np.where(vals == 255, -1, -1 if sign < 0 else 1))
    blended[same] = (vals + step).astype(np.uint8)
