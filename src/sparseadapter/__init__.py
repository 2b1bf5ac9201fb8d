"""sparseadapter: prune adapter weights at initialization and keep them sparse while training."""

from sparseadapter.budget import ParameterReport, large_sparse, parameter_report
from sparseadapter.checkpoint import export_dense, load_sparse, merge, save_sparse
from sparseadapter.config import SparsityConfig
from sparseadapter.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NoPrunableWeightsError,
    ScoreError,
    ScoringDataError,
    SparseAdapterError,
)
from sparseadapter.scoring import available_scorers, register_scorer
from sparseadapter.sparsify import (
    SparsityReport,
    apply_masks,
    get_masks,
    remove_sparsity,
    score_weights,
    sparsify,
)

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
