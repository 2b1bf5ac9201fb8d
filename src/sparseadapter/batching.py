"""How training examples become batches: dynamic padding and optional length grouping."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler


class PadCollator:
    """Pads each batch to its longest example (dynamic padding).

    Sequence fields are padded with the pad token (``input_ids``), -100 (``labels``: ignored by
    the loss) or 0 (masks and the rest), on the right, or on the left for generation
    (``side="left"``); scalar fields (class labels, answer positions) become 1-D tensors."""

    def __init__(self, pad_token_id: int, side: str = "right"):
        self.pad_token_id = pad_token_id
        self.side = side

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        batch = {}
        for key in features[0]:
            if not isinstance(features[0][key], list):
                batch[key] = torch.tensor([f[key] for f in features])
                continue
            pad = {"input_ids": self.pad_token_id, "labels": -100}.get(key, 0)
            rows = []
            for f in features:
                padding = [pad] * (length - len(f[key]))
                rows.append(padding + f[key] if self.side == "left" else f[key] + padding)
            batch[key] = torch.tensor(rows)
        return batch


class LengthGroupedBatches(Sampler[list[int]]):
    """Random batches of examples of similar length, so that little of a batch is padding.

    Each epoch: shuffle all examples, cut the order into groups of ``group`` batches, sort each
    group by length (longest first, ties in shuffled order), cut it into batches, and yield all
    batches in a random order. Every example is seen once per epoch; the order depends only on
    the state of ``generator`` when iteration starts (so a resumed run sees the same batches).
    On GLUE it feeds 1.5–2.8x fewer tokens than random batches (``benchmarks/batching.py``).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        generator: torch.Generator,
        group: int = 50,
    ):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.group_size = batch_size * group

    def _groups(self) -> range:
        return range(0, len(self.lengths), self.group_size)

    def __len__(self) -> int:
        n = len(self.lengths)
        return sum(math.ceil(min(self.group_size, n - s) / self.batch_size) for s in self._groups())

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in self._groups():
            group = sorted(order[start : start + self.group_size], key=lambda i: -self.lengths[i])
            batches += [
                group[k : k + self.batch_size] for k in range(0, len(group), self.batch_size)
            ]
        for j in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[j]
