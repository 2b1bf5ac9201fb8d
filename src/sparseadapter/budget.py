"""Budget arithmetic: parameter counts, and Large-Sparse widening.

Large-Sparse widens an adapter by ``factor`` and prunes it to sparsity ``1 - 1/factor``, so the
non-zero prunable weights equal those of the dense adapter. What is counted: the prunable
tensors (adapter weight matrices; not biases, norms or the task head). Every width of the adapter
grows by the factor (LoRA rank, bottleneck size, prefix length and the prefix reparametrization
MLP's bottleneck), so each prunable matrix grows exactly by ``factor`` (up to integer rounding
of a bottleneck) and the sparsity ``1 - 1/factor`` keeps the budget. LoRA's alpha is scaled
with the rank so that alpha / r, the scale of the update, stays the same.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict, dataclass
from math import inf
from typing import Any

from torch import nn

from sparseadapter.config import SparsityConfig, large_sparse_sparsity
from sparseadapter.errors import ConfigError, NoPrunableWeightsError, shown
from sparseadapter.targets import adapterhub_scales, prunable_parameters


@dataclass
class ParameterReport:
    total: int
    trainable: int
    prunable: int
    nonzero_trainable: int
    nonzero_prunable: int
    # frozen adapters the model carries (an AdapterFusion's task adapters), counted apart from
    # the trainable ones
    frozen_adapters: int = 0
    nonzero_frozen_adapters: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"total={self.total:,} trainable={self.trainable:,} prunable={self.prunable:,} "
            f"non-zero trainable={self.nonzero_trainable:,} "
            f"non-zero prunable={self.nonzero_prunable:,}"
            + (
                f" frozen adapters={self.frozen_adapters:,} "
                f"(non-zero {self.nonzero_frozen_adapters:,})"
                if self.frozen_adapters
                else ""
            )
        )


def parameter_report(model: nn.Module, config: SparsityConfig | None = None) -> ParameterReport:
    """Total, trainable, prunable and non-zero parameter counts (shared tensors counted once);
    the weights of frozen AdapterHub adapters (an AdapterFusion's task adapters) apart."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
    config = config or SparsityConfig()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    try:
        prunable = list(prunable_parameters(model, config).values())
    except NoPrunableWeightsError:
        prunable = []
    frozen = _frozen_adapter_parameters(model)
    return ParameterReport(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        prunable=sum(p.numel() for p in prunable),
        nonzero_trainable=sum(int(p.count_nonzero()) for p in trainable),
        nonzero_prunable=sum(int(p.count_nonzero()) for p in prunable),
        frozen_adapters=sum(p.numel() for p in frozen),
        nonzero_frozen_adapters=sum(int(p.count_nonzero()) for p in frozen),
    )


def _frozen_adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Frozen parameters inside an AdapterHub adapter (a module path part is its name)."""
    adapters_config = getattr(model, "adapters_config", None)
    names = set(getattr(adapters_config, "adapters", None) or ())
    if not names:
        return []
    return [
        p for n, p in model.named_parameters() if not p.requires_grad and names & set(n.split("."))
    ]


def _scaled(value: float, factor: float, what: str) -> int:
    scaled = value * factor
    if abs(scaled - round(scaled)) > 1e-9:
        raise ConfigError(
            f"Large-Sparse factor {factor} gives a non-integer {what} ({value} x {factor}); "
            "pick a factor that keeps it an integer"
        )
    return int(round(scaled))


def bottleneck_reduction(hidden_size: int, width: int) -> float:
    """A reduction factor from which AdapterHub builds a bottleneck of exactly ``width``.

    AdapterHub computes ``int(hidden_size // reduction_factor)``; a float factor such as 32 / 5
    can floor one unit short, so a width that does not divide the hidden size gets the factor
    of ``width + 0.5``, safely inside the interval that floors to ``width``.
    """
    if hidden_size % width == 0:
        return hidden_size // width
    return hidden_size / (width + 0.5)


def _widen_reduction(reduction: float, factor: float, hidden_size: int | None) -> float:
    if hidden_size is None:
        return reduction / factor
    width = _scaled(int(hidden_size // reduction), factor, "bottleneck size")
    return bottleneck_reduction(hidden_size, width)


def widen(config: Any, factor: float, hidden_size: int | None = None) -> Any:
    """A copy of a PEFT or AdapterHub adapter config with every width multiplied by ``factor``.

    AdapterHub sizes bottlenecks as ``hidden_size // reduction_factor``: pass the model's
    ``hidden_size`` to get bottlenecks of exactly ``factor`` times the dense size (without it
    the reduction factor is divided by ``factor``, which can floor one unit short).
    """
    name = type(config).__name__
    hub = sys.modules.get("adapters")  # an AdapterHub config exists only once AdapterHub is loaded
    if hub is not None and isinstance(config, hub.ConfigUnion):  # MAM and other unions
        return hub.ConfigUnion(*[widen(c, factor, hidden_size) for c in config.configs])
    if hub is not None and isinstance(config, hub.BnConfig):  # bottleneck adapters
        reduction = config.reduction_factor
        if isinstance(reduction, dict):
            return config.replace(
                reduction_factor={
                    k: _widen_reduction(v, factor, hidden_size) for k, v in reduction.items()
                }
            )
        return config.replace(reduction_factor=_widen_reduction(reduction, factor, hidden_size))
    if hub is not None and isinstance(config, hub.PrefixTuningConfig):
        return config.replace(
            prefix_length=_scaled(config.prefix_length, factor, "prefix length"),
            bottleneck_size=_scaled(config.bottleneck_size, factor, "prefix bottleneck"),
        )
    # LoRA proper, or (IA)3 built as a LoRAConfig; IA3Config, VeRA, DoRA, ... are not widened
    if hub is not None and type(config) is hub.LoRAConfig:
        if adapterhub_scales(config):
            raise ConfigError(
                "Large-Sparse needs a width: (IA)3 has none; use LoRA or a bottleneck"
            )
        return config.replace(r=_scaled(config.r, factor, "LoRA rank"), alpha=config.alpha * factor)
    wide = copy.deepcopy(config)
    if hasattr(wide, "r") and hasattr(wide, "lora_alpha"):  # PEFT LoRA family
        wide.r = _scaled(wide.r, factor, "LoRA rank")
        wide.lora_alpha = wide.lora_alpha * factor
        wide.rank_pattern = {
            k: _scaled(v, factor, "LoRA rank") for k, v in wide.rank_pattern.items()
        }
        wide.alpha_pattern = {k: v * factor for k, v in wide.alpha_pattern.items()}
        return wide
    if hasattr(wide, "num_virtual_tokens"):  # PEFT prompt learning
        wide.num_virtual_tokens = _scaled(wide.num_virtual_tokens, factor, "prefix length")
        if getattr(wide, "prefix_projection", False):
            wide.encoder_hidden_size = _scaled(
                wide.encoder_hidden_size, factor, "prefix projection size"
            )
        return wide
    raise ConfigError(
        f"Large-Sparse does not know how to widen a {name}: it supports LoRA, bottleneck "
        "adapters (Houlsby, Pfeiffer, parallel), prefix tuning and MAM"
    )


def large_sparse(config: Any, factor: float, hidden_size: int | None = None) -> tuple[Any, float]:
    """The adapter config widened by ``factor`` and the sparsity that keeps the dense budget.

    ``hidden_size`` (the model's) makes AdapterHub bottleneck sizes exact; see :func:`widen`.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor < inf:
        raise ConfigError(
            f"Large-Sparse factor must be a finite number >= 1, got {shown(factor)}; e.g. 4"
        )
    return widen(config, factor, hidden_size), large_sparse_sparsity(factor)
