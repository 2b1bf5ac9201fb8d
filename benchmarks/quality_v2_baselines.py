"""Same-budget baselines for SNIP-pruned adapters, registered as benchmark-local pruning methods
through sparseadapter's ``register_scorer``:

- ``snip-random``: SNIP's kept count in every tensor, at random positions: SNIP's mask shuffled
  within each tensor. It tests whether SNIP's choice of weights beats chance once SNIP's
  allocation across tensors is given.
- ``snip-rowshuffle``: SNIP's mask shuffled within each row of each tensor, so each output unit
  keeps as many inputs as SNIP gave it: a stricter control of the same kind.

and ``matched_width``: the width of a dense adapter with as many non-zero trainable weights as
the same adapter pruned to a sparsity (the third same-budget baseline, a narrow dense adapter).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from sparseadapter import parameter_report, register_scorer
from sparseadapter.adapters import build_model
from sparseadapter.config import SparsityConfig
from sparseadapter.masks import kept_count, select_masks
from sparseadapter.models import resolve_model
from sparseadapter.scoring import available_scorers, get_scorer
from sparseadapter.targets import lora_pairs

SHUFFLED_IN_TENSOR = "snip-random"
SHUFFLED_IN_ROW = "snip-rowshuffle"


def snip_masks(model, params, batches, config: SparsityConfig) -> dict[str, torch.Tensor]:
    """The keep-masks SNIP gives at ``config``'s sparsity and scope, as ``sparsify`` selects."""
    scores = get_scorer("snip").fn(model, params, batches, config)
    return select_masks(scores, config.sparsity, config.scope, lora_pairs(params))


def _scores_keeping(masks: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
    """Scores whose exact-count selection at the masks' total keeps exactly the masks: kept
    weights score in [2, 3), pruned ones in [0, 1), ties broken by seeded noise."""
    return {
        name: (
            2 * m.double().cpu() + torch.rand(m.shape, generator=generator, dtype=torch.float64)
        ).to(m.device)
        for name, m in masks.items()
    }


def shuffled_in_tensor(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flat = mask.flatten().cpu()
    return flat[torch.randperm(flat.numel(), generator=generator)].view(mask.shape)


def shuffled_in_rows(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if mask.dim() < 2:
        return shuffled_in_tensor(mask, generator)
    rows = mask.flatten(1).cpu()
    order = torch.rand(rows.shape, generator=generator).argsort(dim=1)
    return rows.gather(1, order).view(mask.shape)


def _shuffling_scorer(shuffle):
    def scores(model: nn.Module, params, batches, config: SparsityConfig):
        generator = torch.Generator().manual_seed(config.seed)
        masks = {
            n: shuffle(m, generator) for n, m in snip_masks(model, params, batches, config).items()
        }
        return _scores_keeping(masks, generator)

    return scores


def register() -> None:
    """Register the baselines' pruning methods (once per process)."""
    for name, shuffle in (
        (SHUFFLED_IN_TENSOR, shuffled_in_tensor),
        (SHUFFLED_IN_ROW, shuffled_in_rows),
    ):
        if name not in available_scorers():
            register_scorer(name)(_shuffling_scorer(shuffle))


@cache
def matched_width(model: str, adapter: str, sparsity: float, num_labels: int = 2) -> dict:
    """The width whose dense adapter has the non-zero trainable count closest to ``adapter`` at
    its default width pruned to ``sparsity``: ``{"width", "nonzero", "target"}``."""
    path = resolve_model(model)

    def report(width: int | None):
        built, _ = build_model(path, num_labels, adapter, width=width)
        return parameter_report(built)

    default = report(None)
    target = default.trainable - (default.prunable - kept_count(default.prunable, sparsity))
    low, high = report(4), report(8)  # trainable counts grow linearly with the width
    slope = (high.trainable - low.trainable) / 4
    guess = max(1, round(4 + (target - low.trainable) / slope))
    counts = {w: report(w).trainable for w in {max(1, guess - 1), guess, guess + 1}}
    width = min(counts, key=lambda w: (abs(counts[w] - target), w))
    return {"width": width, "nonzero": counts[width], "target": target}
