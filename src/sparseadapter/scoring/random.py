"""Random pruning: i.i.d. uniform scores from a generator seeded with ``config.seed``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sparseadapter.scoring.registry import register_scorer

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig


@register_scorer("random", needs_data=False)
def random_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[dict] | None,
    config: SparsityConfig,
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    return {
        name: torch.rand(p.shape, generator=generator).to(p.device) for name, p in params.items()
    }
