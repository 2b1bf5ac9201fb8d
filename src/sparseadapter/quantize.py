"""Value precision of sparse checkpoints: fp32 (lossless), bf16, fp16, or int8 / int4 with one
scale per group of consecutive values of a tensor.

A tensor's stored values (the kept ones of a pruned tensor, all of an unpruned one) are split
into groups of ``GROUP_SIZE``; each group gets a symmetric scale ``s`` (absmax / qmax, rounded
up to bfloat16) and each value the integer ``q = round(x / s)`` in ``[-qmax, qmax]``, so
``|x - q s| <= s / 2``. The codes are stored packed (int4: two per byte, low nibble first,
``q + 8``; int8: one signed byte) or, format version 3, as whichever of two codings is smaller,
named by the first byte: ``0`` packed, ``1`` raw LZMA2 over one byte ``q + qmax`` per code (the
codes of trained values are far from uniform, and zero-initialized tensors compress well).
"""

from __future__ import annotations

import numpy as np
import torch

from sparseadapter.errors import ConfigError, shown
from sparseadapter.maskcode import damaged, lzma_pack, lzma_unpack

FLOAT_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INT_LEVELS = {"int8": 127, "int4": 7}  # qmax: codes in [-qmax, qmax]
PRECISIONS = (*FLOAT_PRECISIONS, *INT_LEVELS)
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# measured in benchmarks/checkpoint_size.py (group sizes 32-256 and per row): 64 costs 0.25 bit
# per value of bf16 scale and keeps the error within half a step of the group's absmax / qmax
GROUP_SIZE = 64
SCALE_DTYPE = torch.bfloat16
_SCALE_ROUND_UP = 1 + 2**-7  # bf16 keeps 8 significant bits: this makes the stored scale >= s


def precision_name(
    precision: str | torch.dtype | None = None, dtype: str | torch.dtype | None = None
) -> str:
    """The precision name from ``precision`` or the older ``dtype`` alias ("float16",
    torch.float16, ..., also accepted as ``precision``, which took its place as the third
    argument of ``save_sparse``); fp32 when neither is given."""
    if precision is not None and dtype is not None:
        raise ConfigError("pass either precision= or its older alias dtype=, not both")
    if isinstance(precision, torch.dtype) or precision in DTYPE_ALIASES:  # a dtype, positionally
        precision, dtype = None, precision
    if dtype is not None:
        key = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
        if key not in DTYPE_ALIASES:
            raise ConfigError(
                f"storage dtype must be one of {list(DTYPE_ALIASES)} (or use precision= with one "
                f"of {list(PRECISIONS)}), got {shown(dtype)}"
            )
        return DTYPE_ALIASES[key]
    if precision is None:
        return "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {shown(precision)}: choose one of {', '.join(PRECISIONS)}"
        )
    return precision


def _group_ids(sizes: list[int], group_size: int) -> tuple[torch.Tensor, int]:
    """For values of tensors of ``sizes`` laid end to end: each value's group (groups never
    span two tensors), and the number of groups."""
    ids, offset = [], 0
    for size in sizes:
        ids.append(torch.arange(size) // group_size + offset)
        offset += -(-size // group_size)
    return (torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)), offset


PACKED, LZMA = 0, 1  # the first byte of a coded integer value stream


def _packed(q: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "int8":
        return q
    codes = (q + 8).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, torch.full((1,), 8, dtype=torch.uint8)])
    return codes[0::2] | (codes[1::2] << 4)


def _unpacked(values: torch.Tensor, precision: str, total: int) -> torch.Tensor:
    if precision == "int8":
        return values.view(torch.int8)[:total]
    codes = torch.stack([values & 0x0F, values >> 4], dim=1).flatten()[:total]
    return codes.to(torch.int8) - 8


def _coded(q: torch.Tensor, precision: str) -> torch.Tensor:
    """``q``'s codes, packed or LZMA-coded, whichever is smaller, behind their coding byte."""
    packed = _packed(q, precision).view(torch.uint8).numpy().tobytes()
    shifted = (q.to(torch.int16) + INT_LEVELS[precision]).to(torch.uint8).numpy().tobytes()
    compressed = lzma_pack(shifted)
    code = bytes([LZMA]) + compressed if len(compressed) < len(packed) else bytes([PACKED]) + packed
    return torch.frombuffer(bytearray(code), dtype=torch.uint8)


def _decoded(stored: torch.Tensor, precision: str, total: int) -> torch.Tensor:
    data = stored.numpy().tobytes()
    if not data or data[0] not in (PACKED, LZMA):
        raise damaged("value coding", "unknown coding byte")
    if data[0] == PACKED:
        return _unpacked(torch.frombuffer(bytearray(data[1:]), dtype=torch.uint8), precision, total)
    shifted = lzma_unpack(data[1:], "value coding")
    codes = np.frombuffer(shifted, dtype=np.uint8)[:total].astype(np.int16)
    return torch.from_numpy(codes - INT_LEVELS[precision]).to(torch.int8)


def quantize(
    values: torch.Tensor,
    sizes: list[int],
    precision: str,
    group_size: int = GROUP_SIZE,
    coded: bool = True,
) -> dict[str, torch.Tensor]:
    """The stored tensors for 1-D ``values`` (the tensors of ``sizes`` laid end to end):
    ``{"values": ...}``, plus ``"scales"`` for the integer precisions, whose codes are coded
    (format version 3) or, with ``coded=False``, packed as version 2 stored them."""
    if precision in FLOAT_PRECISIONS:
        return {"values": values.to(FLOAT_PRECISIONS[precision]).contiguous()}
    qmax = INT_LEVELS[precision]
    x = values.detach().float()
    groups, count = _group_ids(sizes, group_size)
    absmax = torch.zeros(count).scatter_reduce(0, groups, x.abs(), "amax", include_self=True)
    scales = (absmax / qmax * _SCALE_ROUND_UP).to(SCALE_DTYPE)
    step = scales.float()[groups]
    q = torch.where(step > 0, torch.round(x / step.clamp_min(1e-38)), 0.0)
    q = q.clamp(-qmax, qmax).to(torch.int8)
    stored = _coded(q, precision) if coded else _packed(q, precision)
    return {"values": stored.contiguous(), "scales": scales}


def dequantize(
    stored: dict[str, torch.Tensor],
    sizes: list[int],
    precision: str,
    group_size: int,
    coded: bool = True,
) -> torch.Tensor:
    """The float32 values that ``quantize`` stored (exact for the float precisions)."""
    values = stored["values"]
    if precision in FLOAT_PRECISIONS:
        return values.float()
    total = sum(sizes)
    if coded:
        values = _decoded(values, precision, total)
    else:
        values = _unpacked(values.view(torch.uint8), precision, total)
    groups, _ = _group_ids(sizes, group_size)
    return values.float() * stored["scales"].float()[groups]
