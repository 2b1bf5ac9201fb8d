"""The training loss of one batch, and gradients summed over the scoring batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseadapter.errors import ScoreError, ScoringDataError


def batch_loss(model: nn.Module, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """The loss of ``batch``; with ``temperature != 1`` logits are divided by it first.

    Classification uses cross-entropy, float labels mean regression (MSE), and token-level
    logits of a decoder-only model are shifted by one as in causal LM training. Models whose
    output has no ``logits`` (e.g. extractive QA) use their own loss and ignore the temperature.
    """
    if "labels" not in batch and "start_positions" not in batch:
        raise ScoringDataError(
            "scoring batches need labels ('labels' key): pass training batches as produced by "
            "your data collator, with their labels"
        )
    if temperature == 1.0 or "labels" not in batch:
        out = model(**batch)
        loss = out.loss if hasattr(out, "loss") else out[0]
    else:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs)
        if not hasattr(out, "logits"):
            loss = model(**batch).loss
        else:
            loss = _loss_from_logits(model, out.logits / temperature, batch["labels"])
    if loss is None:
        raise ScoringDataError(
            "the model returned no loss for a scoring batch; does it have labels?"
        )
    if not torch.isfinite(loss):
        raise ScoreError(
            f"the loss of a scoring batch is {loss.item()}: check the inputs and labels, or use a "
            "data-free method (magnitude, random, synflow)"
        )
    return loss


def _loss_from_logits(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.is_floating_point():
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    if logits.dim() == 3 and not getattr(model.config, "is_encoder_decoder", False):
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100
    )


def summed_gradients(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: list[dict],
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """∂L/∂θ summed over ``batches``, without touching ``.grad``."""
    names, tensors = list(params), list(params.values())
    total = [torch.zeros_like(p) for p in tensors]
    for batch in batches:
        grads = torch.autograd.grad(
            batch_loss(model, batch, temperature), tensors, allow_unused=True
        )
        for acc, g in zip(total, grads):
            if g is not None:
                acc.add_(g)
    return dict(zip(names, total))
