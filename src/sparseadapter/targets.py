"""Which parameters are prunable.

One rule serves PEFT, AdapterHub and plain modules, because both libraries freeze the backbone
and leave exactly the adapter (and the task head) trainable: a parameter is prunable when it is
trainable, is not a bias or a normalization weight, is not part of the task head (a transformers
model's children besides its backbone, e.g. DistilBERT's ``pre_classifier``) or of a module
trained in full (``model.modules_to_save``, e.g. the pooler) or excluded by name
(PEFT's ``modules_to_save`` and the usual head names always, plus ``exclude``), and matches
``include`` if that is set. Names are those of ``model.named_parameters()``,
so masks pair with weights by name and identity, never by shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import peft
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from sparseadapter.errors import NoPrunableWeightsError

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig

_TORCH_NORMS = (
    nn.LayerNorm,
    nn.RMSNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def normalization_modules(model: nn.Module) -> list[nn.Module]:
    """The normalization layers of ``model``: torch's, and modules whose class name holds "Norm".

    The name rule is for the norms transformers defines per model (``T5LayerNorm``,
    ``LlamaRMSNorm``, ...): each subclasses ``nn.Module`` directly, with no common base class to
    test for.
    """
    return [m for m in model.modules() if isinstance(m, _TORCH_NORMS) or "Norm" in type(m).__name__]


def adapterhub_scales(config_or_module: object) -> bool:
    """Whether an AdapterHub LoRA config or layer is (IA)³: AdapterHub's LoRA multiplies the
    frozen activations (``composition_mode == "scale"``) instead of adding an update ("add")."""
    return getattr(config_or_module, "composition_mode", None) == "scale"


def _norm_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in normalization_modules(model) for p in m.parameters(recurse=False)}


def adapter_library(model: nn.Module) -> str | None:
    """The library of the adapter ``model`` carries: "peft" (a PeftModel), "adapterhub" (a model
    with AdapterHub adapters), or None."""
    if isinstance(model, peft.PeftModel):
        return "peft"
    config = getattr(model, "adapters_config", None)
    if config is not None and config.adapters:
        return "adapterhub"
    return None


def _check_has_adapter(model: nn.Module, config: SparsityConfig) -> None:
    """A transformers model without an adapter trains its backbone: pruning that is refused
    unless ``include`` names the modules to prune on purpose."""
    if config.include or adapter_library(model) is not None:
        return
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        return  # PEFT layers injected without a PeftModel wrapper
    if any(isinstance(m, PreTrainedModel) for m in model.modules()):
        raise NoPrunableWeightsError(
            f"the {type(model).__name__} carries no adapter, so its trainable weights are the "
            "backbone's: add an adapter first (peft.get_peft_model, or AdapterHub's add_adapter "
            "+ train_adapter), or name the modules to prune on purpose with "
            "SparsityConfig(include=[...])"
        )


FULL_MODULES = "sparseadapter_modules_to_save"  # model attribute, set by adapters.train_in_full


def full_modules(model: nn.Module) -> list[str]:
    """Names of the base-model modules trained in full beside an AdapterHub adapter
    (``model.modules_to_save``; PEFT wraps its own in ``modules_to_save``): never pruned."""
    return list(getattr(model, FULL_MODULES, []))


def head_modules(model: nn.Module) -> list[str]:
    """Names of a transformers model's task-head modules: its children with weights besides
    the backbone; none for other modules (a PeftModel keeps its heads in ``modules_to_save``)."""
    if not isinstance(model, PreTrainedModel):
        return []
    return [
        name
        for name, child in model.named_children()
        if name != model.base_model_prefix and any(True for _ in child.parameters())
    ]


def scale_parameters(model: nn.Module) -> set[str]:
    """Names of (IA)³ scale vectors (PEFT's ``ia3_l``, AdapterHub's IA3 modules): they multiply
    the frozen activations, so their neutral value is 1, and a pruned (zero) scale switches a
    channel of the frozen model off instead of leaving it unchanged."""
    names = {n for n, _ in model.named_parameters() if ".ia3_l." in f".{n}."}
    for prefix, module in model.named_modules():
        if adapterhub_scales(module):
            names.update(f"{prefix}.{n}" for n, _ in module.named_parameters())
    return names


def prunable_parameters(model: nn.Module, config: SparsityConfig) -> dict[str, nn.Parameter]:
    """The prunable parameters of ``model`` by name, in ``named_parameters`` order.

    Raises :class:`NoPrunableWeightsError` when there are none, and for a transformers model
    that carries no adapter (unless ``config.include`` names what to prune).
    """
    _check_has_adapter(model, config)
    include = [re.compile(p) for p in config.include or []]
    exclude = [re.compile(p) for p in config.exclude]
    norms = set() if config.prune_norms else _norm_parameter_ids(model)
    heads = {
        id(p)
        for name in [*head_modules(model), *full_modules(model)]
        for p in model.get_submodule(name).parameters()
    }
    found: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad or not param.is_floating_point():
            continue
        if not config.prune_biases and name.rsplit(".", 1)[-1] == "bias":
            continue
        if id(param) in norms or id(param) in heads:
            continue
        if any(p.search(name) for p in exclude):
            continue
        if include and not any(p.search(name) for p in include):
            continue
        found[name] = param
    if not found:
        trainable = sum(p.requires_grad for p in model.parameters())
        raise NoPrunableWeightsError(
            f"the model has no prunable adapter weights ({trainable} trainable tensors, none "
            "selected): add adapters and make them trainable first (peft.get_peft_model, or "
            "AdapterHub's add_adapter + train_adapter), or widen SparsityConfig.include/exclude"
        )
    return found


def lora_pairs(params: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(A, B) names of the LoRA factor pairs among ``params``: PEFT's ``...lora_A.<name>.weight``
    with ``...lora_B.<name>.weight``, AdapterHub's ``...loras.<name>.lora_A`` with ``lora_B``.
    A pair needs A's dim 0 (the rank) to equal B's dim 1."""
    pairs = []
    for a_name, a in params.items():
        head, found, tail = a_name.rpartition("lora_A")
        b = params.get(head + "lora_B" + tail) if found else None
        if b is not None and a.dim() >= 2 and b.dim() >= 2 and a.shape[0] == b.shape[1]:
            pairs.append((a_name, head + "lora_B" + tail))
    return pairs
