"""Find and read the priors file of a run."""

from __future__ import annotations

from pathlib import Path

from schemas.config import RunConfig
from schemas.priors import PriorsFile, load_priors
from storage.datasets import MTD_CLASS

REPO_PRIORS = Path(__file__).resolve().parent.parent / "priors"


def priors_path(config: RunConfig) -> Path:
    """``dataset.priors`` when set; else ``<root>/<image_class>/priors.yaml`` when the dataset carries one (the
    demo always does); else the shipped ``priors/<kind>/<image_class>.yaml``."""
    ds = config.dataset
    if ds.priors:
        return Path(ds.priors)
    own = Path(ds.root) / str(ds.image_class) / "priors.yaml"
    if ds.kind == "demo" or (ds.kind == "mvtec" and own.is_file()):
        return own
    if ds.kind == "mtd":
        return REPO_PRIORS / "mtd" / f"{MTD_CLASS}.yaml"
    return REPO_PRIORS / "mvtec" / f"{ds.image_class}.yaml"


def load_run_priors(config: RunConfig) -> PriorsFile:
    return load_priors(priors_path(config))
