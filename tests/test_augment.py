from __future__ import annotations

import numpy as np
import pytest

from uniadc.augment import augment, photometric


def _data(n=3, size=16):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 2:5, 3:9] = np.arange(1, n + 1)[:, None, None]
    return images, masks


def test_originals_first_then_copies_with_masks_following_their_image():
    images, masks = _data()
    out, out_masks = augment(images, masks, 2, np.random.default_rng(1))
    assert out.shape == (9, 16, 16, 3) and out_masks.shape == (9, 16, 16)
    np.testing.assert_array_equal(out[:3], images)
    for j in range(3, 9):
        src = j % 3
        assert out_masks[j].sum() == masks[src].sum()  # geometric transforms keep the region and its label
        assert set(np.unique(out_masks[j])) == set(np.unique(masks[src]))
        assert not np.array_equal(out[j], images[src])


def test_seeded_and_zero_copies():
    images, masks = _data()
    a = augment(images, masks, 2, np.random.default_rng(5))
    b = augment(images, masks, 2, np.random.default_rng(5))
    c = augment(images, masks, 2, np.random.default_rng(6))
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
    same, none = augment(images, None, 0, np.random.default_rng(0))
    assert np.array_equal(same, images) and none is None


def test_photometric_keeps_structure():
    flat = np.full((32, 32, 3), 128, np.uint8)
    flat[10:20, 10:20] = 40
    out = photometric(flat, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape == flat.shape
    assert out[12:18, 12:18].mean() < out[:5, :5].mean()  # the dark square stays darker than its surround


def test_bad_input():
    images, masks = _data()
    with pytest.raises(ValueError, match="copies"):
        augment(images, masks, -1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="masks must have shape"):
        augment(images, masks[:, :8], 1, np.random.default_rng(0))
