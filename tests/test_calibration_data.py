"""The reference threshold is fitted on training data only: the stages up to ``train`` never read a test image.

Two copies of a tiny demo dataset differ only in their test images (one copy has them replaced by noise);
the checkpoints trained on them, with their fitted threshold, must be identical. A changed *support* image,
the control, must change the threshold, so the comparison can fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from schemas.config import load_run_config
from storage.demo import build_demo_dataset
from storage.priors import load_run_priors
from tasks.regenerate import category_key, regenerate_category
from tasks.split import split_dataset, split_key
from tasks.support import prepare_support, support_key
from tasks.train import train_key, train_model


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calib") / "data"
    build_demo_dataset(
        root, image_size=64, n_train=3, n_test_good=2, n_test_per_defect=2, image_classes=("brick",)
    )
    return root


def _train(root: Path, store: Path) -> dict[str, np.ndarray]:
    cfg = load_run_config(
        None,
        data={
            "name": "c",
            "dataset": {"kind": "demo", "root": str(root), "image_class": "brick"},
            "k_normal": 2,
            "image_size": 64,
            "store": str(store),
            "synthesis": {"samples_per_category": 2, "masks_per_sample": 2, "noise_factors": [0.5]},
            "discriminator": {
                "backbone": "tiny",
                "text_encoder": "tiny",
                "fusion_dim": 8,
                "iterations": 3,
                "batch_size": 4,
                "num_threads": 1,
                "augment_normal_copies": 1,
            },
        },
    )
    priors = load_run_priors(cfg)
    split = split_dataset.fn(cfg, split_key(cfg))
    support = prepare_support.fn(cfg, split, support_key(cfg, split))
    samples = [
        regenerate_category.fn(cfg, priors, c, support, category_key(cfg, priors, c, support))
        for c in priors.names
    ]
    model = train_model.fn(cfg, priors, support, samples, train_key(cfg, priors, support, samples))
    with safe_open(str(Path(model.run_dir) / model.uris["checkpoint"]), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _test_images(root: Path) -> list[Path]:
    return sorted(p for p in (root / "brick" / "test").rglob("*.png"))


def test_threshold_ignores_test_images_but_follows_support(demo_root, tmp_path):
    clean = _train(demo_root, tmp_path / "s1")
    assert np.isfinite(clean["reference.threshold"])

    noisy = tmp_path / "noisy"
    shutil.copytree(demo_root, noisy)
    rng = np.random.default_rng(0)
    tests = _test_images(noisy)
    assert tests
    for p in tests:
        a = np.asarray(Image.open(p))
        Image.fromarray(rng.integers(0, 256, a.shape, dtype=np.uint8)).save(p)
    other = _train(noisy, tmp_path / "s2")
    assert other.keys() == clean.keys()
    for k in clean:
        np.testing.assert_array_equal(other[k], clean[k], err_msg=k)

    # control: change the normal training images, and the fitted threshold moves
    changed = tmp_path / "changed"
    shutil.copytree(demo_root, changed)
    for p in sorted((changed / "brick" / "train" / "good").glob("*.png")):
        a = np.asarray(Image.open(p)).astype(np.int16)
        Image.fromarray(np.clip(a + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)).save(p)
    moved = _train(changed, tmp_path / "s3")
    assert moved["reference.threshold"] != clean["reference.threshold"]
