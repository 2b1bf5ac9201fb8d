"""What sparseadapter needs from the adapter libraries: which one an adapted model uses, its one
adapter's name and config, AdapterHub flex heads, rebuilding a saved adapter on a base model,
saving in PEFT's own layout, and the library versions a file records."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import peft
from torch import nn

from sparseadapter.adapters import train_adapterhub_adapter, train_in_full
from sparseadapter.errors import ConfigError
from sparseadapter.targets import adapter_library, adapterhub_scales


def model_library(model: nn.Module) -> str:
    library = adapter_library(model)
    if library is not None:
        return library
    raise ConfigError(
        f"a {type(model).__name__} carries no adapter: pass a PEFT model (peft.get_peft_model) "
        "or an AdapterHub model (adapters.init + add_adapter)"
    )


def adapter_name(model: nn.Module, library: str) -> str:
    names = list(model.peft_config if library == "peft" else model.adapters_config.adapters)
    if len(names) != 1:
        raise ConfigError(
            f"sparse checkpoints hold exactly one adapter, the model has {len(names)} "
            f"({names}): delete the others first (delete_adapter)"
        )
    return names[0]


def adapter_config_of(model: nn.Module, library: str, name: str) -> Any:
    return model.peft_config[name] if library == "peft" else model.adapters_config.get(name)


def adapter_config_dict(config: Any) -> dict[str, Any]:
    data = config.to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}


def head_configs(model: nn.Module, library: str) -> dict[str, dict]:
    """AdapterHub flex heads (AutoAdapterModel); static heads are part of the base model."""
    if library != "adapterhub" or not getattr(model, "heads", None):
        return {}
    return {name: dict(model.config.prediction_heads[name]) for name in model.heads}


def library_versions(library: str) -> dict[str, str]:
    # from the modules, not the installed-package metadata: a source checkout on PYTHONPATH has none
    packages = ["sparseadapter", "torch", "transformers", "safetensors"]
    packages.append("peft" if library == "peft" else "adapters")
    return {name: importlib.import_module(name).__version__ for name in packages}


def attach_peft(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    if isinstance(model, peft.PeftModel):
        return model
    config = peft.PeftConfig.from_peft_type(**{**meta["adapter_config"], "inference_mode": False})
    model = peft.get_peft_model(model, config, adapter_name=meta["adapter_name"])
    # PEFT appends the sequence-classification heads to modules_to_save, which already holds them
    saved = model.peft_config[meta["adapter_name"]]
    if saved.modules_to_save:
        saved.modules_to_save = list(dict.fromkeys(saved.modules_to_save))
    return model


def attach_adapterhub(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    try:
        import adapters
    except ImportError:
        raise ConfigError(
            "this checkpoint holds an AdapterHub adapter: install sparseadapter[adapters]"
        ) from None
    name = meta["adapter_name"]
    if getattr(model, "adapters_config", None) is None:
        adapters.init(model)
    if name not in model.adapters_config.adapters:
        model.add_adapter(name, config=adapters.AdapterConfig.load(meta["adapter_config"]))
    for head_name, head_config in meta["heads"].items():
        if head_name not in model.heads:
            model.add_prediction_head_from_config(head_name, dict(head_config))
    train_adapterhub_adapter(model, name)
    train_in_full(model, meta.get("modules_to_save", []))
    return model


def save_peft_adapter(model: nn.Module, name: str, folder: Path) -> None:
    """``save_pretrained`` of adapter ``name``, its files in ``folder`` itself: PEFT puts an
    adapter not named "default" in a subfolder, which ``PeftModel.from_pretrained(base, folder)``
    would not find."""
    model.save_pretrained(str(folder), selected_adapters=[name])
    nested = folder / name
    if name != "default" and nested.is_dir():
        for item in nested.iterdir():
            item.replace(folder / item.name)
        nested.rmdir()


def is_lora(config: Any, library: str) -> bool:
    if library == "peft":
        return config.peft_type == peft.PeftType.LORA
    from adapters import LoRAConfig

    return isinstance(config, LoRAConfig) and not adapterhub_scales(config)
