"""The store on S3: a real S3 API (moto's server) on 127.0.0.1, a fresh bucket per test.

End to end with ``store: s3://…`` (options from the config, then from the environment alone via the CLI), a
cached rerun, the outputs read back with plain zarr + polars given only the URL and options, and kill -9 +
resume on S3 yielding exactly the uninterrupted samples.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from schemas.config import load_run_config
from storage.demo import build_demo_dataset
from storage.store_check import sample_problems, samples_digest
from tests.flow_helpers import task_states

pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")
pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[s3]')")
pytest.importorskip("upath", reason="universal-pathlib is not installed (pip install -e '.[s3]')")

from tests.moto_s3 import MotoS3  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
TINY = {
    "name": "tiny",
    "image_size": 64,
    "synthesis": {"samples_per_category": 6, "masks_per_sample": 2, "noise_factors": [0.5]},
    "discriminator": {
        "backbone": "tiny",
        "text_encoder": "tiny",
        "iterations": 8,
        "batch_size": 4,
        "fusion_dim": 16,
    },
}


@pytest.fixture(scope="module")
def s3():
    with MotoS3() as server:
        yield server


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    build_demo_dataset(
        root, image_size=64, n_train=3, n_test_good=3, n_test_per_defect=2, image_classes=("brick",)
    )
    return root


def _data(demo_root: Path, store: str, **extra) -> dict:
    return {
        **TINY,
        "dataset": {"kind": "demo", "root": str(demo_root), "image_class": "brick"},
        "store": store,
        **extra,
    }


@pytest.fixture(scope="module")
def local_run(prefect_harness, tmp_path_factory, demo_root):
    """The same tiny pipeline on a local store: what the S3 store must hold byte for byte."""
    from flows.pipeline import pipeline_flow

    cfg = load_run_config(None, data=_data(demo_root, str(tmp_path_factory.mktemp("local"))))
    return pipeline_flow(cfg)


def _without_aws_env(monkeypatch) -> None:
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)


def test_pipeline_on_s3_with_config_options_caches_and_reads_back_without_project_code(
    s3, local_run, demo_root, monkeypatch, tmp_path
):
    """``storage_options`` in the config only (no AWS variables): the pipeline completes, a rerun is fully
    cached, every output lives under the URL, and plain zarr + polars read the samples back equal to a local
    store's."""
    import zarr

    from flows.pipeline import pipeline_flow

    _without_aws_env(monkeypatch)
    bucket = s3.bucket()
    url = f"s3://{bucket}/plant/line-1"
    cfg = load_run_config(None, data=_data(demo_root, url, storage_options=s3.options))
    assert cfg.store == url and "testing" not in cfg.to_json()  # credentials never enter the recorded config
    state = pipeline_flow(cfg, return_state=True)
    manifests = state.result()
    assert manifests["evaluate"].run_dir == f"{url}/tiny"

    fs = s3.filesystem()
    keys = fs.find(f"{bucket}/plant/line-1")
    names = {k.split("/", 3)[3] for k in keys}
    for needle in ("tiny/report.html", "tiny/contact_sheet.png"):
        assert needle in names, sorted(names)[:20]
    for prefix in (
        ".cache/",
        ".results/",
        "tiny/train-",
        "tiny/evaluate-",
        "tiny/regenerate/",
        "tiny/completed/",
    ):
        assert any(n.startswith(prefix) for n in names), prefix
    assert any(n.endswith("model.safetensors") for n in names)
    assert not any(".partial" in n for n in names)
    for k in keys:  # nothing written holds the secret
        if k.endswith((".json", ".html")):
            assert b"testing" not in fs.cat_file(k), k

    rerun = pipeline_flow(cfg, return_state=True)
    stages = {k: v for k, v in task_states(rerun).items() if not k.startswith(("contact-sheet", "report"))}
    assert stages and set(stages.values()) == {"Cached"}, stages

    # read back with zarr and polars alone, given the URL and the options
    local = {m.key: m for m in local_run.values() if m.stage == "regenerate"}
    remote = {m.key: m for m in manifests.values() if m.stage == "regenerate"}
    assert set(local) == set(remote) == {"scratch", "stain", "hole"}
    for category, m in remote.items():
        group = zarr.open_group(f"{m.run_dir}/{m.uris['zarr']}", mode="r", storage_options=s3.options)
        here = zarr.open_group(f"{local[category].run_dir}/{local[category].uris['zarr']}", mode="r")
        for name in ("images", "masks", "class_masks"):
            assert np.array_equal(np.asarray(group[name][:]), np.asarray(here[name][:])), (category, name)
        rows = pl.read_parquet(
            f"{m.run_dir}/{m.uris['rows']}/*.parquet", storage_options=s3.polars_options
        ).sort("zarr_index")
        local_rows = pl.read_parquet(f"{local[category].run_dir}/{local[category].uris['rows']}/").sort(
            "zarr_index"
        )
        assert rows.height == 6
        assert rows.drop("created_at", "config_hash").equals(local_rows.drop("created_at", "config_hash"))
    metrics = pl.read_parquet(
        f"{url}/tiny/{manifests['evaluate'].uris['metrics']}", storage_options=s3.polars_options
    )
    here = pl.read_parquet(Path(local_run["evaluate"].run_dir) / local_run["evaluate"].uris["metrics"])
    assert metrics.equals(here)

    # the checkpoint in the bucket serves `uniadc predict --model <run folder URL>`
    from typer.testing import CliRunner

    from flows.cli import app

    image = sorted((demo_root / "brick" / "test" / "good").glob("*.png"))[0]
    r = CliRunner().invoke(
        app, ["predict", "--model", f"{url}/tiny", "--images", str(image), "--out", str(tmp_path / "p")]
    )
    assert r.exit_code == 0, r.output
    assert f"{url}/tiny/train-" in r.output and (tmp_path / "p" / "predictions.parquet").is_file()


def _cli(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_store_url_with_the_aws_environment_alone(s3, demo_root, tmp_path):
    """``--store s3://bucket/prefix`` and the standard AWS variables, nothing in the config: regenerate runs,
    a second run computes nothing, ``store gc`` works on the bucket, and a bad bucket is one line."""
    from storage.paths import register_store

    bucket = s3.bucket()
    config = tmp_path / "tiny.yaml"
    data = _data(demo_root, "unused")
    del data["store"]
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect"), **s3.env}
    url = f"s3://{bucket}/nightly"
    r = _cli(["regenerate", "--config", str(config), "--store", url], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"contact sheet: {url}/tiny/contact_sheet.png" in r.stdout + r.stderr
    r2 = _cli(["regenerate", "--config", str(config), "--store", url], env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    out = r2.stdout + r2.stderr
    assert out.count("Cached(type=COMPLETED)") == 5, out[-3000:]  # split, support, 3 categories
    register_store(url, s3.options)
    assert sample_problems(f"{url}/tiny") == []
    gc = _cli(["store", "gc", "--store", url], env)
    assert gc.returncode == 0, gc.stderr[-2000:]
    assert len(samples_digest(f"{url}/tiny")) == 3  # gc kept everything the completed run uses

    bad = _cli(["regenerate", "--config", str(config), "--store", "s3://no-such-bucket-here/x"], env)
    assert bad.returncode == 2, bad.stderr[-2000:]
    lines = [line for line in bad.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "s3://no-such-bucket-here/x" in lines[0] and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- kill -9 on S3, then resume

_CHILD = """
import os, sys, pickle
from storage.paths import register_store
cfg, priors, category, support, key = pickle.load(open(sys.argv[1], "rb"))
register_store(cfg.store, cfg.storage_options)
from tasks.regenerate import regenerate_category
regenerate_category.fn(cfg, priors, category, support, key)
"""


@pytest.fixture(scope="module")
def prepared_s3(s3, prefect_harness, demo_root, tmp_path_factory):
    """A bucket with split + support under ``base/``, and the digest of an uninterrupted local run of
    category ``hole`` (what every resumed S3 run must equal)."""
    from prefect import flow

    from flows.data import run_split
    from flows.regenerate import run_support
    from storage.priors import load_run_priors
    from tasks.regenerate import category_key, regenerate_category

    bucket = s3.bucket()
    cfg = load_run_config(None, data=_data(demo_root, f"s3://{bucket}/base", storage_options=s3.options))

    @flow
    def prep(c):
        return run_support(c, run_split(c))

    support = prep(cfg)
    priors = load_run_priors(cfg)
    key = category_key(cfg, priors, "hole", support)
    local = tmp_path_factory.mktemp("local-reference")
    local_cfg = cfg.model_copy(update={"store": str(local), "storage_options": {}})
    local_support = prep(local_cfg)
    assert local_support.content_hash == support.content_hash  # the S3 support is the local one, bytes equal
    regenerate_category.fn(local_cfg, priors, "hole", local_support, key)
    return cfg, priors, support, key, bucket, samples_digest(local / cfg.name)


@pytest.mark.parametrize(
    "point",
    ["dir-partly-uploaded", "group-created", "sample-written:3", "file-written:1", "part-committed:1"],
)
def test_kill_9_on_s3_then_resume_equals_uninterrupted(s3, prepared_s3, point, tmp_path):
    from tasks.regenerate import regenerate_category

    cfg, priors, support, key, bucket, reference = prepared_s3
    fs = s3.filesystem()
    prefix = f"run-{point.replace(':', '-')}"
    fs.copy(f"{bucket}/base/", f"{bucket}/{prefix}/", recursive=True)
    cfg = cfg.model_copy(update={"store": f"s3://{bucket}/{prefix}"})
    support = support.model_copy(update={"run_dir": f"{cfg.store}/{cfg.name}"})
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps((cfg, priors, "hole", support, key)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "UNIADC_CRASH_AT": point}
    child = subprocess.run([sys.executable, "-c", _CHILD, str(args)], env=env, cwd=REPO, timeout=600)
    assert child.returncode == -signal.SIGKILL, f"{point} was never reached"
    run = f"{cfg.store}/{cfg.name}"
    groups = fs.glob(f"{bucket}/{prefix}/{cfg.name}/regenerate/hole-*/samples.zarr/zarr.json")
    if point == "dir-partly-uploaded":
        assert not groups  # the group's own metadata goes last: no group is visible
        assert fs.glob(
            f"{bucket}/{prefix}/{cfg.name}/regenerate/hole-*/samples.zarr/*"
        )  # but a part of it is
    else:
        assert len(groups) == 1
    regenerate_category.fn(cfg, priors, "hole", support, key)
    assert sample_problems(run) == []
    assert samples_digest(run) == reference


# ---------------------------------------------------------------- the path layer on memory:// (no server)


def test_store_paths_keep_local_paths_and_confine_urls(tmp_path):
    from storage.errors import StoreError
    from storage.files import safe_join
    from storage.paths import is_remote, options_for, register_store, store_path

    assert store_path(str(tmp_path)) == tmp_path and not is_remote(tmp_path)
    assert store_path(f"file://{tmp_path}") == tmp_path
    register_store("s3://bkt/a", {"anon": True})
    register_store("s3://bkt/a/b", {"anon": False})
    assert options_for("s3://bkt/a/x") == {"anon": True}
    assert options_for("s3://bkt/a/b/c") == {"anon": False}
    assert options_for("s3://bkt/ab") == {}  # a prefix of the name, not a parent folder
    assert str(safe_join("memory://root/store", "run", "stage-1")) == "memory://root/store/run/stage-1"
    for bad in ("../up", "/abs", "a/../../b", "s3://other/x", ""):
        with pytest.raises(StoreError, match="not a relative path"):
            safe_join("memory://root/store", bad)


def test_config_keeps_urls_and_keeps_storage_options_out_of_its_hash(tmp_path, demo_root):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_data(demo_root, "s3://bkt/runs", storage_options={"secret": "hush"})))
    cfg = load_run_config(path)
    assert cfg.store == "s3://bkt/runs" and cfg.storage_options == {"secret": "hush"}
    assert "hush" not in cfg.to_json()
    other = cfg.model_copy(update={"storage_options": {"secret": "other"}})
    assert other.config_hash() == cfg.config_hash()
    assert load_run_config(path, ["store=relative"]).store == str(Path.cwd() / "relative")


def test_upload_of_a_folder_puts_its_top_level_files_last(monkeypatch):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from storage.files import atomic_dir, atomic_file
    from storage.parquet import list_parts, read_parts, write_part

    calls = []
    fs = fsspec.filesystem("memory")
    real = MemoryFileSystem.put_file

    def spy(self, lpath, rpath, *a, **k):
        calls.append(rpath)
        return real(self, lpath, rpath, *a, **k)

    monkeypatch.setattr(MemoryFileSystem, "put_file", spy)
    with atomic_dir("memory://up/group.zarr") as tmp:
        (tmp / "arr" / "c").mkdir(parents=True)
        (tmp / "arr" / "c" / "0").write_bytes(b"chunk")
        (tmp / "arr" / "zarr.json").write_text("{}")
        (tmp / "zarr.json").write_text("{}")
    assert calls[-1].endswith("group.zarr/zarr.json") and len(calls) == 3
    with pytest.raises(FileExistsError):
        with atomic_dir("memory://up/group.zarr") as tmp:
            (tmp / "zarr.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_file("memory://up/half.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert not fs.exists("/up/half.txt")  # nothing under the final key
    import pyarrow as pa

    schema = pa.schema([("x", pa.int64())])
    write_part("memory://up/rows", 2, {"x": [3, 4]}, schema)
    write_part("memory://up/rows", 0, {"x": [1, 2]}, schema)
    assert [p.name for p in list_parts("memory://up/rows")] == ["part-000000.parquet", "part-000002.parquet"]
    assert read_parts("memory://up/rows")["x"].to_list() == [1, 2, 3, 4]
    assert read_parts("memory://up/nothing", schema).height == 0
