"""Patch embeddings and nearest-neighbour distances against a bank of normal patches.

A patch embedding is the backbone feature averaged over its 3x3 neighbourhood (PatchCore's local
aggregation) and L2-normalised over channels, separately per feature level. The bank keeps every location of
every view of every support normal, tagged with the view's ``owner`` (source image), ``view`` index and the
position in the source image each patch came from, so a query made from support image i can leave out image
i entirely, only its identical view, or (``radius``) every patch of image i that came from near the query's
own position, in any view: the query then has to be matched by other images or by distant parts of its own,
as a new normal tile is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from uniadc.reference.views import view_coords

QUERY_CHUNK = 8192  # query locations per matrix product (bounds memory to ~QUERY_CHUNK x bank size)
SIM_BUDGET = 1 << 27  # similarity entries per product (512 MB): large banks (many tiles) get smaller chunks


def _query_chunk(bank_rows: int, cap: int = QUERY_CHUNK) -> int:
    return max(1, min(cap, SIM_BUDGET // max(bank_rows, 1)))


def embed_levels(features: list[Tensor]) -> list[Tensor]:
    """(B, C_l, h_l, w_l) per level -> same shapes, 3x3-averaged and L2-normalised over C."""
    out = []
    for f in features:
        pooled = F.avg_pool2d(f.float(), 3, stride=1, padding=1, count_include_pad=False)
        out.append(F.normalize(pooled, dim=1))
    return out


@dataclass(frozen=True)
class ReferenceBank:
    """Normal patch embeddings per level.

    Attributes:
        levels: per level an (M_l, C_l) float32 tensor of unit vectors.
        owners: per level an (M_l,) int64 tensor, source image of each patch.
        views: per level an (M_l,) int64 tensor, view index (0 = the image as given) of each patch.
        coords: per level an (M_l, 2) float32 tensor, (y, x) in [0, 1] of the patch in its source image.
    """

    levels: list[Tensor]
    owners: list[Tensor]
    views: list[Tensor]
    coords: list[Tensor]

    @property
    def num_images(self) -> int:
        return int(self.owners[0].max()) + 1 if self.owners and self.owners[0].numel() else 0


def build_bank(embeddings: list[Tensor], owner: Tensor, view: Tensor) -> ReferenceBank:
    """Bank from embedded views: ``embeddings`` (V, C_l, h_l, w_l) per level; ``owner``/``view`` (V,)."""
    if not embeddings or any(e.shape[0] != owner.shape[0] for e in embeddings) or view.shape != owner.shape:
        raise ValueError("embeddings, owner and view must all hold one entry per view")
    levels, owners, views, coords = [], [], [], []
    for e in embeddings:
        h, w = e.shape[2:]
        levels.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]).contiguous().float())
        owners.append(owner.long().repeat_interleave(h * w))
        views.append(view.long().repeat_interleave(h * w))
        grids = {int(v): torch.from_numpy(view_coords(h, w, int(v)).reshape(-1, 2)) for v in view.unique()}
        coords.append(torch.cat([grids[int(v)] for v in view]) if len(view) else torch.zeros(0, 2))
    return ReferenceBank(levels, owners, views, coords)


def _min_distance(query: Tensor, bank: Tensor) -> Tensor:
    """(Q, C) x (M, C) unit vectors -> (Q,) Euclidean distance to the nearest bank row."""
    out = torch.empty(query.shape[0])
    step = _query_chunk(bank.shape[0])
    for s in range(0, query.shape[0], step):
        sim = query[s : s + step] @ bank.T
        out[s : s + step] = (2.0 - 2.0 * sim.max(dim=1).values).clamp_min(0.0).sqrt()
    return out


def _min_distance_spatial(
    query: Tensor, qcoords: Tensor, own: Tensor, own_coords: Tensor, radius: float
) -> Tensor:
    """Like :func:`_min_distance` over ``own``, ignoring rows within Chebyshev ``radius`` of each query's
    coordinates."""
    out = torch.empty(query.shape[0])
    step = _query_chunk(own.shape[0], QUERY_CHUNK // 4)
    for s in range(0, query.shape[0], step):
        q, c = query[s : s + step], qcoords[s : s + step]
        sim = q @ own.T
        near = (c[:, None, :] - own_coords[None, :, :]).abs().amax(dim=-1) < radius
        sim = sim.masked_fill(near, -2.0)  # -2: distance 2, the largest between unit vectors
        out[s : s + len(q)] = (2.0 - 2.0 * sim.max(dim=1).values).clamp_min(0.0).sqrt()
    return out


BANK_CHUNK = 4096  # bank rows per matrix product of dense_distances


def dense_distances(bank: ReferenceBank, embeddings: list[Tensor]) -> list[Tensor]:
    """Distance of every query location to its nearest bank patch, per level, with no exclusion.

    The inference path: one batched matrix product per fixed block of bank rows, no data-dependent control
    flow, so it traces into an ONNX graph with a dynamic batch (``uniadc.discriminator.export``).

    Args:
        bank: the normal reference.
        embeddings: (B, C_l, h_l, w_l) per level, from :func:`embed_levels`.

    Returns:
        (B, h_l, w_l) float32 per level.
    """
    out = []
    for e, rows in zip(embeddings, bank.levels, strict=True):
        b, c, h, w = e.shape
        q = e.float().flatten(2).transpose(1, 2)  # (B, h*w, C)
        best = None
        for s in range(0, rows.shape[0], BANK_CHUNK):
            sim = torch.matmul(q, rows[s : s + BANK_CHUNK].T).amax(dim=2)
            best = sim if best is None else torch.maximum(best, sim)
        out.append((2.0 - 2.0 * best).clamp_min(0.0).sqrt().reshape(b, h, w))
    return out


def nearest_distances(
    bank: ReferenceBank,
    embeddings: list[Tensor],
    exclude_owner: Tensor | None = None,
    exclude_view: Tensor | None = None,
    radius: float | None = None,
) -> list[Tensor]:
    """Distance of every query location to its nearest bank patch, per level.

    Args:
        bank: the normal reference.
        embeddings: (B, C_l, h_l, w_l) per level, from :func:`embed_levels`.
        exclude_owner: optional (B,) int64; query ``b`` ignores bank patches owned by ``exclude_owner[b]``
            (-1: ignore nothing). Leave-one-out for images made from support image ``b``.
        exclude_view: optional (B,) int64; with ``exclude_owner``, ignore only the patches of that owner whose
            view is ``exclude_view[b]`` (-1: the whole owner). With one support image, a training image is
            compared with the other views of its own source, never with its identical view.
        radius: instead of the two rules above, ignore the patches of ``exclude_owner[b]`` (any view) that
            came from within this Chebyshev distance (fraction of the side) of the query location's own
            position in that image; ``exclude_view[b]`` is then the view the query was made in (0: as is).

    Returns:
        (B, h_l, w_l) float32 per level.
    """
    b = embeddings[0].shape[0]
    owner = torch.full((b,), -1, dtype=torch.long) if exclude_owner is None else exclude_owner.long()
    view = torch.full((b,), -1, dtype=torch.long) if exclude_view is None else exclude_view.long()
    if owner.shape != (b,) or view.shape != (b,):
        raise ValueError(f"exclude_owner and exclude_view must be ({b},) tensors")
    out = []
    for lvl, e in enumerate(embeddings):
        h, w = e.shape[2:]
        q = e.permute(0, 2, 3, 1).reshape(b, h * w, -1).float()
        dist = torch.empty(b, h * w)
        for o, v in {(int(o), int(v)) for o, v in zip(owner, view, strict=True)}:
            rows = torch.nonzero((owner == o) & (view == v)).flatten()
            if radius is not None and o >= 0:
                mine = bank.owners[lvl] == o
                qc = torch.from_numpy(view_coords(h, w, max(v, 0)).reshape(-1, 2))
                rest, own = bank.levels[lvl][~mine], bank.levels[lvl][mine]
                for r in rows.tolist():
                    d = _min_distance_spatial(q[r], qc, own, bank.coords[lvl][mine], radius)
                    if rest.shape[0]:
                        d = torch.minimum(d, _min_distance(q[r], rest))
                    dist[r] = d
                continue
            keep = torch.ones(bank.owners[lvl].shape[0], dtype=torch.bool)
            if o >= 0:
                keep = bank.owners[lvl] != o
                if v >= 0:
                    keep |= bank.views[lvl] != v
            ref = bank.levels[lvl][keep]
            if ref.shape[0] == 0:
                raise ValueError(f"excluding owner {o} view {v} leaves no reference patch")
            dist[rows] = _min_distance(q[rows].reshape(-1, q.shape[-1]), ref).reshape(len(rows), h * w)
        out.append(dist.reshape(b, h, w))
    return out
