"""Shared plumbing of the weight-backed backends: the weights error, device/dtype choice, OOM-splitting.

Nothing here loads a model; :class:`WeightsError` is raised by the loaders before any work is done.
torch is imported inside the functions, so ``WeightsError`` and ``require_path`` cost nothing to import.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


class WeightsError(ValueError):
    """A weights path that is unset, missing or laid out wrongly; the message names path and layout."""


def require_path(
    value: str | None, key: str, layout: str, files: Sequence[str] = (), *, is_file: bool = False
) -> Path:
    """Check a configured weights location before any work, raising a one-line :class:`WeightsError`.

    Args:
        value: the configured path (``None`` when the config key is unset).
        key: the run-config key that holds it, e.g. ``synthesis.diffusion.pipeline_path``.
        layout: human description of the expected layout, quoted in the error.
        files: relative paths that must exist inside the folder; an entry ``a|b`` accepts either.
        is_file: the location is a single file rather than a folder.

    Returns:
        The resolved path.
    """
    if not value:
        raise WeightsError(f"{key} is not set; expected {layout}")
    path = Path(value).expanduser()
    if is_file:
        if not path.is_file():
            raise WeightsError(f"{key}={value!r}: no such file; expected {layout}")
        return path.resolve()
    if not path.is_dir():
        raise WeightsError(f"{key}={value!r}: no such folder; expected {layout}")
    missing = [f for f in files if not any((path / alt).exists() for alt in f.split("|"))]
    if missing:
        raise WeightsError(f"{key}={value!r}: missing {', '.join(missing)}; expected {layout}")
    return path.resolve()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def check_json(path: str | Path, key: str) -> dict:
    """Parse a config JSON file; one-line :class:`WeightsError` naming key and file when it is not a JSON object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{key}: {path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{key}: {path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_weights_file(path: str | Path, key: str) -> Path:
    """Check a weights file's header without loading it: a safetensors header that parses and fits the file,
    or a torch checkpoint (zip archive or pickle). Raises a one-line :class:`WeightsError` otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if path.suffix == ".safetensors":
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                if not 2 <= n <= min(size - 8, 100 << 20):
                    raise WeightsError(f"{key}: {path}: not a safetensors file (header length {n})")
                try:
                    header = json.loads(fh.read(n))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise WeightsError(f"{key}: {path}: not a safetensors file (unreadable header)") from None
                ends = [
                    v["data_offsets"][1]
                    for k, v in (header.items() if isinstance(header, dict) else [])
                    if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
                ]
                if not isinstance(header, dict) or any(e > size - 8 - n for e in ends):
                    raise WeightsError(f"{key}: {path}: safetensors file is truncated or malformed")
            elif not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
                raise WeightsError(
                    f"{key}: {path}: not a torch checkpoint (neither a zip archive nor a pickle)"
                )
    except OSError as exc:
        raise WeightsError(f"{key}: {path}: cannot read ({exc.strerror or exc})") from None
    return path


def check_weights_folder(folder: str | Path, key: str, layout: str) -> list[Path]:
    """Every weights file of ``folder`` checked by :func:`check_weights_file`; at least one must exist."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise WeightsError(
            f"{key}: {folder}: no weights file ({', '.join(WEIGHT_SUFFIXES)}); expected {layout}"
        )
    return [check_weights_file(p, key) for p in files]


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Raise a one-line :class:`WeightsError` unless ``state`` has exactly ``model``'s keys and shapes.

    Args:
        model: the module the state dict is meant for.
        state: the loaded tensors.
        source: the file they came from, quoted in the error.
        what: what the layout should match (e.g. "the BrushNet config"), quoted in the error.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = [
            f"{len(x)} {kind} (e.g. {', '.join(x[:3])})"
            for x, kind in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "with wrong shape"))
            if x
        ]
        raise WeightsError(f"{source}: state dict does not match {what}: {'; '.join(parts)}")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto' or a torch device, got {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it (float16 otherwise) and float32 on CPU."""
    import torch

    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of auto/{'/'.join(dtypes)}, got {name!r}")
    return dtypes[name]


def is_oom(exc: BaseException) -> bool:
    """True for an accelerator out-of-memory error (CUDA raises ``torch.OutOfMemoryError``)."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


class BatchSplitter:
    """Run work over ``n`` items in as few chunks as memory allows, halving the chunk on out-of-memory.

    The chunk size that worked is remembered, so later calls start from it instead of failing again.

    Args:
        max_batch: largest chunk ever tried (>= 1).
        on_oom: called after an out-of-memory error, before retrying (e.g. ``torch.cuda.empty_cache``).
    """

    def __init__(self, max_batch: int, on_oom: Callable[[], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.chunk = max_batch
        self.on_oom = on_oom

    def run(self, fn: Callable[[int, int], T], n: int) -> list[T]:
        """Call ``fn(start, stop)`` over consecutive ranges covering ``range(n)``; returns results in order.

        Raises:
            torch.OutOfMemoryError: when even a chunk of one item does not fit.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        results: list[T] = []
        start = 0
        while start < n:
            stop = min(n, start + self.chunk)
            failed = False
            try:
                results.append(fn(start, stop))
            except Exception as exc:
                if not is_oom(exc) or stop - start == 1:
                    raise
                failed = True  # release the failed attempt's tensors (held by the traceback) first
            if failed:
                self.chunk = max(1, (stop - start + 1) // 2)
                log.warning("out of memory on a chunk of %d; retrying with %d", stop - start, self.chunk)
                if self.on_oom is not None:
                    self.on_oom()
                continue
            start = stop
        return results


def empty_cache(device: torch.device) -> Callable[[], None]:
    """The cache-release hook to run after an out-of-memory error on ``device``."""
    import torch

    if device.type == "cuda":
        return torch.cuda.empty_cache
    return lambda: None
