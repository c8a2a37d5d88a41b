"""Backends and scorers by name; heavy ones (diffusion, CLIP) are imported only when asked for.

Synthesizers: ``procedural`` (:class:`~uniadc.synthesis.procedural.ProceduralSynthesizer`), ``sd-inpaint`` and
``brushnet`` (``uniadc.synthesis.diffusion.build_synthesizer(name, config)``). ``cutpaste`` is not a
synthesizer: it composes with an optional repainting synthesizer in :func:`uniadc.selection.select_few_shot`.

Scorers: ``mask_fidelity`` and ``ssim`` (:mod:`uniadc.selection`), ``clip-region``
(``uniadc.selection_clip.build_scorer(config)``).
"""

from __future__ import annotations

from importlib import import_module

from schemas.config import SelectionConfig, SynthesisConfig
from uniadc.synthesis.base import CandidateScorer, Synthesizer

_LAZY_SYNTHESIZERS = {"sd-inpaint": "uniadc.synthesis.diffusion", "brushnet": "uniadc.synthesis.diffusion"}
SYNTHESIZERS: tuple[str, ...] = ("procedural", *_LAZY_SYNTHESIZERS)
SCORERS: tuple[str, ...] = ("mask_fidelity", "ssim", "clip-region")


def get_synthesizer(name: str, config: SynthesisConfig) -> Synthesizer:
    """Build the synthesis backend ``name`` from the run's synthesis config.

    Raises:
        ValueError: ``name`` is not a synthesizer (the message lists the known ones; ``cutpaste`` and ``auto``
            explain what to do instead).
    """
    if name == "procedural":
        from uniadc.synthesis.procedural import ProceduralSynthesizer

        return ProceduralSynthesizer(config.procedural)
    if name in _LAZY_SYNTHESIZERS:
        return import_module(_LAZY_SYNTHESIZERS[name]).build_synthesizer(name, config)
    if name == "cutpaste":
        raise ValueError(
            "'cutpaste' is not a synthesizer: use uniadc.selection.select_few_shot, optionally with "
            f"a repainting synthesizer from {list(SYNTHESIZERS)}"
        )
    if name == "auto":
        raise ValueError("synthesizer 'auto' must be resolved first (SynthesisConfig.resolved_backend)")
    raise ValueError(f"unknown synthesizer {name!r}; known: {list(SYNTHESIZERS)}")


def get_scorer(name: str, config: SelectionConfig) -> CandidateScorer:
    """Build the candidate scorer ``name``.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or unresolved ``auto``.
    """
    from uniadc import selection

    if name == "mask_fidelity":
        return selection.MaskFidelityScorer()
    if name == "ssim":
        return selection.SSIMScorer()
    if name == "clip-region":
        return import_module("uniadc.selection_clip").build_scorer(config)
    if name == "auto":
        raise ValueError("scorer 'auto' must be resolved first (SelectionConfig.resolved_scorer)")
    raise ValueError(f"unknown scorer {name!r}; known: {list(SCORERS)}")
