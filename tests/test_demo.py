"""The offline demo dataset: MVTec layout, binary masks, determinism, atomic build, valid priors."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import storage.demo as demo
from schemas.priors import load_priors
from storage.demo import DEFECT_AREA_RANGE, DEMO_CLASSES, DEMO_DEFECTS, build_demo_dataset, render_defect

SMALL = {"image_size": 64, "n_train": 2, "n_test_good": 2, "n_test_per_defect": 2}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "demo"
    return root, build_demo_dataset(root)


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_layout_and_counts(built: tuple[Path, dict]) -> None:
    root, summary = built
    assert sorted(p.name for p in root.iterdir()) == sorted(DEMO_CLASSES)
    assert not root.with_name(root.name + ".partial").exists()
    for cls in DEMO_CLASSES:
        base = root / cls
        assert sorted(p.name for p in (base / "test").iterdir()) == sorted(["good", *DEMO_DEFECTS])
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == sorted(DEMO_DEFECTS)
        train = sorted(p.name for p in (base / "train" / "good").iterdir())
        assert train == [f"{i:03d}.png" for i in range(8)]
        assert len(list((base / "test" / "good").iterdir())) == 6
        for defect in DEMO_DEFECTS:
            images = sorted((base / "test" / defect).iterdir())
            masks = sorted((base / "ground_truth" / defect).iterdir())
            assert [p.stem + "_mask.png" for p in images] == [p.name for p in masks]
            assert len(images) == 6
        assert summary["classes"][cls] == {
            "train/good": 8,
            "test/good": 6,
            **{f"test/{d}": 6 for d in DEMO_DEFECTS},
        }
    assert summary["n_images"] == 3 * (8 + 6 + 3 * 6)
    assert summary["n_masks"] == 3 * 3 * 6


def test_images_are_rgb_and_normal_images_differ(built: tuple[Path, dict]) -> None:
    root, _ = built
    for cls in DEMO_CLASSES:
        files = [*(root / cls / "train" / "good").glob("*.png"), *(root / cls / "test").rglob("*.png")]
        arrays = [np.asarray(Image.open(p)) for p in files]
        assert all(a.shape == (128, 128, 3) and a.dtype == np.uint8 for a in arrays)
        digests = {hashlib.sha256(a.tobytes()).hexdigest() for a in arrays}
        assert len(digests) == len(arrays), f"{cls}: two images are identical"


def test_masks_binary_nonempty_and_sized(built: tuple[Path, dict]) -> None:
    root, _ = built
    for cls in DEMO_CLASSES:
        assert not (root / cls / "ground_truth" / "good").exists()
        for defect in DEMO_DEFECTS:
            low, high = DEFECT_AREA_RANGE[defect]
            for path in (root / cls / "ground_truth" / defect).glob("*.png"):
                mask = np.asarray(Image.open(path))
                assert mask.shape == (128, 128) and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}, path
                assert low <= (mask == 255).mean() <= high, path


def test_priors_yaml_validates(built: tuple[Path, dict]) -> None:
    root, _ = built
    for cls in DEMO_CLASSES:
        priors = load_priors(root / cls / "priors.yaml")
        assert (priors.dataset, priors.image_class) == ("demo", cls)
        assert priors.names == list(DEMO_DEFECTS)
        assert all(p.appearance is not None and p.shapes and p.sizes for p in priors.categories)
        assert priors == demo.demo_priors(cls)


@pytest.mark.parametrize("defect", DEMO_DEFECTS)
def test_render_defect_changes_only_and_visibly_the_mask(defect: str) -> None:
    rng = np.random.default_rng(3)
    image = rng.uniform(0.3, 0.7, size=(96, 96, 3))
    original = image.copy()
    out, mask = render_defect(image, defect, rng)
    assert np.array_equal(image, original)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8 and mask.dtype == bool
    before = np.round(image * 255).astype(np.uint8)
    assert np.array_equal(out[~mask], before[~mask])
    change = np.abs(out.astype(int) - before.astype(int))[mask].mean() / 255
    assert change > 0.04, f"{defect} barely visible: mean change {change:.3f}"


def test_deterministic_and_class_independent(tmp_path: Path) -> None:
    a = build_demo_dataset(tmp_path / "a", seed=5, **SMALL)
    b = build_demo_dataset(tmp_path / "b", seed=5, image_classes=("grass",), **SMALL)
    build_demo_dataset(tmp_path / "c", seed=6, image_classes=("grass",), **SMALL)
    assert a["classes"]["grass"] == b["classes"]["grass"]
    grass_a, grass_b = _digests(tmp_path / "a" / "grass"), _digests(tmp_path / "b" / "grass")
    assert grass_a == grass_b
    grass_c = _digests(tmp_path / "c" / "grass")
    assert grass_c.keys() == grass_a.keys()
    differing = [k for k in grass_a if k.endswith(".png") and grass_a[k] != grass_c[k]]
    assert len(differing) == sum(k.endswith(".png") for k in grass_a)


def test_existing_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    with pytest.raises(FileExistsError, match="demo"):
        build_demo_dataset(tmp_path / "demo", **SMALL)


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "demo"
    for stale in ("demo.partial", "demo.999999999.0badf00d.partial"):  # leftovers of killed builds
        root.with_name(stale).mkdir()
        (root.with_name(stale) / "junk.png").write_bytes(b"x")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "render_defect", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_demo_dataset(root, **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    build_demo_dataset(root, image_classes=("brick",), **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert not list(root.rglob("junk.png"))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"image_size": 32}, "image_size"),
        ({"n_train": 0}, "n_train"),
        ({"n_test_good": 0}, "n_test_good"),
        ({"n_test_per_defect": -1}, "n_test_per_defect"),
        ({"seed": -1}, "seed"),
        ({"image_classes": ("wood",)}, "image_classes"),
        ({"image_classes": ("brick", "brick")}, "image_classes"),
        ({"image_classes": ()}, "image_classes"),
    ],
)
def test_invalid_arguments_are_named(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build_demo_dataset(tmp_path / "demo", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_render_defect_rejects_unknown_category() -> None:
    with pytest.raises(ValueError, match="crack"):
        render_defect(np.zeros((64, 64, 3)), "crack", np.random.default_rng(0))


def test_demo_stays_independent_of_the_synthesiser() -> None:
    tree = ast.parse(Path(demo.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m == "uniadc" or m.startswith("uniadc.")]
