"""What every stage task shares: explicit cache keys, per-store cache records, content hashes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prefect.cache_policies import CacheKeyFnPolicy

from schemas.manifests import Manifest


def cache_key(stage: str, version: str, *parts: str) -> str:
    """sha256 of the stage name, its version constant and the given canonical strings."""
    h = hashlib.sha256(f"{stage}\x00{version}".encode())
    for part in parts:
        h.update(b"\x00")
        h.update(part.encode())
    return h.hexdigest()


def manifests_hash(manifests: Iterable[Manifest]) -> str:
    return cache_key("manifests", "1", *(m.content_hash for m in manifests))


def stage_cache_policy(
    key_fn: Callable[[Any, dict[str, Any]], str], store_root: str | Path
) -> CacheKeyFnPolicy:
    """A cache policy keyed by ``key_fn`` whose records live in the store (deleted with it)."""
    return CacheKeyFnPolicy(cache_key_fn=key_fn).configure(key_storage=str(Path(store_root) / ".cache"))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def key_from_params(_ctx: Any, params: dict[str, Any]) -> str:
    """Cache key passed explicitly as the task's ``key`` parameter (computed by the flow from its inputs)."""
    return str(params["key"])
