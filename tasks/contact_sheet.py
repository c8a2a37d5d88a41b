"""Stage ``contact-sheet``: one PNG of the selected samples, a row per category, mask outlines drawn."""

from __future__ import annotations

import numpy as np
from prefect import task

from schemas.manifests import Manifest
from storage.arrays import open_group, read_samples
from storage.images import write_png
from storage.paths import store_path
from uniadc.visualize import contact_sheet


@task(name="contact-sheet")
def write_contact_sheet(manifests: list[Manifest], path: str, columns: int = 8) -> str:
    rows = []
    for m in manifests:
        group = open_group(store_path(m.run_dir) / m.uris["zarr"])
        idx = np.arange(min(columns, m.counts["samples"]))
        rows.append((m.key, read_samples(group, "images", idx), read_samples(group, "masks", idx)))
    write_png(path, contact_sheet(rows, columns=columns))
    return path
