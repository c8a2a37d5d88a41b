"""support.foreground: onnx — any salient-object ONNX model (BiRefNet-class) with its input size and
normalisation from the config, tested with a tiny model built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uniadc.foreground import ForegroundEstimator, check_onnx_model
from uniadc.synthesis.runtime import WeightsError


def tiny_saliency_onnx(path: Path) -> Path:
    """logits = mean over the 3 normalised channels: a pixel is foreground where it is brighter than the mean."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, None, None])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, None, None])
    node = helper.make_node("ReduceMean", ["image"], ["logits"], axes=[1], keepdims=1)
    model = helper.make_model(
        helper.make_graph([node], "tiny", [x], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def model(tmp_path) -> Path:
    return tiny_saliency_onnx(tmp_path / "tiny.onnx")


def test_onnx_foreground_uses_the_configured_size_and_normalisation(model):
    image = np.full((1, 40, 60, 3), 20, np.uint8)
    image[:, :, :30] = 230  # bright left half: (230/255 - 0.5) / 0.25 > 0
    est = ForegroundEstimator(model, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, scale="unit",
                              activation="sigmoid")  # fmt: skip
    mask = est(image)[0]
    assert mask.shape == (40, 60)
    assert mask[:, :28].all() and not mask[:, 32:].any()
    # with a mean above the bright value nothing is foreground: the normalisation is really applied
    dark = ForegroundEstimator(model, input_size=32, mean=(0.95,) * 3, std=(0.25,) * 3, scale="unit",
                               activation="sigmoid")  # fmt: skip
    assert not dark(image).any()


def test_bad_model_files_are_one_line_errors(tmp_path):
    with pytest.raises(WeightsError, match=r"support.foreground_onnx: .*nope.onnx: no such model file"):
        check_onnx_model(tmp_path / "nope.onnx", "support.foreground_onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(WeightsError, match="not an ONNX model"):
        check_onnx_model(junk, "support.foreground_onnx")


def test_config_requires_the_model_file():
    from schemas.config import ConfigError, load_run_config

    with pytest.raises(ConfigError, match="support.foreground_onnx: a model file is required"):
        load_run_config(
            None, data={"dataset": {"kind": "demo", "root": "x"}, "support": {"foreground": "onnx"}}
        )


def test_support_stage_writes_the_onnx_foregrounds(prefect_harness, tmp_path, model):
    import zarr

    from flows.data import run_split
    from flows.regenerate import run_support
    from schemas.config import load_run_config
    from storage.demo import build_demo_dataset

    root = tmp_path / "data"
    build_demo_dataset(
        root, image_size=64, n_train=3, n_test_good=1, n_test_per_defect=1, image_classes=("brick",)
    )
    support = {
        "foreground": "onnx",
        "foreground_onnx": str(model),
        "foreground_size": 32,
        "foreground_mean": [0.45] * 3,
        "foreground_std": [0.1] * 3,
    }
    data = {
        "name": "fg",
        "dataset": {"kind": "demo", "root": str(root), "image_class": "brick"},
        "image_size": 64,
        "store": str(tmp_path / "store"),
        "support": support,
    }
    cfg = load_run_config(None, data=data)
    from prefect import flow

    @flow
    def f():
        return run_support(cfg, run_split(cfg))

    manifest = f()
    g = zarr.open_group(str(Path(manifest.run_dir) / manifest.uris["zarr"]), mode="r")
    images, fgs = g["images"][:], g["foregrounds"][:]
    expected = ForegroundEstimator(model, input_size=32, mean=(0.45,) * 3, std=(0.1,) * 3, scale="unit",
                                   activation="sigmoid")(images)  # fmt: skip
    assert np.array_equal(fgs, expected) and 0 < fgs.mean() < 1


def test_run_preflight_names_the_missing_model(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from storage.demo import build_demo_dataset

    root = tmp_path / "data"
    build_demo_dataset(
        root, image_size=64, n_train=3, n_test_good=1, n_test_per_defect=1, image_classes=("brick",)
    )
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    result = CliRunner().invoke(app, ["run", "-c", str(config), "--store", str(tmp_path / "s"),
                                      "--set", f"dataset.root={root}", "--set", "support.foreground=onnx",
                                      "--set", f"support.foreground_onnx={tmp_path / 'birefnet.onnx'}"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert (
        "support.foreground_onnx:" in result.output and "birefnet.onnx: no such model file" in result.output
    )
    assert not (tmp_path / "s").exists()
