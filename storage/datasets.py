"""Dataset readers: three folder layouts, one uniform view (:class:`ImageRecord`).

Layouts:
    mvtec: ``<root>/<class>/train/good/*``, ``<root>/<class>/test/<defect>/*`` and
        ``<root>/<class>/ground_truth/<defect>/<stem>_mask.png`` (MVTec AD, anomalib folder datasets, WFDD re-packs).
    mtd: ``<root>/MT_<Category>/Imgs/<stem>.jpg`` + ``<stem>.png`` mask; ``MT_Free`` holds the normal images.
    demo: the generated demo dataset (``storage.demo``), MVTec layout.

Label index 0 is normal; defects are numbered 1..K in the order of the ``categories`` list (the priors file
order), or alphabetically when no list is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from storage.errors import DataError
from storage.images import IMAGE_SUFFIXES

NORMAL = "normal"  # the label of normal images in every table (split, predictions, report)
NORMAL_FOLDER = "good"  # MVTec-layout folder of normal images
MTD_CLASS = "magnetic_tile"


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    Attributes:
        image_id: stable id, the path relative to the image-class root without suffix.
        path: image file.
        image_class: the image class (MVTec sub-folder, ``magnetic_tile`` for MTD).
        label_name: ``normal`` for normal images, else the defect category.
        label_index: 0 for normal, 1..K for defect categories.
        mask_path: ground-truth mask file; None for normal images (their mask is all False).
        pool: ``train`` (normal support pool only: MVTec ``train/good``), ``test`` (test images; defects may also
            be drawn as few-shot support) or ``any`` (normal images that are support or else test: MTD ``Free``).
    """

    image_id: str
    path: str
    image_class: str
    label_name: str
    label_index: int
    mask_path: str | None
    pool: str


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _label_indices(defects: Sequence[str], categories: Sequence[str] | None, where: Path) -> dict[str, int]:
    if categories is None:
        categories = sorted(defects)
    unknown = sorted(set(defects) - set(categories))
    if unknown:
        raise DataError(
            f"{where}: defect folder(s) {unknown} are not categories of the priors file {list(categories)}"
        )
    return {name: i + 1 for i, name in enumerate(categories)}


def scan_mvtec(
    root: str | Path, image_class: str, categories: Sequence[str] | None = None
) -> list[ImageRecord]:
    """Scan an MVTec-AD-style image class folder."""
    base = Path(root) / image_class
    if not base.is_dir():
        known = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise DataError(f"{base}: no such image class folder (found: {known})")
    test_dir = base / "test"
    defects = (
        sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name != NORMAL_FOLDER)
        if test_dir.is_dir()
        else []
    )
    index = _label_indices(defects, categories, test_dir)
    records = [
        ImageRecord(f"train/good/{p.stem}", str(p), image_class, NORMAL, 0, None, "train")
        for p in _images_in(base / "train" / NORMAL_FOLDER)
    ]
    records += [
        ImageRecord(f"test/good/{p.stem}", str(p), image_class, NORMAL, 0, None, "test")
        for p in _images_in(test_dir / NORMAL_FOLDER)
    ]
    for defect in defects:
        for p in _images_in(test_dir / defect):
            mask = base / "ground_truth" / defect / f"{p.stem}_mask.png"
            if not mask.is_file():
                raise DataError(f"{mask}: ground-truth mask missing for {p}")
            records.append(
                ImageRecord(
                    f"test/{defect}/{p.stem}", str(p), image_class, defect, index[defect], str(mask), "test"
                )
            )
    if not records:
        raise DataError(f"{base}: image class {image_class!r} has zero images")
    if not any(r.label_index == 0 for r in records):
        raise DataError(f"{base}: image class {image_class!r} has no normal (good) images")
    return records


def scan_mtd(root: str | Path, categories: Sequence[str] | None = None) -> list[ImageRecord]:
    """Scan the raw Magnetic Tile Defect layout; ``MT_Free`` is the normal pool (no train/test folders)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such MTD folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("MT_"))
    if not folders:
        raise DataError(f"{root}: no MT_<Category> folders (is this the MTD root?)")
    defects = [p.name[3:] for p in folders if p.name != "MT_Free"]
    index = _label_indices(defects, categories, root)
    records: list[ImageRecord] = []
    for folder in folders:
        label = folder.name[3:]
        normal = label == "Free"
        for p in _images_in(folder / "Imgs"):
            if p.suffix.lower() != ".jpg":
                continue
            mask = p.with_suffix(".png")
            if not normal and not mask.is_file():
                raise DataError(f"{mask}: ground-truth mask missing for {p}")
            records.append(
                ImageRecord(
                    f"{folder.name}/{p.stem}",
                    str(p),
                    MTD_CLASS,
                    NORMAL if normal else label,
                    0 if normal else index[label],
                    None if normal else str(mask),
                    "any" if normal else "test",
                )
            )
    for label in ["Free", *defects]:
        if not any(r.image_id.startswith(f"MT_{label}/") for r in records):
            raise DataError(f"{root / ('MT_' + label) / 'Imgs'}: image class folder has zero images")
    return records


def scan_dataset(
    kind: str, root: str | Path, image_class: str | None = None, categories: Sequence[str] | None = None
) -> list[ImageRecord]:
    """Scan a dataset of layout ``kind`` (mvtec, mtd, demo) into records sorted by image id."""
    if kind in ("mvtec", "demo"):
        if not image_class:
            raise DataError(f"dataset.image_class: required for kind {kind!r}")
        records = scan_mvtec(root, image_class, categories)
    elif kind == "mtd":
        if image_class not in (None, MTD_CLASS):
            raise DataError(
                f"dataset.image_class: MTD has one image class {MTD_CLASS!r}, got {image_class!r}"
            )
        records = scan_mtd(root, categories)
    elif kind == "uniadc_jsonl":
        if not image_class:
            raise DataError(
                f"dataset.image_class: required for kind {kind!r} (the category of the JSONL files)"
            )
        from storage.jsonl_dataset import scan_uniadc_jsonl

        records = scan_uniadc_jsonl(root, image_class, categories)
    else:
        raise DataError(f"dataset.kind: unknown layout {kind!r} (known: mvtec, mtd, demo, uniadc_jsonl)")
    records = sorted(records, key=lambda r: r.image_id)
    for a, b in zip(records, records[1:], strict=False):
        if a.image_id == b.image_id:
            raise DataError(
                f"{b.path}: same image id {b.image_id!r} as {a.path} (two files differ only by extension)"
            )
    return records
