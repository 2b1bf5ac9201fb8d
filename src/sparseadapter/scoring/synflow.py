"""SynFlow (Tanaka et al. 2020): score = |θ ⊙ ∂R/∂θ|, data-free.

R = 1ᵀ(∏|W|)1 is the sum of the model's outputs when every weight is replaced by its absolute
value and the input is all ones, computed in float64. Three changes make this meaningful for a
transformer: the input embedding's output is replaced by ones (token ids cannot be all-ones
vectors); every normalization layer is replaced by |γ|·x/mean(|x|) + |β| (scaling without
centering), because a LayerNorm maps an all-ones vector to zero and would make every upstream
score vanish, while dropping it entirely overflows even float64 after a few layers; and every
activation module is replaced by the identity, the linearization SynFlow assumes (a ReLU of a
positive input), because a tanh or GELU saturates at these magnitudes and zeroes the gradient. The scoring
batches only give the input's shape; without them an 8-token input is used. All weights, dtypes
and buffers are restored afterwards.

``synflow_rounds > 1`` prunes iteratively on an exponential schedule, as in the original paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sparseadapter.masks import select_masks
from sparseadapter.scoring.registry import register_scorer

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig


def _normalization_modules(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if "Norm" in type(m).__name__ and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]


_ACTIVATION_MODULES = ("torch.nn.modules.activation", "transformers.activations")
_NOT_ACTIVATIONS = ("Softmax", "Softmin", "LogSoftmax", "MultiheadAttention", "Softmax2d")


def _activation_modules(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if (type(m).__module__ in _ACTIVATION_MODULES and type(m).__name__ not in _NOT_ACTIVATIONS)
        or type(m).__name__ == "Activation_Function_Class"
    ]


def _identity(module: nn.Module, args: tuple, output):
    return args[0]


def _scale_only(module: nn.Module, args: tuple, output):
    x = args[0]
    x = x / x.abs().mean(dim=-1, keepdim=True).clamp_min(1e-12) * module.weight
    bias = getattr(module, "bias", None)
    return x + bias if isinstance(bias, torch.Tensor) else x


def _all_ones(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(output)


def _synflow_inputs(model: nn.Module, batches: list[dict] | None) -> dict:
    if batches:
        return {k: v for k, v in batches[0].items() if k != "labels"}
    device = next(model.parameters()).device
    ids = torch.ones(1, 8, dtype=torch.long, device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    return inputs


def _synflow_once(model, params, inputs) -> dict[str, torch.Tensor]:
    originals = {id(t): t.data for t in [*model.parameters(), *model.buffers()]}
    hooks = [m.register_forward_hook(_scale_only) for m in _normalization_modules(model)]
    hooks += [m.register_forward_hook(_identity) for m in _activation_modules(model)]
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        hooks.append(embeddings.register_forward_hook(_all_ones))
    try:
        with torch.no_grad():
            for t in model.parameters():
                if t.is_floating_point():
                    t.data = t.data.double().abs()
            for t in model.buffers():
                if t.is_floating_point():
                    t.data = t.data.double()
        out = model(**inputs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        tensors = list(params.values())
        grads = torch.autograd.grad(logits.sum(), tensors, allow_unused=True)
        return {
            name: (p.detach() * g).abs().float() if g is not None else torch.zeros_like(p).float()
            for (name, p), g in zip(params.items(), grads)
        }
    finally:
        for h in hooks:
            h.remove()
        for t in [*model.parameters(), *model.buffers()]:
            t.data = originals[id(t)]


@register_scorer("synflow", needs_data=False)
def synflow_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[dict] | None,
    config: SparsityConfig,
) -> dict[str, torch.Tensor]:
    inputs = _synflow_inputs(model, batches)
    rounds = config.synflow_rounds
    if rounds == 1:
        return _synflow_once(model, params, inputs)
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        masks = None
        for r in range(1, rounds + 1):
            scores = _synflow_once(model, params, inputs)
            if masks is not None:
                scores = {n: s.masked_fill(~masks[n], -1.0) for n, s in scores.items()}
            density = (1.0 - config.sparsity) ** (r / rounds)
            masks = select_masks(scores, 1.0 - density, config.scope)
            with torch.no_grad():
                for n, p in params.items():
                    p.mul_(masks[n])
        return scores
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
