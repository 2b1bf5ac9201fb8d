"""Leaving the sparse format: a dense export in the adapter library's own format (loadable
without sparseadapter), and folding a LoRA adapter into the base weights."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from sparseadapter.checkpoint import replace_checkpoint
from sparseadapter.errors import ConfigError, shown
from sparseadapter.libraries import (
    adapter_config_of,
    adapter_name,
    is_lora,
    model_library,
    save_peft_adapter,
)
from sparseadapter.sparsify import masked_parameters, remove_sparsity
from sparseadapter.targets import full_modules

EXPORT_FORMATS = ("peft", "adapterhub")


def export_dense(
    model: nn.Module, path: str | os.PathLike, format: str = "peft", overwrite: bool = False
) -> Path:
    """Write the adapter in its library's own dense format, loadable without sparseadapter.

    ``format="peft"``: ``model.save_pretrained`` (load with ``peft.PeftModel.from_pretrained``).
    ``format="adapterhub"``: ``model.save_adapter`` with the head, as safetensors (load with
    ``model.load_adapter(path, use_safetensors=True)``). Pruned weights are stored as zeros.
    An existing export at ``path`` is replaced only with ``overwrite=True``.
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(
            f"dense export format must be one of {EXPORT_FORMATS}, got {shown(format)} "
            "(use save_sparse for the sparse format)"
        )
    library = model_library(model)
    if library != format:
        raise ConfigError(
            f"{'a PEFT' if library == 'peft' else 'an AdapterHub'} model exports as "
            f"format={shown(library)}, not {shown(format)}; the adapter "
            "libraries cannot read each other's adapters"
        )
    if full_modules(model):
        raise ConfigError(
            f"an AdapterHub adapter file cannot hold the base-model modules trained in full "
            f"({', '.join(full_modules(model))}; modules_to_save): export --format sparse keeps "
            "them, or train with PEFT, whose format does"
        )
    name = adapter_name(model, library)
    state = masked_parameters(model)
    if state is not None:
        state.apply_()
    if library == "peft":
        return replace_checkpoint(
            path, "adapter_config.json", overwrite, lambda tmp: save_peft_adapter(model, name, tmp)
        )
    return replace_checkpoint(
        path,
        "adapter_config.json",
        overwrite,
        lambda tmp: model.save_adapter(str(tmp), name, use_safetensors=True),
    )


def merge(model: nn.Module) -> nn.Module:
    """Fold a LoRA adapter into the base weights; the merged update uses the masked weights.

    PEFT: returns ``model.merge_and_unload()``, the plain base model. AdapterHub: merges in place
    (``merge_adapter``) and returns ``model``; the adapter stays registered in merged state
    (``reset_adapter`` unmerges it). The masks are detached from the model.
    """
    library = model_library(model)
    name = adapter_name(model, library)
    config = adapter_config_of(model, library, name)
    if not is_lora(config, library):
        raise ConfigError(
            f"merge folds LoRA adapters into the base weights; {shown(name)} is a "
            f"{type(config).__name__}: keep the adapter, or export it with export_dense"
        )
    state = masked_parameters(model)
    if state is not None:
        state.apply_()
    remove_sparsity(model)
    if library == "peft":
        return model.merge_and_unload()
    model.merge_adapter(name)
    return model
