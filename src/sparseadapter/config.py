"""SparsityConfig: what to prune, how much, and how to score it."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sparseadapter.errors import ConfigError, shown

SCOPES = ("global", "layer")
ZERO_INIT_POLICIES = ("surrogate", "dense")
DEFAULT_HEAD_PATTERNS = (
    r"(^|\.)(classifier|classification_head|score|qa_outputs|lm_head|heads|modules_to_save|original_module)(\.|$)",
)


def _patterns(name: str, value: Any) -> list[str]:
    """A list of valid regexes; one string is one pattern."""
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(x, str) for x in patterns):
        raise ConfigError(f"{name} must be a list of regexes, e.g. ['lora_B'], got {shown(value)}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(
                f"{name} pattern {shown(pattern)} is not a valid regex: {e}"
            ) from None
    return list(patterns)


SEED_RANGE = "[0, 2**32 - 1]"  # what NumPy and torch generators all accept


def large_sparse_sparsity(factor: float) -> float:
    """The sparsity that brings an adapter widened ``factor`` times back to the dense adapter's
    number of non-zero weights (Large-Sparse)."""
    return 1.0 - 1.0 / factor


# The learning rate a pruned adapter wants: quality v2 chose each arm's rate on a validation
# split and fitted lr ~ density^-alpha (docs/benchmarks.md, "Sparse adapters and the learning rate")
DEFAULT_LR_DENSITY_EXPONENT = 0.85


def density_scaled_lr(
    lr: float, kept: int, prunable: int, exponent: float = DEFAULT_LR_DENSITY_EXPONENT
) -> float:
    """The peak learning rate of an adapter that keeps ``kept`` of its ``prunable`` weights:
    ``lr`` x density^-``exponent``; ``lr`` itself for a dense adapter or ``exponent`` 0."""
    if not exponent or not kept or kept >= prunable:
        return lr
    return lr * (kept / prunable) ** -exponent


def check_seed(seed: object, name: str) -> None:
    """ConfigError unless ``seed`` is an integer every generator takes: the one seed rule."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"{name} must be an integer in {SEED_RANGE}, got {shown(seed)}")


@dataclass
class SparsityConfig:
    """Configuration of one pruning-at-initialization pass.

    ``sparsity`` is always the fraction of prunable weights set to zero (the official SparseAdapter
    code's ``--sparsity`` is the kept fraction; this one is not).
    """

    method: str = field(
        default="snip",
        metadata={
            "help": "Scoring method: random, magnitude, snip, grasp, synflow, or a registered name."
        },
    )
    sparsity: float = field(
        default=0.4, metadata={"help": "Fraction of prunable weights set to zero, in [0, 1)."}
    )
    scope: str = field(
        default="global",
        metadata={
            "help": "'global': one threshold over all prunable tensors; 'layer': per tensor."
        },
    )
    num_examples: int = field(
        default=320,
        metadata={"help": "Training examples used for scoring (data-free methods ignore them)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for random scores and surrogate inits."})
    zero_init: str = field(
        default="surrogate",
        metadata={
            "help": "Zero-initialized prunable tensors (LoRA B, zero-init up-projections): "
            "'surrogate' scores them with a temporary seeded random init and prunes them like the "
            "rest; 'dense' leaves them unpruned (they still get the stand-in init while the others are "
            "scored, so their partners' scores are not all zero)."
        },
    )
    include: list[str] | None = field(
        default=None,
        metadata={
            "help": "Regexes (one string is one); if set, only trainable parameters whose name "
            "matches are prunable."
        },
    )
    exclude: list[str] = field(
        default_factory=lambda: list(DEFAULT_HEAD_PATTERNS),
        metadata={
            "help": "Regexes of parameter names never pruned, besides the task heads, which are "
            "always kept dense (their patterns lead the list)."
        },
    )
    prune_biases: bool = field(default=False, metadata={"help": "Also prune bias vectors."})
    prune_norms: bool = field(
        default=False, metadata={"help": "Also prune LayerNorm/RMSNorm weights."}
    )
    grasp_temperature: float = field(
        default=200.0, metadata={"help": "GraSP: logits are divided by this temperature."}
    )
    synflow_rounds: int = field(
        default=1,
        metadata={"help": "SynFlow: pruning rounds on an exponential schedule (1 = one-shot)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(
                f"sparsity must be a number in [0, 1), got {shown(self.sparsity)}; e.g. sparsity=0.4"
            )
        if not (0.0 <= float(self.sparsity) < 1.0) or math.isnan(self.sparsity):
            raise ConfigError(
                f"sparsity must be in [0, 1) (the fraction of weights set to zero), got {self.sparsity}"
            )
        self.sparsity = float(self.sparsity)
        from sparseadapter.scoring import available_scorers

        if self.method not in available_scorers():
            raise ConfigError(
                f"unknown pruning method {shown(self.method)}; choose one of "
                f"{', '.join(available_scorers())} or register one with sparseadapter.register_scorer"
            )
        if self.scope not in SCOPES:
            raise ConfigError(f"scope must be one of {SCOPES}, got {shown(self.scope)}")
        if self.zero_init not in ZERO_INIT_POLICIES:
            raise ConfigError(
                f"zero_init must be one of {ZERO_INIT_POLICIES}, got {shown(self.zero_init)}"
            )
        if not isinstance(self.num_examples, int) or self.num_examples < 1:
            raise ConfigError(
                f"num_examples must be a positive integer, got {shown(self.num_examples)}"
            )
        check_seed(self.seed, "seed")
        if self.include is not None:
            self.include = _patterns("include", self.include)
            if not self.include:
                raise ConfigError(
                    "include=[] matches no weights: drop it to prune every adapter weight, or "
                    "list the names to prune, e.g. ['lora_B']"
                )
        self.exclude = list(
            dict.fromkeys([*DEFAULT_HEAD_PATTERNS, *_patterns("exclude", self.exclude)])
        )
        for name in ("prune_biases", "prune_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {shown(getattr(self, name))}")
        temperature = self.grasp_temperature
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not 0 < temperature < math.inf
        ):
            raise ConfigError(f"grasp_temperature must be a number > 0, got {shown(temperature)}")
        if not isinstance(self.synflow_rounds, int) or self.synflow_rounds < 1:
            raise ConfigError(
                f"synflow_rounds must be an integer >= 1, got {shown(self.synflow_rounds)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown SparsityConfig keys: {sorted(unknown)}")
        return cls(**data)
