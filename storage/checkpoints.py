"""Discriminator checkpoints: one safetensors file with the trained tensors and everything needed to rebuild.

The file holds the model's ``head_state_dict()`` (fusion network, text projection and embeddings, scale,
"other" embedding; not the frozen backbone, which the build recreates from its package or weights file) and
string metadata:

- ``format``: ``uniadc.discriminator/1``
- ``config``: the ``DiscriminatorConfig`` as JSON
- ``category_texts``: JSON list of lists of descriptions
- ``category_names``: JSON list of the category names (class i + 1 = entry i), for labelling predictions
- ``image_size``, ``seed``: integers as text
- ``backbone_sha256``: fingerprint of the backbone the head was trained on (checked when restoring)
- ``versions``: JSON {package: version} of what affects the numbers (python, torch, numpy, ...)

Writes are atomic (a unique temporary sibling, then rename: ``storage.files.atomic_file``). Rebuild with
``uniadc.discriminator.restore_discriminator(ckpt.state, ckpt.config, ckpt.category_texts, ckpt.image_size,
ckpt.seed, ckpt.backbone_sha256)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from schemas.config import DiscriminatorConfig
from storage.files import atomic_file
from storage.layout import package_versions
from storage.paths import local_copy, store_path

FORMAT = "uniadc.discriminator/1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


class SavableDiscriminator(Protocol):
    """What :func:`save_discriminator` needs from a model (``uniadc.discriminator.Discriminator``)."""

    config: DiscriminatorConfig
    category_texts: list[list[str]]
    image_size: int
    seed: int

    def head_state_dict(self) -> dict[str, torch.Tensor]: ...

    def backbone_fingerprint(self) -> str: ...


@dataclass(frozen=True)
class DiscriminatorCheckpoint:
    """A loaded checkpoint.

    Attributes:
        state: name -> tensor, the model's ``head_state_dict()``.
        config: the discriminator config it was built with.
        category_texts: descriptions per category (category i + 1 = entry i).
        category_names: category names in the same order.
        image_size: model input side.
        seed: build seed.
        backbone_sha256: fingerprint of the training-time backbone.
        versions: package versions at save time.
    """

    state: dict[str, torch.Tensor]
    config: DiscriminatorConfig
    category_texts: list[list[str]]
    category_names: list[str]
    image_size: int
    seed: int
    backbone_sha256: str
    versions: dict[str, str]


def save_discriminator(
    path: str | Path, model: SavableDiscriminator, category_names: list[str] | None = None
) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file) atomically; returns the path."""
    path = store_path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must end in .safetensors, got {str(path)!r}")
    meta = {
        "format": FORMAT,
        "config": model.config.model_dump_json(),
        "category_texts": json.dumps(model.category_texts),
        "category_names": json.dumps(category_names or [t[0] for t in model.category_texts]),
        "image_size": str(int(model.image_size)),
        "seed": str(int(model.seed)),
        "backbone_sha256": model.backbone_fingerprint(),
        "versions": json.dumps(package_versions(), sort_keys=True),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.head_state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def _saved_config(text: str) -> DiscriminatorConfig:
    """The saved ``DiscriminatorConfig``; fields added since keep the behaviour the model was trained with
    (``intensity``: checkpoints written before it existed fed raw images to the backbone; ``image_score``:
    they scored images by the map's maximum)."""
    data = json.loads(text)
    data.setdefault("intensity", "raw")
    data.setdefault("image_score", "max")
    return DiscriminatorConfig.model_validate(data)


def load_discriminator(path: str | Path) -> DiscriminatorCheckpoint:
    """Read a checkpoint written by :func:`save_discriminator`.

    Raises:
        CheckpointError: missing file, not a discriminator checkpoint, or unreadable metadata.
    """
    path = store_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with local_copy(path) as local, safe_open(str(local), framework="pt", device="cpu") as f:
            meta: dict[str, Any] = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        return DiscriminatorCheckpoint(
            state=state,
            config=_saved_config(meta["config"]),
            category_texts=json.loads(meta["category_texts"]),
            category_names=json.loads(meta.get("category_names") or "null")
            or [t[0] for t in json.loads(meta["category_texts"])],
            image_size=int(meta["image_size"]),
            seed=int(meta["seed"]),
            backbone_sha256=meta["backbone_sha256"],
            versions=json.loads(meta["versions"]),
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad checkpoint metadata ({exc})") from exc


def checkpoint_digest(path: str | Path) -> str:
    """sha256 of a checkpoint's content: its metadata (sorted) and its tensors (sorted by name). Not of the
    file's bytes: safetensors writes the header's keys in a per-process hash order, so two saves of the same
    model in two processes differ as files (measured: a Dask worker's and the thread runner's demo model)."""
    h = hashlib.sha256()
    with local_copy(path) as local, safe_open(str(local), framework="pt", device="cpu") as f:
        h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
        for name in sorted(f.keys()):
            t = f.get_tensor(name)
            h.update(f"\x00{name}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
            h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def reference_calibration(path: str | Path) -> dict[str, float] | None:
    """``{"threshold", "scale", "normal_max", "learned_tau_logit", "probe_auc_learned", "probe_auc_reference",
    "probe_learned_max"}`` of a checkpoint's normal reference (floats; NaN where unset), None if it has none."""
    try:
        with local_copy(path) as local, safe_open(str(local), framework="pt", device="cpu") as f:
            names = set(f.keys())
            if "reference.threshold" not in names:
                return None
            out = {n: float(f.get_tensor(f"reference.{n}")) for n in ("threshold", "scale", "normal_max")}
            if "reference.learned_tau_logit" in names and "reference.probe" in names:
                out["learned_tau_logit"] = float(f.get_tensor("reference.learned_tau_logit"))
                probe = [float(v) for v in f.get_tensor("reference.probe").tolist()]
                out["probe_auc_learned"], out["probe_auc_reference"], out["probe_learned_max"] = probe
            return out
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
