"""Entropy coding of keep-masks for sparse checkpoints (format version 2).

All masks of a checkpoint are laid end to end (each flattened, row-major) and coded as one byte
string, whichever of two codings is smaller (the first byte names it):

* ``rice`` (1): the gaps between kept positions (zeros before each kept weight), Golomb-Rice
  coded with the best parameter ``k``: the quotients ``g >> k`` in unary (``q`` zero bits, then a
  one) in one bit stream, the ``k``-bit remainders in a second. For independent keep decisions
  of rate p it comes within a few percent of the entropy bound N·H(p).
  Layout: id, k (1 byte), kept count (8 bytes, little-endian), unary stream, remainder stream
  (each ``numpy.packbits``, big-endian bit order).
* ``lzma`` (0): the packed bitmask (``numpy.packbits``) compressed with raw LZMA2 (preset 9e),
  which wins on masks with structure (whole rows or columns pruned).

``benchmarks/checkpoint_size.py`` measures both against zlib, bz2 and delta-coded indices.
"""

from __future__ import annotations

import lzma

import numpy as np
import torch

from sparseadapter.config import SparsityConfig
from sparseadapter.errors import CheckpointError
from sparseadapter.masks import select_masks
from sparseadapter.scoring.random import random_scores
from sparseadapter.targets import lora_pairs

LZMA, RICE = 0, 1
CODINGS = {LZMA: "lzma", RICE: "rice"}
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
MAX_RICE_K = 40


def _bits(mask: np.ndarray) -> bytes:
    return np.packbits(mask).tobytes()


def lzma_pack(data: bytes) -> bytes:
    """``data`` compressed with raw LZMA2 (preset 9e): the format's LZMA, masks and values."""
    return lzma.compress(data, lzma.FORMAT_RAW, filters=LZMA_FILTERS)


def lzma_unpack(data: bytes, what: str) -> bytes:
    """What :func:`lzma_pack` compressed; a damaged stream is a one-line error naming ``what``."""
    try:
        return lzma.decompress(data, lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    except lzma.LZMAError as err:
        raise damaged(what, str(err)) from None


def lzma_code(keep: np.ndarray) -> bytes:
    return bytes([LZMA]) + lzma_pack(_bits(keep))


def rice_code(keep: np.ndarray) -> bytes:
    positions = np.flatnonzero(keep).astype(np.int64)
    gaps = np.diff(positions, prepend=-1) - 1
    n = len(gaps)
    costs = [int((gaps >> k).sum()) + n * (k + 1) for k in range(MAX_RICE_K)]
    k = int(np.argmin(costs))
    quotients = gaps >> k
    unary = np.zeros(int(quotients.sum()) + n, dtype=bool)
    unary[np.cumsum(quotients + 1) - 1] = True
    shifts = np.arange(k - 1, -1, -1, dtype=np.int64)
    remainders = ((gaps[:, None] >> shifts) & 1).astype(bool).ravel()
    header = bytes([RICE, k]) + n.to_bytes(8, "little")
    return header + _bits(unary) + _bits(remainders)


def encode_masks(masks: list[torch.Tensor]) -> bytes:
    """The smaller coding of the masks laid end to end."""
    keep = np.concatenate([m.detach().cpu().flatten().numpy().astype(bool) for m in masks])
    return min(rice_code(keep), lzma_code(keep), key=len)


def coding_name(code: bytes) -> str:
    return CODINGS.get(code[0], "unknown") if code else "empty"


def damaged(what: str, detail: str) -> CheckpointError:
    """The error for a checkpoint whose ``what`` ("mask coding", "value coding") is damaged."""
    return CheckpointError(
        f"the checkpoint's {what} is damaged ({detail}): restore the checkpoint from a good "
        "copy or save it again"
    )


def _damaged(detail: str) -> CheckpointError:
    return damaged("mask coding", detail)


def _rice_decode(code: bytes, total: int) -> np.ndarray:
    if len(code) < 10:
        raise _damaged("header cut short")
    k, n = code[1], int.from_bytes(code[2:10], "little")
    remainder_bytes = -(-n * k // 8)
    body = np.frombuffer(code, dtype=np.uint8, offset=10)
    if n > total or remainder_bytes > len(body):
        raise _damaged(f"{n} kept weights of {total}")
    unary = np.unpackbits(body[: len(body) - remainder_bytes])
    ones = np.flatnonzero(unary)[:n]
    if len(ones) < n:
        raise _damaged("unary stream cut short")
    quotients = np.diff(ones, prepend=-1) - 1
    bits = np.unpackbits(body[len(body) - remainder_bytes :], count=n * k).reshape(n, k)
    remainders = (bits.astype(np.int64) << np.arange(k - 1, -1, -1, dtype=np.int64)).sum(1)
    positions = np.cumsum((quotients.astype(np.int64) << k) + remainders + 1) - 1
    if n and positions[-1] >= total:
        raise _damaged(f"position {positions[-1]} beyond {total} weights")
    keep = np.zeros(total, dtype=bool)
    keep[positions] = True
    return keep


def decode_masks(code: bytes, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """The boolean masks of ``shapes`` that ``encode_masks`` coded into ``code``."""
    sizes = [int(np.prod(s)) for s in shapes]
    total = sum(sizes)
    if not code or code[0] not in CODINGS:
        raise _damaged("unknown coding")
    if code[0] == RICE:
        keep = _rice_decode(code, total)
    else:
        packed = lzma_unpack(code[1:], "mask coding")
        if len(packed) != -(-total // 8):
            raise _damaged(f"{len(packed)} mask bytes for {total} weights")
        keep = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=total).astype(bool)
    parts = np.split(keep, np.cumsum(sizes)[:-1])
    return [torch.from_numpy(p.copy()).view(s) for p, s in zip(parts, shapes)]


def random_masks(
    shapes: dict[str, tuple[int, ...]], config: SparsityConfig
) -> dict[str, torch.Tensor]:
    """The masks the random pruner gives tensors of ``shapes`` (in ``named_parameters`` order)
    under ``config``: its scores depend only on the seed, the order and the shapes, so a
    checkpoint stores the seed instead of the masks."""
    params = {n: torch.empty(shape) for n, shape in shapes.items()}
    scores = random_scores(None, params, None, config)
    return select_masks(scores, config.sparsity, config.scope, lora_pairs(params))
