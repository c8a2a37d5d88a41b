"""Stage ``split``: scan the dataset, draw the seeded support/test split, write it.

Files are decoded by the CLI preflight (``flows.cli``) before any flow starts, and again by the stages that read
them, so a bad file always ends in a ``DataError`` naming it.
"""

from __future__ import annotations

from prefect import task

from schemas.config import RunConfig
from schemas.manifests import Manifest
from storage.datasets import scan_dataset
from storage.layout import RunLayout
from storage.priors import load_run_priors
from storage.split import dataset_hash, split_table, write_split
from tasks.common import cache_key, file_sha256

STAGE = "split"
STAGE_VERSION = "2"


def split_key(config: RunConfig) -> str:
    """Dataset identity (layout, root, class, files), priors order and the draw parameters."""
    priors = load_run_priors(config)
    records = scan_dataset(config.dataset.kind, config.dataset.root, config.dataset.image_class, priors.names)
    draw = f"{config.setting}|{config.k_normal}|{config.k_anomaly}|{config.seed}"
    return cache_key(
        STAGE,
        STAGE_VERSION,
        config.dataset.model_dump_json(exclude={"resize", "tile_overlap"}),  # geometry is not the draw
        ",".join(priors.names),
        draw,
        dataset_hash(records),
    )


@task(name="split", persist_result=True)
def split_dataset(config: RunConfig, key: str) -> Manifest:
    """Write ``split-<key>/split.parquet``; returns its manifest."""
    priors = load_run_priors(config)
    records = scan_dataset(config.dataset.kind, config.dataset.root, config.dataset.image_class, priors.names)
    table = split_table(records, config)
    layout = RunLayout.for_run(config)
    out = layout.stage_dir(STAGE, key) / "split.parquet"
    write_split(table, out)
    splits = table.column("split").to_pylist()
    return Manifest(
        stage=STAGE,
        run_dir=str(layout.root),
        uris={"split": str(out.relative_to(layout.root))},
        counts={"support": splits.count("support"), "test": splits.count("test")},
        content_hash=file_sha256(out),
        cache_key=key,
    )
