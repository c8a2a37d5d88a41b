"""Small records that tasks pass to each other: where outputs are, how many, and their content hash.

Never arrays. A manifest's ``content_hash`` feeds the cache keys of the stages downstream.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Manifest(BaseModel):
    """What one stage produced for one unit of work (a category, a split, a model).

    Attributes:
        stage: stage name, e.g. ``split``, ``regenerate``, ``train``, ``evaluate``.
        key: the unit inside the stage, e.g. a category name ("" when the stage has one unit).
        run_dir: the run folder.
        uris: named outputs (paths relative to ``run_dir``): Zarr groups, Parquet folders, checkpoints.
        counts: named counts, e.g. ``{"samples": 16}``.
        content_hash: sha256 over the outputs' content (arrays and committed rows).
        cache_key: the key this stage was cached under.
        worker: ``host:pid`` of the process that computed it (provenance only: no hash or key reads it; a
            cached manifest keeps the worker of the run that made it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    key: str = ""
    run_dir: str
    uris: dict[str, str] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    content_hash: str
    cache_key: str = ""
    worker: str = ""
