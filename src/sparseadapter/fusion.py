"""AdapterFusion of trained task adapters: fuse the bottleneck adapters of finished runs for a
new task (AdapterHub's ``Fuse``), the task adapters frozen with the masks they were trained with,
the fusion layer and the new task head trainable (and prunable like any adapter).

A fusion run folder holds, besides the usual run files, ``fused/<name>/``: a copy of each task
adapter's sparse checkpoint (so the run needs nothing outside its folder), and in ``adapter/``
the fusion layer and head (``fusion.safetensors``: their tensors in the sparse checkpoint's
tensor format, ``checkpoint.encode_trainable``; ``fusion.json``: the task adapters' names in
fusion order, the base model's fingerprint, the sparsity config, that format's layout and a
SHA-256 over both; version 1 stored one tensor per parameter and a bitmask, and still loads).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from sparseadapter.adapters import load_model
from sparseadapter.checkpoint import (
    base_identity,
    base_mismatch,
    canonical,
    checksum,
    encode_trainable,
    finish_metadata,
    load_sparse,
    load_tensors,
    read_sparse,
    replace_checkpoint,
    sparsity_config_dict,
)
from sparseadapter.config import SparsityConfig
from sparseadapter.errors import CheckpointError, ConfigError, SparseAdapterError, shown
from sparseadapter.files import replace_directory, write_new
from sparseadapter.libraries import library_versions
from sparseadapter.runconfig import RunConfig
from sparseadapter.rundir import (
    ADAPTER_DIR,
    FINAL_FILE,
    FUSED_DIR,
    PARTIAL_SUFFIX,
    finished_run,
)
from sparseadapter.sparsify import apply_masks, masked_parameters, remove_sparsity

FUSABLE_ADAPTERS = ("houlsby", "pfeiffer", "parallel")
FORMAT_NAME = "sparseadapter-fusion"
FORMAT_VERSION = 2  # 1: one tensor per parameter and a packed bitmask (still loads)
WEIGHTS_FILE = "fusion.safetensors"
META_FILE = "fusion.json"
EXPORT_FUSION_DIR = "fusion"  # in an AdapterHub export, beside one folder per task adapter


@dataclass(frozen=True)
class TaskAdapter:
    """A trained task adapter to fuse: its name in the fusion and its sparse checkpoint."""

    name: str
    checkpoint: Path


def _source_config(run: Path) -> RunConfig:
    if (run / FINAL_FILE).is_file():
        return finished_run(run)
    if run.name.endswith(PARTIAL_SUFFIX) or run.with_name(run.name + PARTIAL_SUFFIX).exists():
        raise ConfigError(
            f"fused run {run} has not finished (only an interrupted .partial run): finish it "
            "first (sparseadapter train --resume) or fuse another run"
        )
    if run.is_dir():
        raise ConfigError(
            f"fused run {run} has not finished (no {FINAL_FILE}): pass the output folder of a "
            "finished `sparseadapter train` run"
        )
    raise ConfigError(
        f"fused run {run} does not exist; pass the output folder of a finished "
        "`sparseadapter train` run"
    )


def task_adapters_from_runs(runs: Sequence[str | Path]) -> list[TaskAdapter]:
    """The task adapters of finished runs, checked: each a finished run of one bottleneck
    adapter type, none given twice (the count is checked by the run config). Each is named
    after its run's task."""
    adapters: list[TaskAdapter] = []
    kinds: dict[str, Path] = {}
    seen: dict[Any, Path] = {}
    for run in map(Path, runs):
        config = _source_config(run)
        if config.model.adapter not in FUSABLE_ADAPTERS:
            raise ConfigError(
                f"fused run {run} trained a {shown(config.model.adapter)} adapter; AdapterFusion "
                f"fuses bottleneck adapters ({', '.join(FUSABLE_ADAPTERS)}): fuse runs of those"
            )
        kinds.setdefault(config.model.adapter, run)
        if len(kinds) > 1:
            (a, first), (b, second) = kinds.items()
            raise ConfigError(
                f"fused runs must share one adapter type: {first} is {a}, {second} is {b}; "
                "fuse runs of one type"
            )
        checkpoint = run / ADAPTER_DIR
        meta, _ = read_sparse(checkpoint)
        for key in (run.resolve(), meta["sha256"]):
            if key in seen:
                raise ConfigError(
                    f"fused run {run} holds the same task adapter as {seen[key]}: give each "
                    "task adapter once"
                )
            seen[key] = run
        taken = {a.name for a in adapters}
        name, n = config.data.task, 2
        while name in taken:
            name, n = f"{config.data.task}_{n}", n + 1
        adapters.append(TaskAdapter(name, checkpoint))
    return adapters


def task_adapters_in_run(run_dir: Path) -> list[TaskAdapter]:
    """The task adapters a finished fusion run copied into its folder, in fusion order."""
    meta = _read_meta(run_dir / ADAPTER_DIR)
    return [TaskAdapter(name, run_dir / FUSED_DIR / name) for name in meta["adapters"]]


def _fuse(names: Sequence[str]) -> Any:
    from adapters import Fuse

    return Fuse(*names)


def _load_task_adapter(model: nn.Module, model_path: str, adapter: TaskAdapter) -> None:
    """Load a task adapter (weights as trained, pruned ones zero) into ``model`` under its name,
    frozen: its sparse checkpoint is loaded onto a base model of its own (which checks the base
    fingerprint) and moved over in AdapterHub's format."""
    meta, _ = read_sparse(adapter.checkpoint)
    source = load_model(model_path, meta["base_model"]["num_labels"])
    try:
        source = load_sparse(source, adapter.checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"cannot fuse {adapter.checkpoint}: {err}") from None
    with tempfile.TemporaryDirectory() as tmp:
        source.save_adapter(tmp, meta["adapter_name"], with_head=False, use_safetensors=True)
        model.load_adapter(tmp, load_as=adapter.name, with_head=False, use_safetensors=True)


def attach_fusion(
    model: nn.Module, model_path: str, task_adapters: Sequence[TaskAdapter]
) -> nn.Module:
    """Add the task adapters (frozen) and an AdapterFusion layer over them to a loaded
    sequence-classification ``model`` of ``model_path``; the fusion layer and the task head are
    left trainable. Returns ``model``."""
    import adapters

    adapters.init(model)
    for adapter in task_adapters:
        _load_task_adapter(model, model_path, adapter)
    fuse = _fuse([a.name for a in task_adapters])
    model.add_adapter_fusion(fuse)
    model.train_adapter_fusion(fuse)
    return model


def fusion_names(model: nn.Module) -> list[str]:
    fusions = list(model.adapters_config.fusions)
    if len(fusions) != 1:
        raise ConfigError(
            f"expected a model with one AdapterFusion, it has {len(fusions)}: build it with "
            "attach_fusion"
        )
    return fusions[0].split(",")


# --- the fusion layer and head in the run folder ---------------------------------------------


def save_fusion(model: nn.Module, folder: Path) -> Path:
    """Write the trainable tensors of a fusion model (fusion layer and head) to ``folder`` in
    the sparse checkpoint's tensor format (checkpoint.encode_trainable, lossless); atomically."""
    tensors, layout = encode_trainable(model, "fp32")
    payload = safetensors.torch.save(tensors)
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "adapters": fusion_names(model),
        "base_model": base_identity(model),
        "sparsity_config": sparsity_config_dict(model),
        "versions": library_versions("adapterhub"),
        "encoding": layout,
    }
    meta = finish_metadata(meta, payload)

    def write(tmp: Path) -> None:
        write_new(tmp / WEIGHTS_FILE, payload)
        write_new(tmp / META_FILE, canonical(meta))

    return replace_directory(folder, write)


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{folder} holds no readable AdapterFusion checkpoint ({META_FILE}): train the "
            "fusion run again with --overwrite"
        )
    return meta


def load_fusion(model: nn.Module, folder: Path) -> nn.Module:
    """Load what :func:`save_fusion` wrote into a model built by :func:`attach_fusion` (the
    same task adapters and base model), masks included."""
    meta = _read_meta(folder)
    try:
        payload = (folder / WEIGHTS_FILE).read_bytes()
    except OSError:
        payload = b""
    if checksum(payload, meta) != meta.get("sha256"):
        raise CheckpointError(
            f"{folder} fails its SHA-256 check ({WEIGHTS_FILE} or {META_FILE} is missing, "
            "truncated or modified): train the fusion run again with --overwrite"
        )
    mismatch = base_mismatch(meta["base_model"], model)
    if mismatch:
        raise CheckpointError(
            f"the AdapterFusion in {folder} was trained on another base model ({mismatch}): "
            "load it onto that model"
        )
    tensors = safetensors.torch.load(payload)
    if meta["format_version"] == 1:
        _load_v1(model, meta, tensors, folder)
    else:
        layout = {**meta["encoding"], **{k: meta[k] for k in ("sparsity_config", "versions")}}
        try:
            load_tensors(model, layout, tensors)
        except CheckpointError as err:
            raise CheckpointError(
                f"the AdapterFusion in {folder} does not fit the model ({err}): rebuild the "
                "model from the same task adapters"
            ) from None
    return model


def _load_v1(
    model: nn.Module, meta: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path
) -> None:
    """Fusion files of version 1: one tensor per parameter, a packed bitmask per pruned one."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    stored = {n for n in tensors if ":" not in n}
    if stored != set(params):
        raise CheckpointError(
            f"the AdapterFusion in {folder} does not fit the model ({len(stored ^ set(params))} "
            "tensors differ): rebuild the model from the same task adapters"
        )
    masks = {}
    with torch.no_grad():
        for name, param in params.items():
            if name in meta["pruned_tensors"]:
                numel = math.prod(param.shape)
                bits = np.unpackbits(tensors[f"{name}:bitmask"].numpy(), count=numel)
                keep = torch.from_numpy(bits.astype(bool)).view(param.shape)
                param.zero_()
                param[keep] = tensors[name].to(param.dtype)
                masks[name] = keep
            else:
                param.copy_(tensors[name])
    if masks:
        config = meta["sparsity_config"]
        apply_masks(model, masks, SparsityConfig.from_dict(config) if config else None)
    else:
        remove_sparsity(model)


def save_fusion_run(model: nn.Module, folder: Path, sources: Sequence[TaskAdapter]) -> None:
    """A fusion run's model files: the task adapters' checkpoints copied into ``fused/`` and
    the fusion layer and head in ``adapter/``."""
    for adapter in sources:
        read_sparse(adapter.checkpoint)  # still whole: not replaced or damaged since training
        shutil.copytree(adapter.checkpoint, folder / FUSED_DIR / adapter.name)
    save_fusion(model, folder / ADAPTER_DIR)


def export_fusion(model: nn.Module, target: Path, overwrite: bool = False) -> Path:
    """The fusion in AdapterHub's own dense format, loadable without sparseadapter: one folder
    per task adapter (``load_adapter``) and ``fusion/`` with the fusion layer and the head
    (``load_adapter_fusion``); pruned weights are stored as zeros."""
    state = masked_parameters(model)
    if state is not None:
        state.apply_()
    names = fusion_names(model)

    def write(tmp: Path) -> None:
        for name in names:
            model.save_adapter(str(tmp / name), name, with_head=False, use_safetensors=True)
        fusion_dir = str(tmp / EXPORT_FUSION_DIR)
        model.save_adapter_fusion(fusion_dir, _fuse(names), with_head=False, use_safetensors=True)
        model.save_head(fusion_dir, use_safetensors=True)

    return replace_checkpoint(target, EXPORT_FUSION_DIR, overwrite, write)


def build_fusion_model(
    config: RunConfig,
    num_labels: int,
    problem_type: str | None,
    model_path: str,
    run_dir: Path | None,
) -> nn.Module:
    """The run's fusion model: task adapters from the fused runs (training) or from the copies
    in ``run_dir`` (a finished run)."""
    sources = (
        task_adapters_in_run(run_dir)
        if run_dir
        else task_adapters_from_runs(config.model.fuse or [])
    )
    model = load_model(model_path, num_labels, problem_type)
    try:
        return attach_fusion(model, model_path, sources)
    except SparseAdapterError:
        raise
    except ValueError as exc:  # AdapterHub refuses this architecture or adapter placement
        raise ConfigError(
            f"AdapterHub cannot fuse these task adapters ({str(exc).splitlines()[0][:160]}); "
            "fuse runs of one adapter type on one base model"
        ) from exc
