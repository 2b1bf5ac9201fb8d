"""The format version 1 writer, kept to test that version 1 checkpoints still load: one tensor
per parameter, pruned ones as kept values plus a packed bitmask or int32 indices."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from sparseadapter.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    canonical,
    common_metadata,
    finish_metadata,
    replace_checkpoint,
)
from sparseadapter.files import write_new
from sparseadapter.libraries import adapter_name, model_library
from sparseadapter.sparsify import get_masks


def _encode(name: str, value: torch.Tensor, mask: torch.Tensor | None, storage):
    stored = value.to(storage or value.dtype)
    if mask is None:
        return {name: stored.contiguous()}, None
    keep = mask.detach().cpu().flatten()
    kept = keep.nonzero().squeeze(1)
    entry = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if kept.numel() * 4 < math.ceil(keep.numel() / 8):
        entry["encoding"] = "indices"
        positions = {f"{name}:indices": kept.to(torch.int32)}
    else:
        entry["encoding"] = "bitmask"
        positions = {f"{name}:bitmask": torch.from_numpy(np.packbits(keep.numpy()))}
    return {name: stored.flatten()[keep].contiguous(), **positions}, entry


def save_v1(model, path: Path, dtype: torch.dtype | None = None) -> Path:
    library = model_library(model)
    masks = get_masks(model)
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    for pname, param in model.named_parameters():
        if param.requires_grad:
            stored, entry = _encode(pname, param.detach().cpu(), masks.get(pname), dtype)
            tensors.update(stored)
            if entry is not None:
                layout[pname] = entry
    payload = safetensors.torch.save(tensors)
    meta = {
        **common_metadata(model, library, adapter_name(model, library)),
        "format_version": 1,
        "storage_dtype": str(dtype).removeprefix("torch.") if dtype else None,
        "pruned_tensors": layout,
    }
    meta = finish_metadata(meta, payload)

    def write(tmp: Path) -> None:
        write_new(tmp / WEIGHTS_FILE, payload)
        write_new(tmp / META_FILE, canonical(meta))

    return replace_checkpoint(path, META_FILE, False, write)
