"""GraSP (Wang et al. 2020): score = θ ⊙ (H g), keep the highest.

g is the gradient summed over the scoring batches (logits divided by a temperature), detached;
H g = ∂(gᵀ ∇L)/∂θ comes from a second, double-backward pass over the same batches. Wang et al.
remove the highest S = −θ ⊙ Hg, which is the same ranking as keeping the highest θ ⊙ Hg.
Attention runs on PyTorch's math kernel here: the fused CPU/GPU kernels have no double backward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparseadapter.scoring.loss import batch_loss, summed_gradients
from sparseadapter.scoring.registry import register_scorer

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig


@register_scorer("grasp")
def grasp_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[dict] | None,
    config: SparsityConfig,
) -> dict[str, torch.Tensor]:
    with sdpa_kernel(SDPBackend.MATH):
        return _grasp(model, params, batches, config)


def _grasp(model, params, batches, config):
    names, tensors = list(params), list(params.values())
    g = summed_gradients(model, params, batches, config.grasp_temperature)
    hg = [torch.zeros_like(p) for p in tensors]
    for batch in batches:
        loss = batch_loss(model, batch, config.grasp_temperature)
        grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
        dot = sum((gi * g[n]).sum() for n, gi in zip(names, grads) if gi is not None)
        if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
            continue
        for acc, h in zip(hg, torch.autograd.grad(dot, tensors, allow_unused=True)):
            if h is not None:
                acc.add_(h)
    return {n: p.detach() * h for n, p, h in zip(names, tensors, hg)}
