"""ONNX export: parity of the two predict engines, metadata, refusals, and the README's plain-Python lines."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from schemas.config import DiscriminatorConfig
from storage.checkpoints import save_discriminator

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
NAMES = ["scratch", "stain", "hole"]


def _checkpoint(tmp: Path, backbone: str, size: int, calibrated: bool = True) -> Path:
    """A discriminator with a calibrated normal reference of two random tiles, saved as a checkpoint (parity
    does not need a trained head)."""
    from uniadc.discriminator import build_discriminator, image_features
    from uniadc.reference import ReferenceScorer
    from uniadc.reference.calibration import Calibration
    from uniadc.reference.views import dihedral_views

    config = DiscriminatorConfig(
        backbone=backbone, text_encoder="tiny", fusion_dim=16, clip_model="tiny-random"
    )
    model = build_discriminator(config, [[n] for n in NAMES], size, seed=0)
    rng = np.random.default_rng(0)
    views, owner, view = dihedral_views(rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8))
    model.reference = ReferenceScorer.from_features(image_features(model, views), owner, view)
    if calibrated:
        model.reference.set_calibration(Calibration(0.35, 0.04, "normal_max", 16, 0), 0.35)
    return save_discriminator(tmp / "train-0123456789ab" / "model.safetensors", model, NAMES)


def _images(folder: Path, size: int, n: int = 5) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(60, 200, (size, size, 3), dtype=np.uint8)
        img[10 : 10 + size // 4, 12 : 12 + size // 5] = 255 * (i % 2)  # a blob on some
        Image.fromarray(img).save(folder / f"tile{i}.png")
    return folder


@pytest.mark.parametrize(("backbone", "size"), [("tiny", 64), ("effnet-lite0", 128), ("clip", 64)])
def test_onnx_engine_matches_torch_engine(tmp_path, backbone, size):
    ckpt = _checkpoint(tmp_path, backbone, size)
    onnx_file = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", "--model", str(ckpt.parent), "--out", str(onnx_file)])
    assert result.exit_code == 0, result.output
    images = _images(tmp_path / "in", size)
    outs = {}
    for engine, model in (("torch", ckpt), ("onnx", onnx_file)):
        out = tmp_path / f"out-{engine}"
        args = [
            "predict",
            "--model",
            str(model),
            "--images",
            str(images),
            "--out",
            str(out),
            "--engine",
            engine,
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outs[engine] = out
    rows = {e: pl.read_parquet(o / "predictions.parquet").sort("image") for e, o in outs.items()}
    assert (
        rows["torch"]
        .select("image", "class_index", "class_name")
        .equals(rows["onnx"].select("image", "class_index", "class_name"))
    )
    np.testing.assert_allclose(rows["torch"]["image_score"], rows["onnx"]["image_score"], atol=1e-4)
    for i in range(5):
        a, b = (np.load(o / f"tile{i}_anomaly.npy") for o in outs.values())
        assert np.abs(a - b).max() <= 1e-4
        ca, cb = (np.asarray(Image.open(o / f"tile{i}_classes.png")) for o in outs.values())
        assert np.array_equal(ca, cb)
    fired = [np.asarray(Image.open(outs["torch"] / f"tile{i}_classes.png")).any() for i in range(5)]
    assert any(fired), "the comparison should include images with firing pixels"


def test_export_metadata_is_enough_to_decide(tmp_path):
    import onnx

    ckpt = _checkpoint(tmp_path, "tiny", 64)
    out = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", "--model", str(ckpt), "--out", str(out)]).exit_code == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["class_names"]) == ["normal", *NAMES]
    assert meta["threshold"] == "0.5" and "tau 0.35000" in meta["threshold_origin"]
    assert (
        meta["image_size"] == "64" and len(meta["config_hash"]) == 64 and len(meta["checkpoint_sha256"]) == 64
    )
    assert json.loads(meta["normalisation"])["mean"] == [0.485, 0.456, 0.406]
    assert "torch" in json.loads(meta["versions"])


def test_export_refuses_a_checkpoint_of_other_backbone_weights(tmp_path, monkeypatch):
    from uniadc.discriminator.model import Discriminator

    monkeypatch.setattr(Discriminator, "backbone_fingerprint", lambda self: "f" * 64)
    ckpt = _checkpoint(tmp_path, "tiny", 64)
    monkeypatch.undo()
    result = runner.invoke(app, ["export", "--model", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    text = result.output.strip()
    assert result.exit_code == 2 and "does not match" in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob("m.onnx*"))


def test_bad_export_and_engine_arguments_are_one_line(tmp_path):
    ckpt = _checkpoint(tmp_path, "tiny", 64)
    for args, needle in (
        (["export", "--model", str(ckpt), "--out", str(tmp_path / "m.txt")], "--out"),
        (["export", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.onnx")], "nowhere"),
        (
            ["predict", "--model", str(ckpt), "--images", str(tmp_path), "--out", "o", "--engine", "onnx"],
            ".onnx",
        ),
        (
            ["predict", "--model", str(ckpt), "--images", str(tmp_path), "--out", "o", "--engine", "tf"],
            "--engine",
        ),
    ):
        result = runner.invoke(app, args)
        text = result.output.strip()
        assert result.exit_code == 2 and needle in text and len(text.splitlines()) == 1, text


def test_readme_deploy_lines_run_without_this_package(tmp_path):
    """The README's plain-Python snippet, run as written next to an exported model, in a clean interpreter."""
    import subprocess
    import sys

    ckpt = _checkpoint(tmp_path, "tiny", 64)
    assert (
        runner.invoke(app, ["export", "--model", str(ckpt), "--out", str(tmp_path / "model.onnx")]).exit_code
        == 0
    )
    Image.open(_images(tmp_path / "in", 80, n=1) / "tile0.png").save(tmp_path / "tile.png")  # any size
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Deploy") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 14
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.modules['uniadc'] = None\n" + code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("score ") and (
        "normal" in done.stdout or any(n in done.stdout for n in NAMES)
    )
