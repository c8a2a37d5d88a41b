"""Procedural renderer, cut-paste and the backend registry."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage

from schemas.config import CutPasteOptions, ProceduralOptions, SelectionConfig, SynthesisConfig
from schemas.priors import AnomalyPrior, Appearance
from uniadc.noise import fractal
from uniadc.synthesis.base import CandidateScorer, SynthesisRequest, Synthesizer
from uniadc.synthesis.cutpaste import SupportRegion, extract_regions, paste_region
from uniadc.synthesis.procedural import ProceduralSynthesizer, edge_sigma, halo_radius
from uniadc.synthesis.registry import get_scorer, get_synthesizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 64


def textured(rng: np.random.Generator, colour: bool = False, size: int = SIZE) -> np.ndarray:
    """A grey (or colour) Perlin texture, (size, size, 3) uint8."""
    base = 120 + 45 * fractal(size, size, 4, 4, 3, rng)
    img = base[..., None] * (np.array([1.0, 0.85, 0.6]) if colour else np.ones(3))
    return np.clip(img + rng.normal(0, 4, (size, size, 1 if not colour else 3)), 0, 255).astype(np.uint8)


def blob(size: int = SIZE, cy: int = 30, cx: int = 34, ry: int = 7, rx: int = 10) -> np.ndarray:
    yy, xx = np.ogrid[:size, :size]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def prior_with(**appearance) -> AnomalyPrior:
    look = Appearance(**appearance) if appearance else None
    return AnomalyPrior(name="defect", descriptions=("a defect",), appearance=look)


def render(prior, images, masks, gammas, seed=0, options=None, donors=None, extras=None):
    request = SynthesisRequest(
        images=images,
        masks=masks,
        prior=prior,
        noise_factors=np.asarray(gammas, float),
        donors=donors,
        extras=extras or {},
    )
    return ProceduralSynthesizer(options).synthesize(request, np.random.default_rng(seed))


# ---------------------------------------------------------------------------------------------- procedural
LOOKS = [
    dict(tone=t, texture=x, edge=e, contrast=0.4)
    for t in ("darker", "brighter")
    for x in ("smooth", "rough", "transplant")
    for e in ("sharp", "soft")
] + [{}]


@pytest.mark.parametrize("look", LOOKS, ids=lambda d: "-".join(map(str, d.values())) or "random")
@pytest.mark.parametrize("colour", [False, True], ids=["grey", "colour"])
def test_procedural_changes_every_mask_pixel_and_nothing_beyond_the_halo(look, colour):
    rng = np.random.default_rng(1)
    images = np.stack([textured(rng, colour) for _ in range(3)])
    masks = np.stack([blob(), blob(cy=5, cx=60, ry=3, rx=8), blob(ry=1, rx=20)])  # one touches the border
    before = images.copy()
    options = ProceduralOptions(feather_px=3.0)
    out = render(
        prior_with(**look), images, masks, [0.4, 0.5, 0.6], options=options, donors=images[::-1].copy()
    )
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(images, before)  # inputs untouched
    radius = halo_radius(edge_sigma("soft", options.feather_px))
    for b in range(3):
        changed = np.any(out[b] != images[b], axis=-1)
        reach = ndimage.binary_dilation(masks[b], np.ones((2 * radius + 1,) * 2, bool))
        assert changed[masks[b]].all(), "a mask pixel was left unchanged"
        assert not changed[~reach].any(), "a pixel beyond the halo changed"
        if look.get("edge") == "sharp":
            sharp = ndimage.binary_dilation(masks[b], np.ones((2 * halo_radius(0.5) + 1,) * 2, bool))
            assert not changed[~sharp].any()
        if not colour:
            assert np.array_equal(out[b, ..., 0], out[b, ..., 1]) and np.array_equal(
                out[b, ..., 0], out[b, ..., 2]
            )


def test_procedural_is_deterministic_and_seed_sensitive():
    rng = np.random.default_rng(2)
    images = np.stack([textured(rng, True) for _ in range(4)])
    masks = np.stack([blob(), blob(cx=20), blob(cy=50), blob(ry=3)])
    prior = prior_with()  # random appearances come from the generator too
    a = render(prior, images, masks, [0.4, 0.5, 0.6, 0.5], seed=7, donors=images)
    b = render(prior, images, masks, [0.4, 0.5, 0.6, 0.5], seed=7, donors=images)
    c = render(prior, images, masks, [0.4, 0.5, 0.6, 0.5], seed=8, donors=images)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("tone,sign", [("darker", -1), ("brighter", 1)])
def test_tone_and_noise_factor_set_direction_and_size_of_the_change(tone, sign):
    image = textured(np.random.default_rng(3))
    mask = blob()
    prior = prior_with(tone=tone, texture="smooth", edge="sharp", contrast=0.4)
    shifts = []
    for gamma in (0.2, 0.4, 0.6, 0.8):
        out = render(prior, image[None], mask[None], [gamma], seed=5)[0]
        shifts.append(float(out[mask].mean()) - float(image[mask].mean()))
    assert all(sign * s > 0 for s in shifts)
    assert all(sign * a < sign * b for a, b in zip(shifts, shifts[1:], strict=False)), shifts
    # about contrast * gamma * 255 grey levels (depth profile and clipping make it smaller, never larger)
    assert 0.35 * 0.4 * 0.6 * 255 < abs(shifts[2]) <= 0.4 * 0.6 * 255 * 1.3


def test_transplant_brings_the_donor_texture():
    flat = np.full((1, SIZE, SIZE, 3), 128, np.uint8)
    stripes = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    stripes[:, :, ::2] = 200
    stripes[:, :, 1::2] = 60
    mask = blob(ry=10, rx=10)[None]
    prior = prior_with(tone="darker", texture="transplant", edge="sharp", contrast=0.05)
    out = render(prior, flat, mask, [0.5], donors=stripes)[0]
    assert out[mask[0]].std() > 40  # striped, not flat
    smooth = render(
        prior_with(tone="darker", texture="smooth", edge="sharp", contrast=0.05), flat, mask, [0.5]
    )[0]
    assert smooth[mask[0]].std() < 10


def test_repaint_keeps_the_pasted_structure_and_changes_it():
    rng = np.random.default_rng(4)
    image = textured(rng)
    mask = blob(ry=12, rx=12)
    image[mask] = (image[mask] * 0.4).astype(np.uint8)  # a dark "pasted" defect
    out = render(prior_with(), image[None], mask[None], [0.5], extras={"repaint": True})[0]
    assert np.any(out[mask] != image[mask], axis=-1).all()
    corr = np.corrcoef(out[mask][:, 0].astype(float), image[mask][:, 0].astype(float))[0, 1]
    assert corr > 0.5
    assert abs(float(out[mask].mean()) - float(image[mask].mean())) < 40


def test_procedural_validates_inputs_and_skips_empty_masks():
    image = textured(np.random.default_rng(0))[None]
    empty = np.zeros((1, SIZE, SIZE), bool)
    np.testing.assert_array_equal(render(prior_with(), image, empty, [0.5]), image)
    with pytest.raises(ValueError, match="noise_factors"):
        render(prior_with(), image, blob()[None], [1.5])
    with pytest.raises(ValueError, match="donors"):
        render(prior_with(), image, blob()[None], [0.5], donors=np.zeros((1, 8, 8, 3), np.uint8))


# ---------------------------------------------------------------------------------------------- registry
def test_registry_builds_known_backends_and_names_the_known_ones():
    config = SynthesisConfig(procedural=ProceduralOptions(feather_px=1.5))
    synth = get_synthesizer("procedural", config)
    assert isinstance(synth, Synthesizer) and synth.options.feather_px == 1.5
    with pytest.raises(ValueError, match="procedural.*sd-inpaint.*brushnet"):
        get_synthesizer("gan", config)
    with pytest.raises(ValueError, match="select_few_shot"):
        get_synthesizer("cutpaste", config)
    with pytest.raises(ValueError, match="resolved"):
        get_synthesizer("auto", config)
    for name in ("mask_fidelity", "ssim"):
        scorer = get_scorer(name, SelectionConfig())
        assert isinstance(scorer, CandidateScorer) and scorer.name == name
    with pytest.raises(ValueError, match="mask_fidelity.*ssim.*clip-region"):
        get_scorer("lpips", SelectionConfig())


# ---------------------------------------------------------------------------------------------- cut-paste
def test_extract_regions_uses_8_connectivity_threshold_and_context():
    image = textured(np.random.default_rng(5), True)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:18, 10:18] = True
    mask[18:26, 18:26] = True  # touches the first block only diagonally: same 8-connected component
    mask[40:44, 40:44] = True  # 16 px: below the threshold
    mask[40:52, 0:4] = True  # 48 px, 12 x 4 box at the left border
    regions = extract_regions(image, mask, "img-1", CutPasteOptions(min_region_px=40, context_ratio=0.25))
    assert len(regions) == 2
    first, second = regions
    assert first.mask.sum() == 128 and first.source_image_id == "img-1"
    assert first.crop.shape == (16 + 8, 16 + 8, 3)  # 16 px box, 4 px context per side
    np.testing.assert_array_equal(first.crop, image[6:30, 6:30])
    assert second.crop.shape == (12 + 3 + 3, 4 + 1, 3)  # 3 px / 1 px margins, the left one clipped away
    assert second.mask.sum() == 48 and not second.mask[:, 4].any()
    assert extract_regions(image, np.zeros_like(mask), "x", CutPasteOptions()) == []
    with pytest.raises(ValueError, match="mask"):
        extract_regions(image, mask.astype(np.uint8), "x", CutPasteOptions())


def test_extract_regions_stop_at_the_picture_and_name_the_edges_they_touch():
    image = textured(np.random.default_rng(7), True)
    valid = np.zeros((SIZE, SIZE), bool)
    valid[16:48] = True  # a letterboxed picture: rows 0-15 and 48-63 are padding
    mask = np.zeros((SIZE, SIZE), bool)
    mask[16:24, 20:30] = True  # on the picture's top edge
    mask[30:36, 30:40] = True  # inside
    mask[40:48, 0:8] = True  # bottom-left corner of the picture
    options = CutPasteOptions(min_region_px=10, context_ratio=0.5)
    edge, inner, corner = extract_regions(image, mask, "lb", options, valid=valid)
    assert edge.sides == {"top"} and inner.sides == frozenset() and corner.sides == {"bottom", "left"}
    assert edge.crop.shape[0] == 8 + 4 and edge.mask[0].any()  # no margin above: the padding is not cut
    np.testing.assert_array_equal(edge.crop, image[16:28, 15:35])
    # without a picture mask the image is the picture: the top region no longer touches an edge
    assert extract_regions(image, mask, "lb", options)[0].sides == frozenset()
    with pytest.raises(ValueError, match="valid"):
        extract_regions(image, mask, "lb", options, valid=np.zeros_like(valid))
    with pytest.raises(ValueError, match="sides"):
        SupportRegion(edge.crop, edge.mask, "lb", frozenset({"middle"}))


def _edge_region() -> SupportRegion:
    """A dark 6 x 10 chip on the top edge of a 12 x 20 crop."""
    crop = np.full((12, 20, 3), 200, np.uint8)
    mask = np.zeros((12, 20), bool)
    mask[0:6, 5:15] = True
    crop[mask] = 30
    return SupportRegion(crop, mask, "chip", frozenset({"top"}))


def test_an_edge_defect_is_pasted_flush_against_the_foreground_edge():
    normal = np.full((SIZE, SIZE, 3), 200, np.uint8)
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[10:54, 6:58] = True
    touched = set()
    for seed in range(12):
        result = paste_region(
            normal, foreground, _edge_region(), CutPasteOptions(), np.random.default_rng(seed)
        )
        ys, xs = np.nonzero(result.mask)
        edges = {
            "top": ys.min() == 10,
            "bottom": ys.max() == 53,
            "left": xs.min() == 6,
            "right": xs.max() == 57,
        }
        assert sum(edges.values()) == 1, (seed, edges)  # on exactly one edge of the foreground, never inside
        touched |= {side for side, hit in edges.items() if hit}
        # a multiple of 90 degrees: the chip stays an axis-aligned block (a 45-degree turn would fill half its box)
        assert result.mask.sum() >= 0.75 * (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    assert len(touched) >= 3  # flips and quarter turns send the top edge to the other sides too


def test_the_cut_paste_label_covers_defect_pixels_that_match_the_destination():
    normal = np.full((SIZE, SIZE, 3), 200, np.uint8)
    crop = np.full((20, 20, 3), 200, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    crop[mask] = 40
    crop[8:12, 8:12] = 200  # the defect's centre has the destination's colour: pasting leaves it unchanged
    region = SupportRegion(crop, mask, "ring")
    options = CutPasteOptions(max_rotation_deg=0.0, scale_range=(1.0, 1.0))
    result = paste_region(normal, np.ones((SIZE, SIZE), bool), region, options, np.random.default_rng(0))
    changed = np.any(result.image != normal, axis=-1)
    y0, x0 = result.box[:2]
    centre = (slice(y0 + 8, y0 + 12), slice(x0 + 8, x0 + 12))
    assert not changed[centre].any() and result.mask[centre].all()
    assert (changed & ~result.mask).sum() == 0 and result.mask.sum() >= 100


def support_region(rng) -> SupportRegion:
    crop = textured(rng, True, size=24)
    mask = blob(size=24, cy=12, cx=12, ry=6, rx=8)
    crop[mask] = (crop[mask] * 0.3).astype(np.uint8)
    return SupportRegion(crop, mask, "s")


def test_paste_region_changes_only_inside_its_box_and_lands_in_the_foreground():
    rng = np.random.default_rng(6)
    normal = textured(rng, True)
    foreground = np.zeros((SIZE, SIZE), bool)
    foreground[8:40, 20:60] = True
    region = support_region(rng)
    for seed in range(5):
        result = paste_region(normal, foreground, region, CutPasteOptions(), np.random.default_rng(seed))
        y0, x0, y1, x1 = result.box
        assert 0 <= y0 < y1 <= SIZE and 0 <= x0 < x1 <= SIZE
        changed = np.any(result.image != normal, axis=-1)
        np.testing.assert_array_equal(result.mask, changed)
        outside = np.ones((SIZE, SIZE), bool)
        outside[y0:y1, x0:x1] = False
        assert not changed[outside].any()
        assert 30 < changed.sum() < 400
        assert foreground[changed].mean() >= 0.5
    a = paste_region(normal, foreground, region, CutPasteOptions(), np.random.default_rng(1))
    b = paste_region(normal, foreground, region, CutPasteOptions(), np.random.default_rng(1))
    assert a.image.tobytes() == b.image.tobytes() and a.box == b.box
    with pytest.raises(ValueError, match="foreground is empty"):
        paste_region(normal, np.zeros_like(foreground), region, CutPasteOptions(), rng)


def test_paste_region_applies_the_same_transform_to_crop_and_mask():
    normal = np.full((SIZE, SIZE, 3), 200, np.uint8)
    crop = np.full((20, 20, 3), 200, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 8:12] = True  # a 10 x 4 bar: dark inside, background-coloured context
    crop[mask] = 20
    region = SupportRegion(crop, mask, "bar")
    options = CutPasteOptions(max_rotation_deg=90.0, scale_range=(1.0, 1.0))
    for seed in range(6):
        result = paste_region(
            normal, np.ones((SIZE, SIZE), bool), region, options, np.random.default_rng(seed)
        )
        dark = result.image[..., 0] < 110
        # the dark pixels are where the transformed mask is; only the feathered rim differs
        assert (dark & ~result.mask).sum() == 0
        assert abs(int(dark.sum()) - 40) <= 12
