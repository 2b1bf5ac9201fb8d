"""SNIP (Lee et al. 2019): score = |g ⊙ θ|, g summed over the scoring batches."""

from sparseadapter.scoring import register_scorer
from sparseadapter.scoring.loss import summed_gradients


@register_scorer("snip")
def snip_scores(model, params, batches, config):
    grads = summed_gradients(model, params, batches)
    return {name: (grads[name] * p.detach()).abs() for name, p in params.items()}
