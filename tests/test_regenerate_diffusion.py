"""`uniadc regenerate` with the diffusion backends and the clip-region scorer, on tiny random local models."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import zarr
from typer.testing import CliRunner

from flows.cli import app
from storage.demo import build_demo_dataset
from tests.tiny_models import save_brushnet_folder, save_clip_folder, save_sd_folder, tiny_clip, tiny_unet

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    sd9 = save_sd_folder(root, in_channels=9)
    sd4 = save_sd_folder(root, in_channels=4)
    brush = save_brushnet_folder(root, tiny_unet(4))
    clip = save_clip_folder(root, tiny_clip())
    data = tmp_path_factory.mktemp("demo") / "data"
    build_demo_dataset(
        data, image_size=64, n_train=3, n_test_good=1, n_test_per_defect=1, image_classes=("brick",)
    )
    return {"sd9": sd9, "sd4": sd4, "brushnet": brush, "clip": clip, "data": data}


def _config(tmp_path: Path, models: dict[str, Path], backend: str) -> Path:
    pipeline = models["sd9"] if backend == "sd-inpaint" else models["sd4"]
    brush = f"\n    brushnet_path: {models['brushnet']}" if backend == "brushnet" else ""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""name: diff
dataset: {{kind: demo, root: {models["data"]}, image_class: brick}}
k_normal: 2
image_size: 64
synthesis:
  backend: {backend}
  samples_per_category: 2
  masks_per_sample: 2
  noise_factors: [0.5]
  diffusion:
    pipeline_path: {pipeline}{brush}
    steps: 2
    resolution: 64
    negative_steps: 2
selection:
  scorer: clip-region
  clip_model: local-dir:{models["clip"]}
  region_prompt: dim
""")
    return cfg


@pytest.mark.parametrize("backend", ["sd-inpaint", "brushnet"])
def test_regenerate_with_diffusion_and_clip_region(prefect_harness, tmp_path, models, backend):
    from flows.cli import regenerate

    store = tmp_path / "store"
    # the command function itself (CliRunner would hand Prefect's log handler a stream it closes afterwards)
    regenerate(config=_config(tmp_path, models, backend), store=store, overrides=None)
    groups = sorted(store.glob("diff/regenerate/*/samples.zarr"))
    assert len(groups) == 3  # scratch, stain, hole
    for g in groups:
        arrays = zarr.open_group(str(g), mode="r")
        assert (
            arrays["images"].shape == (2, 64, 64, 3) and arrays["masks"][:].reshape(2, -1).any(axis=1).all()
        )
        rows = pl.read_parquet(str(g.parent / "samples" / "*.parquet"))
        assert rows.height == 2 and rows["selection_score"].is_finite().all()
    assert (store / "diff" / "contact_sheet.png").is_file()


def test_missing_weights_path_is_one_line_before_any_work(tmp_path, models):
    cfg = _config(tmp_path, models, "sd-inpaint")
    cfg.write_text(cfg.read_text().replace(str(models["sd9"]), str(tmp_path / "nowhere")))
    store = tmp_path / "store"
    result = runner.invoke(app, ["regenerate", "--config", str(cfg), "--store", str(store)])
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and "nowhere" in text and "pipeline_path" in text, text
    assert not store.exists()
