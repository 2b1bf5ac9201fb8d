"""Magnitude pruning: score = |θ|."""

from sparseadapter.scoring import register_scorer


@register_scorer("magnitude", needs_data=False)
def magnitude_scores(model, params, batches, config):
    return {name: p.detach().abs() for name, p in params.items()}
