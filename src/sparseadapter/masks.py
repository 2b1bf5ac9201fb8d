"""The mask engine: exact-count thresholds, and keeping pruned weights at exactly zero.

Selection keeps exactly ``round((1 - s) * N)`` weights (rounding half up). Ties are broken by
position (earlier parameter, then earlier flat index, wins), so the same scores always give the
same masks. In global scope every tensor keeps at least its single best weight, so no adapter
tensor is ever pruned dead; the total count stays exact. Low-rank factor pairs (LoRA's A and B,
update B·A) are kept aligned: for one rank r, A's row r and B's column r each keep a weight
(their best), so no B·A is pruned to zero by kept weights that never meet; in layer scope too.

Enforcement has two parts, both optimizer-agnostic:
1. a gradient hook on each pruned parameter zeroes the gradient at pruned positions (NaN-safe),
   so optimizer state (momentum, Adam moments) never becomes non-zero there and weight decay
   acts on a zero weight;
2. a global optimizer step post-hook multiplies the masked parameters that the stepping optimizer
   holds by their masks in one fused ``_foreach_mul_`` call per mask set, as insurance against
   optimizers that move zero-gradient weights (parameters of other optimizers are left alone).
   It is registered while any mask set is live, and removed with the last.
Masks live outside ``state_dict`` (no new keys, no renamed parameters), so PEFT and AdapterHub
save/load keep working unchanged.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle

from sparseadapter.errors import ConfigError

if TYPE_CHECKING:
    from sparseadapter.config import SparsityConfig


def kept_count(numel: int, sparsity: float) -> int:
    """Weights kept out of ``numel`` at ``sparsity``: round((1 - s) * N), halves rounded up.

    Computed on the decimal the sparsity is written as: in floats 1 - 0.9 is just under 0.1, so
    5 weights at 90% would keep 0.4999... → 0 instead of 0.5 → 1.
    """
    kept = (1 - Decimal(repr(float(sparsity)))) * numel
    return min(numel, int(kept.quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def _top_k(scores: torch.Tensor, k: int, forced: int | None = None) -> torch.Tensor:
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if forced is not None:
        keep[forced] = True
    order = torch.sort(scores, descending=True, stable=True).indices
    keep[order[~keep[order]][: k - int(keep.sum())]] = True
    return keep


def aligned_picks(
    scores: dict[str, torch.Tensor], pairs: Sequence[tuple[str, str]]
) -> dict[str, int]:
    """For each (A, B) factor pair (rank = A's dim 0 = B's dim 1): the flat indices of the best
    weight of A's row r and of B's column r, for the rank r whose weaker side scores highest."""
    picks = {}
    for a_name, b_name in pairs:
        a, b = scores[a_name].detach().double().cpu(), scores[b_name].detach().double().cpu()
        a_best, a_arg = a.flatten(1).max(1)
        b_best, b_arg = b.transpose(0, 1).flatten(1).max(1)
        r = int(torch.minimum(a_best, b_best).argmax())
        b_index = torch.arange(b.numel()).view(b.shape).transpose(0, 1).flatten(1)
        picks[a_name] = r * a[0].numel() + int(a_arg[r])
        picks[b_name] = int(b_index[r, b_arg[r]])
    return picks


def select_masks(
    scores: dict[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    pairs: Sequence[tuple[str, str]] = (),
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True = kept) from scores, highest scores kept.

    ``pairs``: (A, B) names of low-rank factor pairs to keep aligned (see the module docstring).
    """
    if scope == "layer":
        forced = aligned_picks(scores, pairs)
        return {
            name: _top_k(
                s.flatten().double(), max(1, kept_count(s.numel(), sparsity)), forced.get(name)
            ).view(s.shape)
            for name, s in scores.items()
        }
    flat = torch.cat([s.detach().flatten().double().cpu() for s in scores.values()])
    sizes = [s.numel() for s in scores.values()]
    k = kept_count(flat.numel(), sparsity)
    if k == 0:
        raise ConfigError(
            f"sparsity {sparsity} keeps none of the {flat.numel()} prunable weights; use at most "
            f"{1 - 1 / flat.numel():.6g} (one weight kept), or scope 'layer'"
        )
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if k >= len(sizes):  # a budget too small for one weight per tensor skips the floor
        forced = aligned_picks(scores, pairs)
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
        best = torch.tensor(
            [forced.get(name, int(part.argmax())) for name, part in zip(scores, flat.split(sizes))]
        )
        keep[offsets + best] = True
    order = torch.sort(flat, descending=True, stable=True).indices
    rest = order[~keep[order]][: k - int(keep.sum())]
    keep[rest] = True
    return {
        name: part.view(s.shape).to(s.device)
        for (name, s), part in zip(scores.items(), keep.split(sizes))
    }


# The live mask sets, and the optimizer step post-hook that serves them: registered with the first
# mask set, removed with the last (``remove()`` or garbage collection), so a process without
# masks runs no hook. What each optimizer re-masks is worked out on its first step after the
# mask sets or its parameter groups change, not on every step.
_LIVE: dict[int, weakref.ref[MaskedParameters]] = {}
_STEP_HOOK: RemovableHandle | None = None
_PLANS: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Plan] = weakref.WeakKeyDictionary()
_generation = 0


@dataclass
class _Plan:
    key: tuple[int, ...]  # the generation of the mask sets, then the size of each param group
    parts: list[tuple[MaskedParameters, list[str]]]  # mask sets and their names it steps


def _plan_key(optimizer: torch.optim.Optimizer) -> tuple[int, ...]:
    return (_generation, *(len(group["params"]) for group in optimizer.param_groups))


def _make_plan(optimizer: torch.optim.Optimizer) -> _Plan:
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    parts = []
    for ref in list(_LIVE.values()):
        masked = ref()
        names = [] if masked is None else [n for n, p in masked.params.items() if id(p) in stepped]
        if names:
            parts.append((masked, names))
    return _Plan(_plan_key(optimizer), parts)


def _reapply_stepped_masks(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    plan = _PLANS.get(optimizer)
    if plan is None or plan.key != _plan_key(optimizer):
        plan = _PLANS[optimizer] = _make_plan(optimizer)
    for masked, names in plan.parts:
        masked._multiply(names)


def _track(masked: MaskedParameters) -> weakref.finalize:
    """Count ``masked`` among the live mask sets until the returned finalizer runs."""
    global _STEP_HOOK, _generation
    key = id(masked)
    _LIVE[key] = weakref.ref(masked)
    _generation += 1
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_reapply_stepped_masks)
    return weakref.finalize(masked, _untrack, key)


def _untrack(key: int) -> None:
    global _STEP_HOOK, _generation
    _LIVE.pop(key, None)
    _generation += 1
    if not _LIVE and _STEP_HOOK is not None:
        _STEP_HOOK.remove()
        _STEP_HOOK = None
        _PLANS.clear()


class MaskedParameters:
    """Fixed masks bound to parameters (by object, not by shape) and enforced during training."""

    def __init__(
        self,
        params: dict[str, nn.Parameter],
        masks: dict[str, torch.Tensor],
        config: SparsityConfig | None = None,
    ):
        self.params = params
        self.config = config
        self.masks = {n: masks[n].to(device=p.device, dtype=torch.bool) for n, p in params.items()}
        self._pruned = {n: ~m for n, m in self.masks.items()}
        self._factors: dict[str, torch.Tensor] = {}
        self._handles = [p.register_hook(self._gradient_hook(n)) for n, p in params.items()]
        self._untrack = _track(self)
        self.apply_()

    def __deepcopy__(self, memo: dict) -> MaskedParameters:
        # bound to the copied parameters, with hooks of its own (a plain copy would have none)
        params = {n: copy.deepcopy(p, memo) for n, p in self.params.items()}
        masks = {n: m.clone() for n, m in self.masks.items()}
        return MaskedParameters(params, masks, copy.deepcopy(self.config, memo))

    def _gradient_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            pruned = self._pruned[name]
            if pruned.device != grad.device:
                pruned = self._pruned[name] = pruned.to(grad.device)
            return grad.masked_fill(pruned, 0.0)

        return hook

    @torch.no_grad()
    def apply_(self) -> None:
        """Set pruned weights to exactly zero (one fused call, boolean masks as factors)."""
        self._multiply(list(self.params))

    @torch.no_grad()
    def _multiply(self, names: list[str]) -> None:
        params = [self.params[n] for n in names]
        first = self._factors.get(names[0])
        if first is None or first.device != params[0].device or first.dtype != params[0].dtype:
            # the masks in the weights' device and dtype: a single-dtype _foreach_mul_ is one
            # fused kernel, a mixed one falls back to one multiplication per tensor
            self.masks = {n: m.to(self.params[n].device) for n, m in self.masks.items()}
            self._factors = {n: m.to(self.params[n].dtype) for n, m in self.masks.items()}
        torch._foreach_mul_(params, [self._factors[n] for n in names])

    def remove(self) -> None:
        """Stop enforcing; the weights keep their current values."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._untrack()
