"""The official UniADC repository's dataset format (MVTec-FS, WFDD as released): ``<root>/samples/
{train,test}_<category>.jsonl``, one JSON object per line with ``filename`` and optional ``maskname``
(relative to ``<root>``), ``label_name`` (``normal``, a defect category, or ``combined``) and ``label``.

Masks hold the class *label* as pixel value (not 0/255); :func:`storage.images.read_mask` reads any non-zero
pixel of such a mask as defect. Lines of the train file are the support pool (normal images for every
setting, defect images for few-shot), never test images; the test file is the test set. ``combined`` images
(several categories in one image) get label -1: they count for detection only, as in the official code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from storage.datasets import NORMAL, ImageRecord
from storage.errors import DataError

COMBINED = "combined"


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: no such split file (expected <root>/samples/{path.name})")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not a JSON object: {exc.msg}") from exc
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("filename"), str)
            or "label_name" not in item
        ):
            raise DataError(f"{path}:{n}: each line needs 'filename' and 'label_name'")
        out.append(item)
    return out


def scan_uniadc_jsonl(
    root: str | Path, image_class: str, categories: Sequence[str] | None = None
) -> list[ImageRecord]:
    """Records of one category (image class) from its train and test JSONL files."""
    root = Path(root)
    files = {pool: root / "samples" / f"{pool}_{image_class}.jsonl" for pool in ("train", "test")}
    items = {pool: _lines(path) for pool, path in files.items()}
    defects = sorted({str(i["label_name"]) for pool in items.values() for i in pool} - {NORMAL, COMBINED})
    names = list(categories) if categories is not None else defects
    unknown = sorted(set(defects) - set(names))
    if unknown:
        raise DataError(
            f"{files['test']}: label_name(s) {unknown} are not categories of the priors file {names}"
        )
    index = {name: i + 1 for i, name in enumerate(names)}
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for pool, lines in items.items():
        for n, item in enumerate(lines, start=1):
            label = str(item["label_name"])
            image = root / item["filename"]
            mask = item.get("maskname")
            if not image.is_file():
                raise DataError(f"{files[pool]}:{n}: {image}: no such image")
            if label != NORMAL and not (mask and (root / mask).is_file()):
                raise DataError(f"{files[pool]}:{n}: ground-truth mask missing for {image}")
            image_id = f"{pool}/{Path(item['filename']).with_suffix('').as_posix()}"
            if image_id in seen:
                raise DataError(f"{files[pool]}:{n}: {item['filename']} is listed twice")
            seen.add(image_id)
            records.append(
                ImageRecord(
                    image_id,
                    str(image),
                    image_class,
                    label,
                    0 if label == NORMAL else (-1 if label == COMBINED else index[label]),
                    None if label == NORMAL else str(root / mask),
                    pool,
                )
            )
    if not any(r.label_index == 0 and r.pool == "train" for r in records):
        raise DataError(f"{files['train']}: no normal image to draw support from")
    return sorted(records, key=lambda r: r.image_id)
