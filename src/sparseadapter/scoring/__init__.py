"""Pruning scores: a registry of scoring functions, one small module per method.

A scorer takes ``(model, params, batches, config)`` and returns a score tensor per parameter name
(same shape as the parameter; higher = more important = kept). ``batches`` is a list of
dict batches already on the model's device, or ``None`` for a data-free scorer.
"""

# the built-in methods register themselves on import
from sparseadapter.scoring import grasp, magnitude, random, snip, synflow  # noqa: E402,F401,I001
from sparseadapter.scoring.registry import (
    ScoreFn,
    Scorer,
    available_scorers,
    get_scorer,
    register_scorer,
    unregister_scorer,
)

__all__ = [
    "ScoreFn",
    "Scorer",
    "available_scorers",
    "get_scorer",
    "register_scorer",
    "unregister_scorer",
]
