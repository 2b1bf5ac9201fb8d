"""Reading checkpoint format version 1: one tensor per parameter, pruned ones as their kept
values plus ``<name>:bitmask`` (packed) or ``<name>:indices`` (see docs/checkpoint-format.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from sparseadapter.errors import CheckpointError


def _decode(
    name: str, entry: dict[str, Any] | None, tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The parameter value and its keep-mask (None for dense tensors) from the stored tensors."""
    if entry is None:
        return tensors[name], None
    shape, dtype = tuple(entry["shape"]), getattr(torch, entry["dtype"])
    numel = math.prod(shape)
    if entry["encoding"] == "bitmask":
        bits = np.unpackbits(tensors[f"{name}:bitmask"].numpy(), count=numel)
        keep = torch.from_numpy(bits.astype(bool))
    else:
        keep = torch.zeros(numel, dtype=torch.bool)
        keep[tensors[f"{name}:indices"].long()] = True
    value = torch.zeros(numel, dtype=dtype)
    value[keep] = tensors[name].to(dtype)
    return value.view(shape), keep.view(shape)


def decoded_v1(
    named: dict[str, nn.Parameter], meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    layout = meta["pruned_tensors"]
    saved = [n for n in tensors if ":" not in n]
    unknown = [n for n in saved if n not in named]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint tensors are not in the model (e.g. {unknown[0]}): the model "
            "carries another adapter or adapter configuration; pass a fresh base model"
        )
    missing = [n for n, p in named.items() if p.requires_grad and n not in saved]
    if missing:
        raise CheckpointError(
            f"{len(missing)} trainable model tensors are not in the checkpoint (e.g. {missing[0]}): "
            "the model carries another adapter configuration; pass a fresh base model"
        )
    decoded = {n: _decode(n, layout.get(n), tensors) for n in saved}
    for n, (value, _) in decoded.items():
        if value.shape != named[n].shape:
            raise CheckpointError(
                f"{n} has shape {tuple(value.shape)} in the checkpoint but {tuple(named[n].shape)} in "
                "the model: the adapter was built with another configuration (rank, bottleneck "
                "size, ...); pass a fresh base model"
            )
    return decoded
