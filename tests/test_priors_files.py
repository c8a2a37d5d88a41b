"""The priors/ YAML files: every one validates, and they say what the paper and the official configs say."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.priors import PriorsError, load_priors

PRIORS = Path(__file__).resolve().parents[1] / "priors"
MTD_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mtd"
ALL_FILES = sorted(PRIORS.rglob("*.yaml"))

MVTEC = {
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
}
WFDD = {"grey_cloth", "grid_cloth", "pink_flower", "yellow_cloth"}
MTD_NAMES = ["Blowhole", "Break", "Crack", "Fray", "Uneven"]


def test_priors_folder_has_files() -> None:
    assert len(ALL_FILES) == 1 + len(MVTEC) + len(WFDD)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_priors_file_validates_and_matches_its_path(path: Path) -> None:
    priors = load_priors(path)
    assert priors.dataset == path.parent.name
    assert priors.image_class == path.stem
    for prior in priors.categories:
        assert prior.mask_types(), f"{path}: {prior.name} allows no mask type"


def test_class_counts() -> None:
    assert {p.stem for p in (PRIORS / "mvtec").glob("*.yaml")} == MVTEC
    assert {p.stem for p in (PRIORS / "wfdd").glob("*.yaml")} == WFDD
    # the official configs hold 69 MVTec and 13 WFDD categories
    assert sum(len(load_priors(p).categories) for p in (PRIORS / "mvtec").glob("*.yaml")) == 69
    assert sum(len(load_priors(p).categories) for p in (PRIORS / "wfdd").glob("*.yaml")) == 13


def test_mtd_priors_follow_table_s1() -> None:
    priors = load_priors(PRIORS / "mtd" / "magnetic_tile.yaml")
    assert (priors.dataset, priors.image_class) == ("mtd", "magnetic_tile")
    assert priors.names == MTD_NAMES
    blowhole = priors.category("Blowhole")
    assert (blowhole.shapes, blowhole.sizes) == (("ellipse",), ("small",))
    assert blowhole.descriptions == ("Black hole",)
    for name in ("Break", "Crack"):
        assert priors.category(name).sizes == ("small",)
    for name in ("Fray", "Uneven"):
        assert priors.category(name).sizes == ("large",)
    # the procedural synthesiser needs a typed appearance for every MTD category
    assert all(p.appearance is not None for p in priors.categories)
    assert blowhole.appearance.tone == "darker" and blowhole.appearance.edge == "sharp"
    assert priors.category("Uneven").appearance.edge == "soft"


@pytest.mark.mtd
@pytest.mark.skipif(not MTD_DATA.is_dir(), reason="MTD dataset not present")
def test_mtd_names_match_dataset_folders() -> None:
    folders = {p.name.removeprefix("MT_") for p in MTD_DATA.glob("MT_*") if p.is_dir()}
    assert folders - {"Free"} == set(MTD_NAMES)


def test_mvtec_and_wfdd_leave_appearance_random() -> None:
    for path in [*(PRIORS / "mvtec").glob("*.yaml"), *(PRIORS / "wfdd").glob("*.yaml")]:
        assert all(p.appearance is None for p in load_priors(path).categories), path


def test_transcription_rules() -> None:
    cable = load_priors(PRIORS / "mvtec" / "cable.yaml")
    missing = cable.category("missing_cable")
    assert missing.shapes == ("foreground",) and missing.negative_prompt == "cables"
    assert cable.category("poke_insulation").ignore_foreground
    assert not cable.category("bent_wire").ignore_foreground
    assert cable.category("bent_wire").shapes == () and cable.category("bent_wire").sizes == ()
    assert load_priors(PRIORS / "mvtec" / "capsule.yaml").category("faulty_imprint").descriptions == (
        "font misprint",
        "font error",
    )
    brush = load_priors(PRIORS / "mvtec" / "toothbrush.yaml").category("defective")
    assert set(brush.shapes) == {"polygon", "ellipse", "line"}
    assert set(brush.sizes) == {"large", "medium", "small"}
    assert len(brush.descriptions) == 4
    carpet_thread = load_priors(PRIORS / "mvtec" / "carpet.yaml").category("thread")
    assert set(carpet_thread.mask_types()) == {
        ("line", "medium"),
        ("line", "small"),
        ("hollow_ellipse", "medium"),
        ("hollow_ellipse", "small"),
    }
    screw = load_priors(PRIORS / "mvtec" / "screw.yaml")
    assert all(set(p.sizes) == {"small", "medium"} and p.shapes == () for p in screw.categories)
    fold = load_priors(PRIORS / "wfdd" / "yellow_cloth.yaml").category("fold")
    assert fold.shapes == ("line",)
    assert load_priors(PRIORS / "wfdd" / "yellow_cloth.yaml").category("string").shapes == ("random_brush",)


def _write(tmp_path: Path, category_yaml: str, second: str = "") -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(f"dataset: x\nimage_class: y\ncategories:\n{category_yaml}{second}")
    return path


@pytest.mark.parametrize(
    ("category", "field", "value"),
    [
        ("  - name: a\n    descriptions: [ok]\n    shapes: [ellipse, hexagon]\n", "shapes", "'hexagon'"),
        ("  - name: a\n    descriptions: [ok]\n    sizes: [huge]\n", "sizes", "'huge'"),
        ("  - name: a\n    descriptions: [ok, '']\n", "descriptions", "''"),
    ],
    ids=["shape", "size", "empty-description"],
)
def test_bad_category_names_file_field_and_value(
    tmp_path: Path, category: str, field: str, value: str
) -> None:
    path = _write(tmp_path, category)
    with pytest.raises(PriorsError) as info:
        load_priors(path)
    message = str(info.value)
    assert str(path) in message
    assert f"categories.[0].{field}" in message or f"categories[0].{field}" in message
    assert value in message


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    first = "  - name: dent\n    descriptions: [a dent]\n"
    path = _write(tmp_path, first, "  - name: dent\n    descriptions: [b]\n")
    with pytest.raises(PriorsError) as info:
        load_priors(path)
    message = str(info.value)
    assert str(path) in message and "categories" in message and "'dent'" in message
