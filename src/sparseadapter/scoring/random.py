"""Random pruning: i.i.d. uniform scores from a generator seeded with ``config.seed``."""

import torch

from sparseadapter.scoring import register_scorer


@register_scorer("random", needs_data=False)
def random_scores(model, params, batches, config):
    generator = torch.Generator().manual_seed(config.seed)
    return {
        name: torch.rand(p.shape, generator=generator).to(p.device) for name, p in params.items()
    }
