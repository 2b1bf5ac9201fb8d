"""What the cost benchmark measures: adapter families, variants, goals and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparseadapter import SparsityConfig

# family -> (adapter, library) for sparseadapter.adapters.build_model
FAMILIES: dict[str, tuple[str, str]] = {
    "houlsby": ("houlsby", "adapterhub"),
    "pfeiffer": ("pfeiffer", "adapterhub"),
    "parallel": ("parallel", "adapterhub"),
    "mam": ("mam", "adapterhub"),
    "prefix": ("prefix", "adapterhub"),
    "lora": ("lora", "adapterhub"),
    "lora-peft": ("lora", "peft"),
}
GOALS = {"step_time": 1.02, "large_sparse": 1.10, "memory": 1.05, "enforcement_share": 0.02}
PHASES = ("forward", "backward", "optimizer")
# Operators the mask engine adds to a step: masked_fill in the gradient hooks (and bitwise_not
# where a hook inverts its mask), _foreach_mul_ in the optimizer post-hook. Inclusive times, so
# their copies and allocations count.
ENFORCEMENT_OPS = ("aten::bitwise_not", "aten::masked_fill", "aten::_foreach_mul_")
DENSE = "dense"
# Any method gives the same step cost (masks are dense tensors); SNIP gives realistic masks.
MASK_METHOD = "snip"
PRUNE_SPARSITY = 0.4
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclass
class CostSettings:
    """What cost.py measures and for how long (``--quick`` shrinks the defaults)."""

    families: list[str] = field(
        default_factory=lambda: list(FAMILIES), metadata={"help": "Adapter families to measure."}
    )
    prune_families: list[str] = field(
        default_factory=lambda: ["houlsby", "lora-peft"],
        metadata={"help": "Families (among --families) whose pruning time is measured."},
    )
    sparsities: list[float] = field(
        default_factory=lambda: [0.4, 0.9], metadata={"help": "Sparsities compared with dense."}
    )
    large_sparse: float = field(default=4.0, metadata={"help": "Large-Sparse widening factor."})
    task: str = field(default="sst2", metadata={"help": "GLUE task the batches come from."})
    batch_size: int = field(default=32, metadata={"help": "Examples per batch."})
    max_length: int = field(default=128, metadata={"help": "Truncation length (padded per batch)."})
    batches: int = field(
        default=10,
        metadata={"help": "Fixed batches: training cycles through them, pruning scores on all."},
    )
    warmup: int = field(default=2, metadata={"help": "Untimed rounds before timing."})
    rounds: int = field(default=20, metadata={"help": "Timed rounds (one step per variant each)."})
    profile_steps: int = field(
        default=2, metadata={"help": "Profiled steps per variant (enforcement cost, hot spots)."}
    )
    prune_repeats: int = field(default=1, metadata={"help": "Pruning runs per method (median)."})
    memory_steps: int = field(default=2, metadata={"help": "Training steps per memory probe."})
    threads: int = field(default=2, metadata={"help": "torch.set_num_threads."})
    bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples for ratio CIs."})


QUICK = {
    "families": ["houlsby"],
    "prune_families": ["houlsby"],
    "batch_size": 8,
    "max_length": 32,
    "batches": 2,
    "warmup": 1,
    "rounds": 3,
    "profile_steps": 1,
    "memory_steps": 1,
    "bootstrap": 200,
}


@dataclass
class VariantSpec:
    key: str
    large_sparse: float
    sparsity: float | None


@dataclass
class Variant:
    key: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    masks: dict[str, torch.Tensor]
    config: SparsityConfig | None
    info: dict[str, Any]


def is_large_sparse(key: str) -> bool:
    return key.startswith("large-sparse")


def variant_specs(settings: CostSettings) -> list[VariantSpec]:
    return [
        VariantSpec(DENSE, 1.0, None),
        *(VariantSpec(f"sparse-{round(s * 100)}", 1.0, s) for s in settings.sparsities),
        VariantSpec(f"large-sparse-{settings.large_sparse:g}x", settings.large_sparse, None),
    ]
