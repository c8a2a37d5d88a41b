"""Files of ``uniadc predict``: which checkpoint to load, which images to read, where each output goes.

Inputs are files, folders and glob patterns, in any mix. Every input is decoded before anything is written, and
the whole output folder is built in a temporary sibling and renamed into place, so a bad input leaves no output
and a finished run leaves all of it. Output names are unique per input: the file stem, or ``<stem>_<ext>`` when
two inputs share a stem (``x.png`` and ``x.jpg``), with ``-<n>`` added when even that collides (same name in two
folders).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from storage.errors import DataError
from storage.files import atomic_file
from storage.images import IMAGE_SUFFIXES, write_png
from storage.paths import store_path

PREDICTIONS_FILE = "predictions.parquet"


def find_checkpoint(model: str | Path) -> Path:
    """A ``.safetensors`` file, a ``train-*`` folder holding ``model.safetensors``, or a run folder holding
    ``train-*/model.safetensors`` (the newest when several); local or under a store URL (``storage.paths``)."""
    model = store_path(model)
    if model.is_file():
        return model
    if not model.is_dir():
        raise DataError(f"{model}: no such model file or run folder")
    if (model / "model.safetensors").is_file():
        return model / "model.safetensors"
    found = sorted(model.glob("train-*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DataError(
            f"{model}: no model.safetensors here or in a train-* folder of this run folder "
            "(run `uniadc run` first)"
        )
    return found[-1]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def collect_images(specs: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``specs`` (files, folders: their images, glob patterns), in order, without repeats."""
    if not specs:
        raise DataError("--images: give at least one image file, folder or glob pattern")
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if _is_image(f))
            if not found:
                raise DataError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)})")
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{p}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
            found = [p]
        elif glob.has_magic(str(spec)):
            found = sorted(Path(f) for f in glob.glob(str(spec), recursive=True) if _is_image(Path(f)))
            if not found:
                raise DataError(f"{spec}: the pattern matches no image file")
        else:
            raise DataError(f"{p}: no such image file or folder")
        out += found
    seen: set[Path] = set()
    unique = []
    for f in out:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def output_names(files: Sequence[Path]) -> list[str]:
    """One output prefix per input file, unique (case-insensitively) and stable for a given input list."""
    stems = [f.stem for f in files]
    lowered = [s.lower() for s in stems]
    names = [
        s if lowered.count(s.lower()) == 1 else f"{s}_{f.suffix.lstrip('.').lower()}"
        for s, f in zip(stems, files, strict=True)
    ]
    taken: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{name}-{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def check_output_folder(out: str | Path) -> Path:
    """``out`` if it is absent, empty, or an earlier predict output (which is replaced); DataError otherwise."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise DataError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / PREDICTIONS_FILE).is_file():
            raise DataError(f"--out {out}: exists, is not empty and is not a uniadc predict output")
    return out


def write_prediction(
    out: str | Path,
    name: str,
    anomaly_map: np.ndarray,
    class_map: np.ndarray,
    heat: np.ndarray,
    overlay: np.ndarray,
) -> None:
    """``<name>_anomaly.npy`` (float32 map), ``<name>_anomaly.png`` (heat map), ``<name>_classes.png`` (class
    indices as 8-bit gray) and ``<name>_overlay.png`` (image with class colours and legend)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / f"{name}_anomaly.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, anomaly_map.astype(np.float32))
    # fast PNG compression: on a line the outputs are written per image, at camera rate
    write_png(out / f"{name}_anomaly.png", heat, compress_level=1)
    write_png(out / f"{name}_classes.png", class_map.astype(np.uint8), compress_level=1)
    write_png(out / f"{name}_overlay.png", overlay, compress_level=1)
