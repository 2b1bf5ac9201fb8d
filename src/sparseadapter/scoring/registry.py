"""The registry of pruning methods: name → scoring function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sparseadapter.errors import ConfigError

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig

ScoreFn = Callable[
    [nn.Module, dict[str, nn.Parameter], "list[dict] | None", "SparsityConfig"],
    dict[str, torch.Tensor],
]


@dataclass(frozen=True)
class Scorer:
    name: str
    fn: ScoreFn
    needs_data: bool


_REGISTRY: dict[str, Scorer] = {}


def register_scorer(
    name: str, needs_data: bool = True, replace: bool = False
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator that registers ``fn`` as pruning method ``name``.

    ``needs_data=False`` marks a data-free scorer: it is called with ``batches=None`` when the
    user gives none. A name already registered (a built-in method included) is refused unless
    ``replace=True``.
    """

    def decorate(fn: ScoreFn) -> ScoreFn:
        if name in _REGISTRY and not replace:
            raise ConfigError(
                f"pruning method {name!r} is already registered; choose another name, or pass "
                "replace=True to replace it"
            )
        _REGISTRY[name] = Scorer(name, fn, needs_data)
        return fn

    return decorate


def unregister_scorer(name: str) -> None:
    """Remove pruning method ``name`` (one registered with :func:`register_scorer`)."""
    _REGISTRY.pop(name, None)


def get_scorer(name: str) -> Scorer:
    return _REGISTRY[name]


def available_scorers() -> list[str]:
    return list(_REGISTRY)
