"""Magnitude pruning: score = |θ|."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sparseadapter.scoring.registry import register_scorer

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig


@register_scorer("magnitude", needs_data=False)
def magnitude_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[dict] | None,
    config: SparsityConfig,
) -> dict[str, torch.Tensor]:
    return {name: p.detach().abs() for name, p in params.items()}
