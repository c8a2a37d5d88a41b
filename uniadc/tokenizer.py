"""The OpenAI CLIP BPE tokenizer as a transformers ``CLIPTokenizer``, built offline.

Stable Diffusion's tokenizer is OpenAI's CLIP BPE (49,408 tokens, 77 positions). open_clip ships the same
merges file (``bpe_simple_vocab_16e6.txt.gz``); this module rebuilds the vocabulary from it, so random-weight
pipelines (tests, the benchmark's ``--random-weights`` mode) need no download. Real runs use the tokenizer
stored in the SD folder.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

VOCAB_SIZE = 49408
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2/CLIP BPE."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of OpenAI CLIP from open_clip's bundled merges file (open_clip is not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("open_clip_torch is not installed; it ships the CLIP BPE merges file")
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : VOCAB_SIZE - 2 * 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    tokens = (
        base
        + [t + "</w>" for t in base]
        + ["".join(m) for m in merges]
        + ["<|startoftext|>", "<|endoftext|>"]
    )
    if len(tokens) != VOCAB_SIZE:
        raise ValueError(f"{path}: built {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(max_length: int = 77):
    """A transformers ``CLIPTokenizer`` equal to SD1.5's (BOS 49406, EOS/pad 49407)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    tok = CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=max_length,
    )
    if len(tok) != VOCAB_SIZE:
        raise ValueError(f"offline CLIP tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE}")
    return tok
