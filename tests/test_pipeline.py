"""The pipeline flow (regenerate -> train -> evaluate -> report) on a tiny config, and `uniadc predict`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import zarr
from PIL import Image

from schemas.config import load_run_config
from storage.demo import build_demo_dataset
from tests.flow_helpers import task_states


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    build_demo_dataset(
        root, image_size=64, n_train=3, n_test_good=3, n_test_per_defect=2, image_classes=("grass",)
    )
    return root


@pytest.fixture(scope="module")
def pipeline_run(prefect_harness, tmp_path_factory, demo_root):
    from flows.pipeline import pipeline_flow

    store = tmp_path_factory.mktemp("store")
    cfg = load_run_config(
        None,
        data={
            "name": "tiny",
            "dataset": {"kind": "demo", "root": str(demo_root), "image_class": "grass"},
            "image_size": 64,
            "store": str(store),
            "synthesis": {"samples_per_category": 3, "masks_per_sample": 3, "noise_factors": [0.5]},
            "discriminator": {
                "backbone": "tiny",
                "text_encoder": "tiny",
                "iterations": 8,
                "batch_size": 4,
                "fusion_dim": 16,
            },
        },
    )
    state = pipeline_flow(cfg, return_state=True)
    return cfg, state


def test_pipeline_writes_every_stage_and_report(pipeline_run):
    cfg, state = pipeline_run
    manifests = state.result()
    root = Path(manifests["evaluate"].run_dir)
    metrics = pl.read_parquet(root / manifests["evaluate"].uris["metrics"])
    assert metrics.columns[:6] == ["image_class", "i_auc", "p_auc", "pro", "acc", "miou"]
    assert metrics.height == 2 and metrics["n_images"][0] == 3 + 3 * 2
    for col in ("i_auc", "p_auc", "pro", "acc", "miou"):
        assert 0.0 <= metrics[col][0] <= 1.0
    preds = pl.read_parquet(str(root / manifests["evaluate"].uris["predictions"] / "*.parquet"))
    assert preds.height == 9 and set(preds["label_name"]) == {"normal", "scratch", "stain", "hole"}
    maps = zarr.open_group(str(root / manifests["evaluate"].uris["zarr"]), mode="r")
    assert maps["anomaly_maps"].shape == (9, 64, 64)
    a = maps["anomaly_maps"][:]
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    per_category = pl.read_parquet(root / manifests["evaluate"].uris["category_metrics"])
    assert per_category["category"].to_list() == ["normal", "scratch", "stain", "hole", "mean"]
    assert per_category["n_images"].to_list() == [3, 2, 2, 2, 6]
    confusion = pl.read_parquet(root / manifests["evaluate"].uris["confusion"])
    assert confusion.height == 4 * 4 and confusion["images"].sum() == 9
    assert set(confusion["true_name"]) == {"normal", "scratch", "stain", "hole"}
    report = (root / "report.html").read_text()
    # every selected sample (3 per category) and every test image (4 pictures each), inlined
    assert report.count("<img") == 3 * 3 + 9 * 4 and "Per category" in report and "Confusion matrix" in report
    assert (root / manifests["model"].uris["checkpoint"]).is_file()
    states = task_states(state)
    assert set(states.values()) == {"Completed"}
    stable = {"split", "support", "regenerate-scratch", "regenerate-stain", "regenerate-hole", "train"}
    assert stable | {"evaluate", "report", "contact-sheet"} == set(states), states  # no random suffixes
    assert (root / "contact_sheet.png").is_file()  # the pipeline draws its own samples too


def test_pipeline_artifacts_have_stable_keys(pipeline_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def keys():
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="tiny-"))
            )
            return {a.key: a for a in found}

    found = asyncio.run(keys())
    assert {
        "tiny-metrics", "tiny-samples", "tiny-regenerate-progress", "tiny-summary", "tiny-samples-scratch",
        "tiny-samples-stain", "tiny-samples-hole", "tiny-train-progress", "tiny-evaluate-progress",
        "tiny-regenerate-scratch-progress",
    } <= set(found)  # fmt: skip
    assert found["tiny-train-progress"].data == 100.0 and found["tiny-evaluate-progress"].data == 100.0
    summary = found["tiny-summary"].data
    for needle in (
        "## Per category",
        "## Confusion matrix",
        "report.html",
        "![contact sheet](data:image/jpeg",
    ):
        assert needle in summary, needle
    assert summary.count("data:image/jpeg;base64,") == 1 + 4  # contact sheet + the four worst predictions


def test_pipeline_rerun_is_fully_cached(pipeline_run):
    from flows.pipeline import pipeline_flow

    cfg, _ = pipeline_run
    state = pipeline_flow(cfg, return_state=True)
    stages = {k: v for k, v in task_states(state).items() if not k.startswith(("contact-sheet", "report"))}
    assert stages and set(stages.values()) == {"Cached"}, stages


def test_predict_two_images(pipeline_run, tmp_path, demo_root):
    from flows.cli import predict_cmd

    cfg, state = pipeline_run
    images = tmp_path / "in"
    images.mkdir()
    for i, src in enumerate(sorted((demo_root / "grass" / "test" / "hole").glob("*.png"))[:2]):
        Image.open(src).save(images / f"img{i}.png")
    out = tmp_path / "out"
    predict_cmd(model=Path(cfg.store) / cfg.name, images=[str(images)], out=out, threshold=0.5)
    rows = pl.read_parquet(out / "predictions.parquet")
    assert rows.height == 2 and set(rows["image"]) == {"img0.png", "img1.png"}
    assert set(rows["class_name"]) <= {"normal", "scratch", "stain", "hole"}  # category names, not prompts
    for stem in ("img0", "img1"):
        assert np.load(out / f"{stem}_anomaly.npy").shape == (64, 64)
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert overlay.shape[0] > 64 and overlay.shape[1] == 64  # legend strip below the image
        assert np.asarray(Image.open(out / f"{stem}_classes.png")).max() <= 3


def test_predict_same_stem_files_glob_and_bad_image(pipeline_run, tmp_path, demo_root):
    """x.png and x.jpg get separate outputs; files, folders and globs mix; a corrupt input writes nothing."""
    from typer.testing import CliRunner

    from flows.cli import app

    cfg, _ = pipeline_run
    src = sorted((demo_root / "grass" / "test").glob("*/*.png"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.open(src[0]).save(a / "x.png")
    Image.open(src[1]).convert("RGB").save(a / "x.jpg")
    Image.open(src[2]).save(b / "x.png")  # same file name in another folder
    train_dir = next((Path(cfg.store) / cfg.name).glob("train-*"))
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["predict", "--model", str(train_dir), "--out", str(out)]
    result = runner.invoke(app, [*args, "--images", str(a), "--images", str(tmp_path / "b" / "*.png")])
    assert result.exit_code == 0, result.output
    rows = pl.read_parquet(out / "predictions.parquet")
    assert rows.height == 3 and rows["output"].n_unique() == 3
    assert sorted(rows["output"]) == ["x_jpg", "x_png", "x_png-2"]
    assert len(list(out.glob("*_anomaly.npy"))) == 3

    (a / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    fresh = tmp_path / "fresh"
    result = runner.invoke(
        app, ["predict", "--model", str(train_dir), "--out", str(fresh), "--images", str(a)]
    )
    assert result.exit_code == 2 and "y.png" in result.output and "Traceback" not in result.output
    assert not fresh.exists() and not list(tmp_path.glob("fresh*"))
    # an earlier output is replaced whole, not mixed with the new one
    result = runner.invoke(app, [*args, "--images", str(src[3])])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out / "predictions.parquet").height == 1 and len(list(out.glob("*.npy"))) == 1
    # a folder that is not a predict output is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    result = runner.invoke(
        app, ["predict", "--model", str(train_dir), "--out", str(other), "--images", str(b)]
    )
    assert result.exit_code == 2 and "not a uniadc predict output" in result.output
    assert (other / "keep.txt").read_text() == "mine"


def test_exported_demo_model_matches_its_checkpoint(pipeline_run, tmp_path, demo_root):
    """The trained demo model (tiny backbone, reference bank, calibration) through both predict engines."""
    from typer.testing import CliRunner

    from flows.cli import app

    cfg, _ = pipeline_run
    runner = CliRunner()
    run_dir = Path(cfg.store) / cfg.name
    onnx_file = tmp_path / "demo.onnx"
    result = runner.invoke(app, ["export", "--model", str(run_dir), "--out", str(onnx_file)])
    assert result.exit_code == 0, result.output
    images = str(demo_root / "grass" / "test" / "*" / "*.png")
    outs = []
    for engine, model in (("torch", run_dir), ("onnx", onnx_file)):
        out = tmp_path / engine
        args = ["predict", "--model", str(model), "--images", images, "--out", str(out), "--engine", engine]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outs.append(out)
    a, b = (pl.read_parquet(o / "predictions.parquet").sort("path") for o in outs)
    assert a.height >= 6 and a["class_name"].to_list() == b["class_name"].to_list()
    for name in a["output"]:
        assert (
            np.abs(np.load(outs[0] / f"{name}_anomaly.npy") - np.load(outs[1] / f"{name}_anomaly.npy")).max()
            <= 1e-4
        )
        assert np.array_equal(
            np.asarray(Image.open(outs[0] / f"{name}_classes.png")),
            np.asarray(Image.open(outs[1] / f"{name}_classes.png")),
        )
