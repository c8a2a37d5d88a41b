"""Synthesis backends behind one interface (:mod:`uniadc.synthesis.base`), built by name in
:mod:`uniadc.synthesis.registry`. Heavy backends are imported lazily."""

from uniadc.synthesis.base import CandidateScorer, ScoreRequest, SynthesisRequest, Synthesizer
from uniadc.synthesis.registry import get_scorer, get_synthesizer

__all__ = [
    "CandidateScorer",
    "ScoreRequest",
    "SynthesisRequest",
    "Synthesizer",
    "get_scorer",
    "get_synthesizer",
]
