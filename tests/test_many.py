"""regenerate-all: every image class with a priors file as its own subflow; a failing class does not stop the
others and the summary artifact says why it failed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from storage.demo import build_demo_dataset


def test_regenerate_all_runs_every_class_and_isolates_a_failure(prefect_harness, tmp_path, one_torch_thread):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.many import classes_with_priors, regenerate_all
    from schemas.config import load_run_config

    root = tmp_path / "data"
    build_demo_dataset(root, image_size=64, n_train=3, n_test_good=1, n_test_per_defect=1)
    (root / "gravel" / "priors.yaml").write_text("dataset: demo\nimage_class: gravel\ncategories: []\n")
    (root / "notes").mkdir()  # a folder without priors is not a class
    config = tmp_path / "all.yaml"
    config.write_text(yaml.safe_dump({
        "name": "many", "dataset": {"kind": "demo", "root": "data", "image_class": "brick"},
        "image_size": 64, "store": "store",
        "synthesis": {"samples_per_category": 2, "masks_per_sample": 2, "noise_factors": [0.5]},
    }))  # fmt: skip
    assert classes_with_priors(load_run_config(config)) == ["brick", "grass", "gravel"]
    rows = regenerate_all(str(config))
    by_class = {r["image_class"]: r for r in rows}
    assert by_class["brick"]["state"] == by_class["grass"]["state"] == "completed"
    assert by_class["gravel"]["state"] == "failed" and "categories" in by_class["gravel"]["reason"]
    for cls in ("brick", "grass"):
        assert (tmp_path / "store" / f"many-{cls}" / "contact_sheet.png").is_file()
    assert not (tmp_path / "store" / "many-gravel" / "contact_sheet.png").exists()

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["many-all-summary"]))
            )

    (art,) = asyncio.run(read())
    assert "2 completed" in art.description and "gravel" in str(art.data)
    assert Path(tmp_path / "store").is_dir()
