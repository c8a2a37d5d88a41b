from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from schemas.config import RunConfig
from storage.datasets import scan_dataset
from storage.errors import DataError
from storage.images import read_image, read_mask
from storage.split import draw_split, split_table
from tests.helpers import make_mtd, make_mvtec


def test_mvtec_layout_uniform_view(tmp_path):
    root = make_mvtec(tmp_path)
    recs = scan_dataset("mvtec", root, "widget")
    assert len(recs) == 5 + 3 + 6
    dent = [r for r in recs if r.label_name == "dent"]
    assert {r.label_index for r in dent} == {1} and all(r.mask_path for r in dent)
    assert all(r.mask_path is None and r.label_index == 0 for r in recs if r.label_name == "normal")
    # priors order decides label indices
    recs2 = scan_dataset("mvtec", root, "widget", categories=["scratch", "dent"])
    assert {r.label_index for r in recs2 if r.label_name == "dent"} == {2}


def test_mvtec_unknown_defect_folder(tmp_path):
    root = make_mvtec(tmp_path)
    with pytest.raises(DataError, match=r"\['scratch'\] are not categories"):
        scan_dataset("mvtec", root, "widget", categories=["dent"])


def test_mtd_layout(tmp_path):
    root = make_mtd(tmp_path)
    recs = scan_dataset("mtd", root)
    assert sum(r.label_name == "normal" for r in recs) == 6
    assert {r.label_name for r in recs} == {"normal", "Blowhole", "Crack"}
    assert all(r.image_class == "magnetic_tile" for r in recs)


def test_zero_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="zero images"):
        scan_dataset("mvtec", tmp_path, "empty")
    make_mtd(tmp_path / "m", counts={"Free": 2, "Crack": 0})
    with pytest.raises(DataError, match="MT_Crack/Imgs: image class folder has zero images"):
        scan_dataset("mtd", tmp_path / "m")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "1"])
def test_any_image_mode_becomes_uint8_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert(mode)
    img.save(tmp_path / "x.png")
    arr = read_image(tmp_path / "x.png")
    assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8


def test_mask_binarised_above_127_and_size_checked(tmp_path):
    Image.fromarray(np.array([[0, 127], [128, 255]], np.uint8)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[False, False], [True, True]]
    with pytest.raises(DataError, match="mask size 2x2 differs from its image 3x2"):
        read_mask(tmp_path / "m.png", expected_hw=(2, 3))


def test_truncated_jpeg_names_the_file(tmp_path):
    p = tmp_path / "t.jpg"
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataError, match=r"t\.jpg: cannot decode image"):
        read_image(p)


def _cfg(**kw):
    return RunConfig.model_validate(
        {"dataset": {"kind": "mvtec", "root": "x", "image_class": "widget"}, **kw}
    )


def test_split_seeded_disjoint_and_recorded(tmp_path):
    recs = scan_dataset("mvtec", make_mvtec(tmp_path), "widget")
    cfg = _cfg(setting="few_shot", k_normal=2, k_anomaly=1, seed=3)
    a, b = draw_split(recs, cfg), draw_split(recs, cfg)
    assert a == b
    support = [k for k, v in a.items() if v == "support"]
    assert len(support) == 2 + 2 and all(
        k.startswith("train/") or "/dent/" in k or "/scratch/" in k for k in support
    )
    assert not any(k.startswith("train/") for k, v in a.items() if v == "test")  # train pool never tested
    others = [draw_split(recs, _cfg(setting="few_shot", k_normal=2, k_anomaly=1, seed=s)) for s in range(6)]
    assert len({tuple(sorted(o.items())) for o in others}) > 1
    table = split_table(recs, cfg)
    assert set(table.column("split").to_pylist()) == {"support", "test"}
    assert set(table.column("seed").to_pylist()) == {3}


def test_mtd_split_unused_normals_are_tested(tmp_path):
    recs = scan_dataset("mtd", make_mtd(tmp_path))
    cfg = RunConfig.model_validate({"dataset": {"kind": "mtd", "root": "x"}, "k_normal": 2})
    s = draw_split(recs, cfg)
    normals = [k for k in s if k.startswith("MT_Free/")]
    assert len(normals) == 6 and sum(s[k] == "support" for k in normals) == 2
    assert all(v == "test" for k, v in s.items() if not k.startswith("MT_Free/"))


def test_split_refuses_too_few(tmp_path):
    recs = scan_dataset("mvtec", make_mvtec(tmp_path), "widget")
    with pytest.raises(DataError, match="k_normal: 9"):
        draw_split(recs, _cfg(k_normal=9))
    with pytest.raises(DataError, match=r"k_anomaly: 3 .*at least one must stay"):
        draw_split(recs, _cfg(setting="few_shot", k_anomaly=3))


def test_few_shot_support_never_draws_an_empty_mask(tmp_path):
    """MTD ships defect images whose mask is empty; they stay in the test set and are never support."""
    root = make_mtd(tmp_path, {"Free": 6, "Blowhole": 4, "Crack": 3})
    empty = ["exp_0", "exp_1", "exp_2"]
    for stem in empty:
        Image.new("L", (32, 32), 0).save(root / "MT_Blowhole" / "Imgs" / f"{stem}.png")
    recs = scan_dataset("mtd", root)
    for seed in range(8):
        cfg = RunConfig.model_validate(
            {
                "dataset": {"kind": "mtd", "root": "x"},
                "setting": "few_shot",
                "k_normal": 1,
                "k_anomaly": 1,
                "seed": seed,
            }
        )
        s = draw_split(recs, cfg)
        assert s["MT_Blowhole/exp_3"] == "support"  # the only Blowhole with a defect in its mask
        assert all(s[f"MT_Blowhole/{stem}"] == "test" for stem in empty)
    cfg2 = RunConfig.model_validate(
        {"dataset": {"kind": "mtd", "root": "x"}, "setting": "few_shot", "k_normal": 1, "k_anomaly": 2}
    )
    with pytest.raises(DataError, match=r"only 1 have a non-empty mask"):
        draw_split(recs, cfg2)
