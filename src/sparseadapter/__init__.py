"""sparseadapter: prune adapter weights at initialization and keep them sparse while training."""

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING

from sparseadapter.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NoPrunableWeightsError,
    ScoreError,
    ScoringDataError,
    SparseAdapterError,
)

if TYPE_CHECKING:
    from sparseadapter.budget import ParameterReport, large_sparse, parameter_report
    from sparseadapter.checkpoint import load_sparse, save_sparse
    from sparseadapter.config import SparsityConfig
    from sparseadapter.export import export_dense, merge
    from sparseadapter.scoring import available_scorers, register_scorer
    from sparseadapter.sparsify import (
        SparsityReport,
        apply_masks,
        get_masks,
        remove_sparsity,
        score_weights,
        sparsify,
    )

# The public API by module, imported on first use: `sparseadapter --help` and the error classes
# need neither torch nor transformers.
_LAZY = {
    "sparseadapter.budget": ("ParameterReport", "large_sparse", "parameter_report"),
    "sparseadapter.checkpoint": ("load_sparse", "save_sparse"),
    "sparseadapter.export": ("export_dense", "merge"),
    "sparseadapter.config": ("SparsityConfig",),
    "sparseadapter.scoring": ("available_scorers", "register_scorer"),
    "sparseadapter.sparsify": (
        "SparsityReport",
        "apply_masks",
        "get_masks",
        "remove_sparsity",
        "score_weights",
        "sparsify",
    ),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sparseadapter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        # Loading the submodule sparseadapter.sparsify binds it on the package; the public name
        # `sparseadapter.sparsify` is the function (modules import the submodule by its path).
        if name in _HOME and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NoPrunableWeightsError",
    "ParameterReport",
    "ScoreError",
    "ScoringDataError",
    "SparseAdapterError",
    "SparsityConfig",
    "SparsityReport",
    "apply_masks",
    "available_scorers",
    "export_dense",
    "get_masks",
    "large_sparse",
    "load_sparse",
    "merge",
    "parameter_report",
    "register_scorer",
    "remove_sparsity",
    "save_sparse",
    "score_weights",
    "sparsify",
]
