"""The CLI: bad input is one line naming the file or field, exit 2, no traceback, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import MTD_ROOT
from tests.helpers import make_mvtec, write_priors

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def _assert_user_error(result, *needles: str):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    for n in needles:
        assert n in text, text


def test_help():
    result = _run("--help")
    assert result.exit_code == 0 and "priors" in result.output and "data" in result.output


def test_prior_with_hexagon(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "dataset: d\nimage_class: c\ncategories:\n  - name: a\n    descriptions: [x]\n    shapes: [hexagon]\n"
    )
    _assert_user_error(_run("priors", "validate", str(f)), "p.yaml", "categories.[0].shapes.[0]", "hexagon")


def test_priors_validate_repository_files():
    result = _run("priors", "validate", "priors")
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") >= 20


def _config(tmp_path, root, store):
    priors = write_priors(tmp_path / "p.yaml", "widget", ["dent", "scratch"])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"name: t\ndataset: {{kind: mvtec, root: {root}, image_class: widget, priors: {priors}}}\n"
        f"store: {store}\n"
    )
    return cfg


def test_truncated_jpeg(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    bad = root / "widget" / "test" / "good" / "901.jpg"
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:150])
    _assert_user_error(
        _run("data", "inspect", "--kind", "mvtec", "--root", str(root), "--image-class", "widget"),
        "901.jpg",
        "cannot decode",
    )
    store = tmp_path / "store"
    _assert_user_error(_run("data", "split", "--config", str(_config(tmp_path, root, store))), "901.jpg")
    assert not store.exists()


def test_mask_size_differs(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(
        root / "widget" / "ground_truth" / "dent" / "000_mask.png"
    )
    _assert_user_error(
        _run("data", "inspect", "--kind", "mvtec", "--root", str(root), "--image-class", "widget"),
        "000_mask.png",
        "differs from its image",
    )


def test_image_class_with_zero_images(tmp_path):
    (tmp_path / "ds" / "empty" / "train" / "good").mkdir(parents=True)
    _assert_user_error(
        _run("data", "inspect", "--kind", "mvtec", "--root", str(tmp_path / "ds"), "--image-class", "empty"),
        "zero images",
    )


def test_bad_override_is_a_field_error(tmp_path):
    root = make_mvtec(tmp_path / "ds")
    store = tmp_path / "store"
    _assert_user_error(
        _run("data", "split", "--config", str(_config(tmp_path, root, store)), "--set", "k_normal=-1"),
        "k_normal",
    )
    _assert_user_error(
        _run(
            "data", "split", "--config", str(_config(tmp_path, root, store)), "--set", "synthesis.colour=red"
        ),
        "synthesis.colour",
    )
    assert not store.exists()


@pytest.mark.mtd
def test_inspect_mtd_counts():
    result = _run("data", "inspect", "--kind", "mtd", "--root", str(MTD_ROOT))
    assert result.exit_code == 0, result.output
    for name, n in {
        "Blowhole": 115,
        "Break": 85,
        "Crack": 57,
        "Fray": 32,
        "Uneven": 103,
        "normal (MT_Free)": 952,
    }.items():
        assert any(
            line.split("│")[1:3]
            and line.split("│")[1].strip() == name
            and line.split("│")[2].strip() == str(n)
            for line in result.output.splitlines()
            if "│" in line
        ), (name, result.output)
