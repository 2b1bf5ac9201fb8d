"""SNIP (Lee et al. 2019): score = |g ⊙ θ|, g summed over the scoring batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sparseadapter.scoring.loss import summed_gradients
from sparseadapter.scoring.registry import register_scorer

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig


@register_scorer("snip")
def snip_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[dict] | None,
    config: SparsityConfig,
) -> dict[str, torch.Tensor]:
    grads = summed_gradients(model, params, batches)
    return {name: (grads[name] * p.detach()).abs() for name, p in params.items()}
