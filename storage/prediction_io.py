"""Files of ``uniadc predict``: which checkpoint a run folder holds, input images, output maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.errors import DataError
from storage.images import IMAGE_SUFFIXES, write_png


def find_checkpoint(model: str | Path) -> Path:
    """A ``.safetensors`` file, or a run folder holding exactly one ``train-*/model.safetensors``."""
    model = Path(model)
    if model.is_file():
        return model
    if not model.is_dir():
        raise DataError(f"{model}: no such model file or run folder")
    found = sorted(model.glob("train-*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DataError(f"{model}: no train-*/model.safetensors in this run folder (run `uniadc run` first)")
    return found[-1]


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def write_prediction(
    out: str | Path,
    stem: str,
    anomaly_map: np.ndarray,
    class_map: np.ndarray,
    heat: np.ndarray,
    overlay: np.ndarray,
) -> None:
    """``<stem>_anomaly.npy`` (float32 map), ``<stem>_anomaly.png`` (heat map), ``<stem>_classes.png`` (class
    indices as 8-bit gray) and ``<stem>_overlay.png`` (image with class colours and legend)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{stem}_anomaly.npy.partial"
    with open(tmp, "wb") as fh:
        np.save(fh, anomaly_map.astype(np.float32))
    tmp.replace(out / f"{stem}_anomaly.npy")
    write_png(out / f"{stem}_anomaly.png", heat)
    write_png(out / f"{stem}_classes.png", class_map.astype(np.uint8))
    write_png(out / f"{stem}_overlay.png", overlay)
