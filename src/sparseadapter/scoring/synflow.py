"""SynFlow (Tanaka et al. 2020): score = |θ ⊙ ∂R/∂θ|, data-free.

R = 1ᵀ(∏|W|)1 is the sum of the model's outputs when every weight is replaced by its absolute
value and the input is all ones, computed in float64. Three changes make this meaningful for a
transformer: the input embedding's output is replaced by ones (token ids cannot be all-ones
vectors); every normalization layer is replaced by |γ|·x/mean(|x|) + |β| (scaling without
centering), because a LayerNorm maps an all-ones vector to zero and would make every upstream
score vanish, while dropping it entirely overflows even float64 after a few layers; and every
activation module is replaced by the identity, the linearization SynFlow assumes (a ReLU of a
positive input), because a tanh or GELU saturates at these magnitudes and zeroes the gradient.
The scoring batches only give the input's shape; without them an 8-token input is used. The
model runs on stand-in tensors (``torch.func.functional_call``): its own weights and buffers
are never written.

``synflow_rounds > 1`` prunes iteratively on an exponential schedule, as in the original paper.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call

from sparseadapter.masks import select_masks
from sparseadapter.scoring.registry import register_scorer
from sparseadapter.targets import normalization_modules

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig


def _activation_classes() -> tuple[type[nn.Module], ...]:
    """torch's, transformers' and AdapterHub's activation modules, from those packages that are
    loaded (a model holds instances of loaded classes only); softmax-like and attention modules
    are not activations."""
    classes: list[type[nn.Module]] = []
    for name in _ACTIVATION_MODULES:
        module = sys.modules.get(name)
        if module is None:
            continue
        classes += [
            c
            for c in vars(module).values()
            if isinstance(c, type)
            and issubclass(c, nn.Module)
            and c.__module__ == name
            and c.__name__ not in _NOT_ACTIVATIONS
        ]
    adapterhub = sys.modules.get("adapters.methods.modeling")
    if adapterhub is not None:
        classes.append(adapterhub.Activation_Function_Class)
    return tuple(classes)


_ACTIVATION_MODULES = ("torch.nn.modules.activation", "transformers.activations")
_NOT_ACTIVATIONS = ("Softmax", "Softmin", "LogSoftmax", "MultiheadAttention", "Softmax2d")


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


def _synflow_once(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    inputs: dict,
    masks: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One SynFlow pass on stand-in tensors (|θ| and buffers in float64; pruned weights zero
    under ``masks``): the model's own parameters and buffers are never written."""
    prunable = {id(p): n for n, p in params.items()}
    leaves: dict[str, torch.Tensor] = {}

    def stand_in(t: torch.Tensor, is_parameter: bool) -> torch.Tensor:
        if not is_parameter:
            return t.double()
        value = t.detach().double().abs()
        name = prunable.get(id(t))
        if name is None:
            return value
        if masks is not None:
            value = value * masks[name]
        leaves[name] = value.requires_grad_()
        return leaves[name]

    # every slot of every module once (a tensor tied into several slots gets one stand-in): a
    # module registered under two names would otherwise be swapped twice and restored wrongly
    stand_ins: dict[str, torch.Tensor] = {}
    made: dict[int, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        members = [
            *((n, t, True) for n, t in module.named_parameters(prefix, False, False)),
            *((n, t, False) for n, t in module.named_buffers(prefix, False, False)),
        ]
        for name, t, is_parameter in members:
            if t.is_floating_point():
                if id(t) not in made:
                    made[id(t)] = stand_in(t, is_parameter)
                stand_ins[name] = made[id(t)]
    hooks = [m.register_forward_hook(_scale_only) for m in _normalizations(model)]
    activations = _activation_classes()
    hooks += [
        m.register_forward_hook(_identity) for m in model.modules() if isinstance(m, activations)
    ]
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        hooks.append(embeddings.register_forward_hook(_all_ones))
    try:
        out = functional_call(model, stand_ins, args=(), kwargs=inputs, tie_weights=False)
    finally:
        for h in hooks:
            h.remove()
    logits = out.logits if hasattr(out, "logits") else out[0]
    tensors = [leaves[n] for n in params]
    grads = torch.autograd.grad(logits.sum(), tensors, allow_unused=True)
    return {
        name: (t.detach() * g).abs().float() if g is not None else torch.zeros_like(p).float()
        for (name, p), t, g in zip(params.items(), tensors, grads)
    }


def _normalizations(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in normalization_modules(model)
        if isinstance(getattr(m, "weight", None), torch.Tensor)
    ]


@register_scorer("synflow", needs_data=False)
def synflow_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[dict] | None,
    config: SparsityConfig,
) -> dict[str, torch.Tensor]:
    inputs = _synflow_inputs(model, batches)
    rounds = config.synflow_rounds
    masks = None
    for r in range(1, rounds + 1):
        scores = _synflow_once(model, params, inputs, masks)
        if rounds == 1:
            return scores
        if masks is not None:
            scores = {n: s.masked_fill(~masks[n], -1.0) for n, s in scores.items()}
        density = (1.0 - config.sparsity) ** (r / rounds)
        masks = select_masks(scores, 1.0 - density, config.scope)
    return scores
