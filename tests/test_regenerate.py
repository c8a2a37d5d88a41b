"""The regenerate flow on a tiny demo dataset: outputs, caching per category, determinism, crash resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
import zarr

from schemas.config import load_run_config
from storage.demo import build_demo_dataset
from tests.flow_helpers import task_states

N = 4


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    build_demo_dataset(
        root, image_size=64, n_train=3, n_test_good=2, n_test_per_defect=2, image_classes=("brick",)
    )
    return root


def _config(tmp: Path, demo_root: Path, store: Path, seed: int = 0, priors: Path | None = None):
    data = {
        "name": "t",
        "dataset": {"kind": "demo", "root": str(demo_root), "image_class": "brick"},
        "k_normal": 2,
        "seed": seed,
        "image_size": 64,
        "store": str(store),
        "synthesis": {"samples_per_category": N, "masks_per_sample": 3, "noise_factors": [0.5]},
    }
    if priors is not None:
        data["dataset"]["priors"] = str(priors)
    return load_run_config(None, data=data)


def _samples(manifests) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for m in manifests:
        g = zarr.open_group(str(Path(m.run_dir) / m.uris["zarr"]), mode="r")
        out[m.key] = (g["images"][:], g["masks"][:])
    return out


def test_regenerate_outputs_cache_and_prior_edit(prefect_harness, tmp_path, demo_root):
    from flows.regenerate import regenerate_flow

    priors = tmp_path / "priors.yaml"
    priors.write_text((demo_root / "brick" / "priors.yaml").read_text())
    cfg = _config(tmp_path, demo_root, tmp_path / "store", priors=priors)

    state = regenerate_flow(cfg, return_state=True)
    manifests = state.result()
    first = task_states(state)
    assert set(first.values()) == {"Completed"}, first
    assert {m.key for m in manifests} == {"scratch", "stain", "hole"}
    for m in manifests:  # plain zarr + polars, no project code
        rows = pl.scan_parquet(str(Path(m.run_dir) / m.uris["rows"] / "*.parquet")).collect()
        assert rows.height == N and rows["sample_id"].n_unique() == N
        g = zarr.open_group(str(Path(m.run_dir) / m.uris["zarr"]), mode="r")
        assert g["images"].shape == (N, 64, 64, 3) and g["masks"][:].reshape(N, -1).any(axis=1).all()
        assert "git_sha" in g.attrs and "config" in g.attrs
    assert (Path(manifests[0].run_dir) / "contact_sheet.png").is_file()
    # the cache travels with the store: records and persisted results both live inside it
    assert len(list((tmp_path / "store" / ".cache").iterdir())) >= 5
    assert len(list((tmp_path / "store" / ".results").iterdir())) >= 5

    state = regenerate_flow(cfg, return_state=True)
    second = task_states(state)
    stage_runs = {k: v for k, v in second.items() if not k.startswith("contact-sheet")}
    assert set(stage_runs.values()) == {"Cached"}, second

    data = yaml.safe_load(priors.read_text())
    for cat in data["categories"]:
        if cat["name"] == "stain":
            cat["descriptions"] = ["a large dark stain"]
    priors.write_text(yaml.safe_dump(data))
    state = regenerate_flow(cfg, return_state=True)
    third = task_states(state)
    recomputed = sorted(k for k, v in third.items() if v == "Completed" and not k.startswith("contact-sheet"))
    assert recomputed == ["regenerate-stain"], third


def test_same_seed_identical_other_seed_different(prefect_harness, tmp_path, demo_root):
    from flows.regenerate import regenerate_flow

    a = _samples(regenerate_flow(_config(tmp_path, demo_root, tmp_path / "a", seed=1)))
    b = _samples(regenerate_flow(_config(tmp_path, demo_root, tmp_path / "b", seed=1)))
    c = _samples(regenerate_flow(_config(tmp_path, demo_root, tmp_path / "c", seed=2)))
    for k in a:
        assert a[k][0].tobytes() == b[k][0].tobytes() and a[k][1].tobytes() == b[k][1].tobytes()
        assert a[k][1].tobytes() != c[k][1].tobytes()


_CHILD = """
import sys, pickle
from tasks.regenerate import regenerate_category
args = pickle.load(open(sys.argv[1], "rb"))
regenerate_category.fn(*args)
"""


def test_kill_9_then_rerun_gives_exactly_n_samples(prefect_harness, tmp_path, demo_root):
    import pickle

    from prefect import flow

    from flows.data import run_split
    from flows.regenerate import run_support
    from storage.priors import load_run_priors
    from tasks.regenerate import category_key, regenerate_category

    n = 12
    cfg = _config(tmp_path, demo_root, tmp_path / "store")
    cfg = cfg.model_copy(update={"synthesis": cfg.synthesis.model_copy(update={"samples_per_category": n})})

    @flow
    def prep():
        return run_support(cfg, run_split(cfg))

    support = prep()
    priors = load_run_priors(cfg)
    key = category_key(cfg, priors, "hole", support)
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps((cfg, priors, "hole", support, key)))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(args)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    rows_dir = Path(support.run_dir) / "regenerate"
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        parts = list(rows_dir.glob("hole-*/samples/part-*.parquet"))
        if parts:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the child finished before it could be killed; make the run longer"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    committed = pl.read_parquet([str(p) for p in rows_dir.glob("hole-*/samples/part-*.parquet")])
    assert 0 < committed.height < n

    manifest = regenerate_category.fn(cfg, priors, "hole", support, key)
    rows = pl.read_parquet(str(Path(manifest.run_dir) / manifest.uris["rows"] / "*.parquet"))
    assert rows.height == n and rows["zarr_index"].sort().to_list() == list(range(n))
    assert rows["sample_id"].n_unique() == n
    assert not list(rows_dir.glob("hole-*/samples/*.partial"))
    images = zarr.open_group(str(Path(manifest.run_dir) / manifest.uris["zarr"]), mode="r")["masks"][:]
    assert images.reshape(n, -1).any(axis=1).all()  # no empty (never-written) sample is visible

    # identical to an uninterrupted run in a fresh store
    fresh = cfg.model_copy(update={"store": str(tmp_path / "fresh")})

    @flow
    def prep_fresh():
        return run_support(fresh, run_split(fresh))

    s2 = prep_fresh()
    m2 = regenerate_category.fn(fresh, priors, "hole", s2, category_key(fresh, priors, "hole", s2))
    g1 = zarr.open_group(str(Path(manifest.run_dir) / manifest.uris["zarr"]), mode="r")
    g2 = zarr.open_group(str(Path(m2.run_dir) / m2.uris["zarr"]), mode="r")
    assert g1["images"][:].tobytes() == g2["images"][:].tobytes()
