"""dataset.kind: uniadc_jsonl — the official repository's split files read to the same records as the
folder reader on one dataset written both ways; label-valued masks; combined images; few-shot support from
the training file only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.config import load_run_config
from storage.datasets import scan_dataset
from storage.errors import DataError
from storage.images import read_mask
from storage.split import draw_split
from tests.helpers import make_mvtec

CLASS = "widget"


def as_jsonl(mvtec_root: Path, out: Path, extra_train: list[dict] | None = None, extra_test=None) -> Path:
    """Write the MVTec-layout class as the official format: images/, label-valued masks, samples/*.jsonl."""
    base = mvtec_root / CLASS
    defects = sorted(p.name for p in (base / "test").iterdir() if p.name != "good")
    label = {d: i + 1 for i, d in enumerate(defects)}
    lines = {"train": [], "test": []}
    for p in sorted((base / "train" / "good").iterdir()):
        dst = out / "images" / CLASS / "train" / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
        lines["train"].append({"filename": str(dst.relative_to(out)), "label_name": "normal", "label": 0})
    for folder in sorted((base / "test").iterdir()):
        for p in sorted(folder.iterdir()):
            dst = out / "images" / CLASS / "test" / folder.name / p.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst)
            item = {
                "filename": str(dst.relative_to(out)),
                "label_name": "normal" if folder.name == "good" else folder.name,
            }
            if folder.name != "good":
                m = np.asarray(Image.open(base / "ground_truth" / folder.name / f"{p.stem}_mask.png")) > 127
                mask = out / "images" / CLASS / "masks" / folder.name / f"{p.stem}.png"
                mask.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(m.astype(np.uint8) * label[folder.name]).save(
                    mask
                )  # class label as pixel value
                item.update(maskname=str(mask.relative_to(out)), label=label[folder.name])
            lines["test"].append(item)
    lines["train"] += extra_train or []
    lines["test"] += extra_test or []
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for pool, items in lines.items():
        (out / "samples" / f"{pool}_{CLASS}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return out


def _config(kind: str, root: Path, **kw):
    return load_run_config(
        None, data={"dataset": {"kind": kind, "root": str(root), "image_class": CLASS}, **kw}
    )


def test_jsonl_reader_gives_the_folder_readers_records(tmp_path):
    mv = make_mvtec(tmp_path / "mv", CLASS, defects=("dent", "scratch"), n_train=5, n_good=3, n_defect=3)
    js = as_jsonl(mv, tmp_path / "js")
    a, b = scan_dataset("mvtec", mv, CLASS), scan_dataset("uniadc_jsonl", js, CLASS)

    def counts(records):
        return sorted((r.pool, r.label_name, r.label_index, r.mask_path is None) for r in records)

    assert counts(a) == counts(b) and len(b) == 5 + 3 + 2 * 3
    for ra, rb in zip(sorted(a, key=lambda r: r.path), sorted(b, key=lambda r: r.path), strict=True):
        if ra.mask_path:  # 0/255 mask and label-valued mask decode to the same pixels
            assert np.array_equal(read_mask(ra.mask_path), read_mask(rb.mask_path))
    sa, sb = draw_split(a, _config("mvtec", mv)), draw_split(b, _config("uniadc_jsonl", js))
    assert sorted(sa.values()) == sorted(sb.values())  # same numbers of support and test images


def test_combined_and_few_shot_support_from_the_train_file(tmp_path):
    mv = make_mvtec(tmp_path / "mv", CLASS, defects=("dent", "scratch"), n_train=5, n_good=3, n_defect=3)
    first = tmp_path / "first"
    as_jsonl(mv, first)
    test_lines = [json.loads(x) for x in (first / "samples" / f"test_{CLASS}.jsonl").read_text().splitlines()]
    dents = [x for x in test_lines if x["label_name"] == "dent"]
    js = tmp_path / "js"

    def copy_of(
        item: dict, folder: str, label_name: str
    ) -> dict:  # a new image (and mask) of the same pixels
        out = dict(item, label_name=label_name)
        for key in ("filename", "maskname"):
            dst = js / "images" / CLASS / folder / key / Path(item[key]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(first / item[key], dst)
            out[key] = str(dst.relative_to(js))
        return out

    train_dents = [copy_of(d, f"train_dent_{i}", "dent") for i, d in enumerate(dents[1:])]
    combined = dict(copy_of(dents[0], "combined", "combined"), label=3)
    as_jsonl(mv, js, extra_train=train_dents, extra_test=[combined])
    records = scan_dataset("uniadc_jsonl", js, CLASS)
    assert [r.label_index for r in records if r.label_name == "combined"] == [-1]
    cfg = _config("uniadc_jsonl", js, setting="few_shot", k_anomaly=1)
    split = draw_split(records, cfg)
    support = {i for i, s in split.items() if s == "support"}
    dent_support = [r for r in records if r.image_id in support and r.label_name == "dent"]
    assert len(dent_support) == 1 and dent_support[0].pool == "train"
    # train-file defects that are not support are never test images
    assert not [
        r for r in records if r.pool == "train" and r.label_index > 0 and split.get(r.image_id) == "test"
    ]
    with pytest.raises(
        DataError, match="k_anomaly: 3 support images of 'dent' asked for, the training split has 2"
    ):
        draw_split(records, _config("uniadc_jsonl", js, setting="few_shot", k_anomaly=3))


def test_bad_jsonl_is_one_line(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / f"train_{CLASS}.jsonl").write_text(
        '{"filename": "a.png", "label_name": "normal"}\n'
    )
    with pytest.raises(DataError, match=r"test_widget.jsonl: no such split file"):
        scan_dataset("uniadc_jsonl", tmp_path, CLASS)
    (tmp_path / "samples" / f"test_{CLASS}.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"test_widget.jsonl:1: not a JSON object"):
        scan_dataset("uniadc_jsonl", tmp_path, CLASS)
    (tmp_path / "samples" / f"test_{CLASS}.jsonl").write_text(
        '{"filename": "b.png", "label_name": "normal"}\n'
    )
    with pytest.raises(DataError, match=r"train_widget.jsonl:1: .*a.png: no such image"):
        scan_dataset("uniadc_jsonl", tmp_path, CLASS)


def test_pipeline_runs_on_a_jsonl_dataset_with_a_combined_image(prefect_harness, tmp_path, one_torch_thread):
    import polars as pl

    from flows.pipeline import pipeline_flow
    from tests.helpers import write_priors

    mv = make_mvtec(
        tmp_path / "mv", CLASS, defects=("dent", "scratch"), n_train=4, n_good=2, n_defect=2, size=64
    )
    first = as_jsonl(mv, tmp_path / "first")
    dent = next(json.loads(x) for x in (first / "samples" / f"test_{CLASS}.jsonl").read_text().splitlines()
                if "dent" in x)  # fmt: skip
    js = tmp_path / "js"
    for key in ("filename", "maskname"):
        dst = js / "extra" / Path(dent[key]).name.replace(".png", f"-{key}.png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first / dent[key], dst)
        dent[key] = str(dst.relative_to(js))
    as_jsonl(mv, js, extra_test=[dict(dent, label_name="combined", label=3)])
    priors = write_priors(tmp_path / "priors.yaml", CLASS, ["dent", "scratch"])
    cfg = load_run_config(None, data={
        "name": "js", "dataset": {"kind": "uniadc_jsonl", "root": str(js), "image_class": CLASS, "priors": str(priors)},
        "image_size": 64, "store": str(tmp_path / "store"),
        "synthesis": {"samples_per_category": 2, "masks_per_sample": 2, "noise_factors": [0.5]},
        "discriminator": {"backbone": "tiny", "text_encoder": "tiny", "iterations": 4, "batch_size": 4,
                          "fusion_dim": 16},
    })  # fmt: skip
    manifests = pipeline_flow(cfg)
    ev = manifests["evaluate"]
    root = Path(ev.run_dir)
    metrics = pl.read_parquet(root / ev.uris["metrics"])
    assert metrics["n_images"][0] == 2 + 2 * 2 + 1  # the combined image counts (for detection)
    confusion = pl.read_parquet(root / ev.uris["confusion"])
    assert confusion["images"].sum() == 2 + 2 * 2  # ... but not in classification
    assert "combined" in (root / "report.html").read_text()
