from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.config import ConfigError, RunConfig, load_run_config
from schemas.priors import LOCAL_SHAPES, MASK_SIZES, AnomalyPrior, PriorsError, load_priors

BASE = {"dataset": {"kind": "mtd", "root": "/data/mtd"}}


def test_prior_defaults_mean_all_local_types():
    p = AnomalyPrior(name="x", descriptions=("a defect",))
    assert len(p.mask_types()) == len(LOCAL_SHAPES) * len(MASK_SIZES)
    assert ("foreground", None) not in p.mask_types()


def test_prior_subsets_and_foreground():
    p = AnomalyPrior(name="x", descriptions=("d",), shapes=("ellipse", "foreground"), sizes=("small",))
    assert p.mask_types() == [("ellipse", "small"), ("foreground", None)]


@pytest.mark.parametrize(
    "field,value",
    [("shapes", ("hexagon",)), ("sizes", ("huge",)), ("descriptions", (" ",)), ("descriptions", ())],
)
def test_prior_rejects_bad_values(field, value):
    with pytest.raises(ValidationError):
        AnomalyPrior(**{"name": "x", "descriptions": ("d",), field: value})


def test_prior_is_frozen_and_strict():
    p = AnomalyPrior(name="x", descriptions=("d",))
    with pytest.raises(ValidationError):
        p.name = "y"
    with pytest.raises(ValidationError):
        AnomalyPrior(name="x", descriptions=("d",), colour="red")


def test_priors_file_error_names_file_field_value(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "dataset: d\nimage_class: c\ncategories:\n  - name: a\n    descriptions: [x]\n    sizes: [huge]\n"
    )
    with pytest.raises(PriorsError) as info:
        load_priors(f)
    msg = str(info.value)
    assert str(f) in msg and "categories.[0].sizes.[0]" in msg and "huge" in msg


def test_priors_file_duplicate_names(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "dataset: d\nimage_class: c\ncategories:\n  - {name: a, descriptions: [x]}\n"
        "  - {name: a, descriptions: [y]}\n"
    )
    with pytest.raises(PriorsError, match="duplicate category name 'a'"):
        load_priors(f)


def test_run_config_defaults_and_hash_stable():
    a = RunConfig.model_validate(BASE)
    b = RunConfig.model_validate(BASE)
    assert a.threshold == 0.5 and a.synthesis.samples_per_category == 16
    assert a.config_hash() == b.config_hash()
    assert a.synthesis.resolved_backend("zero_shot") == "procedural"
    assert a.synthesis.resolved_backend("few_shot") == "cutpaste"


def test_overrides_validated_like_the_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("dataset: {kind: mtd, root: data}\n")
    cfg = load_run_config(f, ["k_normal=4", "synthesis.noise_factors=[0.5]", "discriminator.iterations=10"])
    assert cfg.k_normal == 4 and cfg.synthesis.noise_factors == (0.5,) and cfg.discriminator.iterations == 10
    assert cfg.dataset.root == str(tmp_path / "data")  # relative to the config file
    with pytest.raises(ConfigError, match=r"synthesis\.bogus"):
        load_run_config(f, ["synthesis.bogus=1"])
    with pytest.raises(ConfigError, match=r"k_normal.*'zero'"):
        load_run_config(f, ["k_normal=zero"])
    with pytest.raises(ConfigError, match="k_anomaly must be >= 1"):
        load_run_config(f, ["setting=few_shot"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_run_config(f, ["k_normal"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_config_file_and_overrides_against_cwd(tmp_path, monkeypatch):
    from schemas.config import load_run_config

    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    cfg_file = folder / "run.yaml"
    cfg_file.write_text(
        "dataset: {kind: demo, root: ../data, image_class: brick, priors: my-priors.yaml}\nstore: ../runs\n"
        "selection: {clip_weights: ~/w.bin}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_run_config(cfg_file)
    assert cfg.dataset.root == str(tmp_path / "project" / "data")
    assert cfg.dataset.priors == str(folder / "my-priors.yaml")
    assert cfg.store == str(tmp_path / "project" / "runs")
    assert cfg.selection.clip_weights == str(Path("~/w.bin").expanduser())
    cfg = load_run_config(cfg_file, ["store=out", "dataset.root=/abs/data"])
    assert cfg.store == str(elsewhere / "out") and cfg.dataset.root == "/abs/data"
    raw = {"dataset": {"kind": "demo", "root": "rel"}}
    assert load_run_config(None, data=raw).dataset.root == str(elsewhere / "rel")
    assert raw["dataset"]["root"] == "rel"  # the caller's dict is left alone
