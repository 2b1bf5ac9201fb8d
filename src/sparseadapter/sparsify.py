"""sparsify(): score the prunable adapter weights once, at initialization, and fix the masks.

config → targets → (surrogate init of zero-init tensors) → scores → masks → enforcement.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from sparseadapter.config import DEFAULT_LR_DENSITY_EXPONENT, SparsityConfig, density_scaled_lr
from sparseadapter.errors import (
    CheckpointError,
    ConfigError,
    NoPrunableWeightsError,
    ScoreError,
    ScoringDataError,
)
from sparseadapter.masks import MaskedParameters, select_masks
from sparseadapter.scoring import get_scorer
from sparseadapter.targets import lora_pairs, prunable_parameters, scale_parameters

STATE_ATTRIBUTE = "_sparseadapter_masks"


@dataclass
class TensorReport:
    name: str
    shape: tuple[int, ...]
    kept: int
    zero_init: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class SparsityReport:
    """What sparsify did: per-tensor and total prunable, kept and pruned counts."""

    config: SparsityConfig
    tensors: list[TensorReport] = field(default_factory=list)
    dense_tensors: list[str] = field(default_factory=list)
    scoring_examples: int = 0
    seconds: float = 0.0

    @property
    def prunable(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def kept(self) -> int:
        return sum(t.kept for t in self.tensors)

    @property
    def pruned(self) -> int:
        return self.prunable - self.kept

    @property
    def achieved_sparsity(self) -> float:
        return self.pruned / self.prunable

    def scaled_lr(self, lr: float, exponent: float = DEFAULT_LR_DENSITY_EXPONENT) -> float:
        """The peak learning rate for the adapter pruned here: ``lr`` x density^-``exponent``
        (density = kept / prunable), the rule ``sparseadapter train`` applies by default."""
        return density_scaled_lr(lr, self.kept, self.prunable, exponent)

    def to_dict(self) -> dict:
        return {
            "method": self.config.method,
            "target_sparsity": self.config.sparsity,
            "scope": self.config.scope,
            "prunable": self.prunable,
            "kept": self.kept,
            "pruned": self.pruned,
            "achieved_sparsity": self.achieved_sparsity,
            "scoring_examples": self.scoring_examples,
            "seconds": self.seconds,
            "dense_zero_init_tensors": self.dense_tensors,
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "kept": t.kept, "zero_init": t.zero_init}
                for t in self.tensors
            ],
        }

    def __str__(self) -> str:
        width = max(len(t.name) for t in self.tensors)
        lines = [f"{'tensor':<{width}}  {'prunable':>9}  {'kept':>9}  {'pruned':>9}  sparsity"]
        for t in self.tensors:
            flag = "  (zero-init, surrogate-scored)" if t.zero_init else ""
            lines.append(
                f"{t.name:<{width}}  {t.numel:>9}  {t.kept:>9}  {t.numel - t.kept:>9}  "
                f"{1 - t.kept / t.numel:8.4f}{flag}"
            )
        lines.append(
            f"{'total':<{width}}  {self.prunable:>9}  {self.kept:>9}  {self.pruned:>9}  "
            f"{self.achieved_sparsity:8.4f}"
        )
        lines.append(
            f"method={self.config.method} target={self.config.sparsity} scope={self.config.scope} "
            f"scoring_examples={self.scoring_examples} time={self.seconds:.2f}s"
        )
        return "\n".join(lines)


def _batch_size(batch: Mapping) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ScoringDataError(
        "a scoring batch holds no tensors: pass dicts of tensors (input_ids, ...)"
    )


def take_scoring_batches(
    batches: Iterable[Mapping] | None, num_examples: int, device: torch.device
) -> list[dict]:
    """Whole batches from ``batches`` until at least ``num_examples`` examples, moved to ``device``."""
    if batches is None:
        raise ScoringDataError(
            "this pruning method needs scoring data: pass batches=<training DataLoader> "
            "(or use a data-free method: random, magnitude, synflow)"
        )
    if not isinstance(batches, Iterable):
        raise ScoringDataError(
            f"batches must be an iterable of dict batches (e.g. a DataLoader), got "
            f"{type(batches).__name__}"
        )
    taken, seen = [], 0
    for batch in batches:
        if not isinstance(batch, Mapping):
            raise ScoringDataError(
                f"scoring batches must be dicts of tensors, got {type(batch).__name__}"
            )
        taken.append(
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        )
        seen += _batch_size(batch)
        if seen >= num_examples:
            break
    if not taken:
        raise ScoringDataError(
            "no scoring batches: the iterable is empty or already exhausted; pass a fresh "
            "DataLoader or a list of batches"
        )
    return taken


@contextmanager
def _eval_mode(model: nn.Module):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


@contextmanager
def _surrogate_init(params: dict[str, nn.Parameter], names: list[str], seed: int):
    """Temporarily give zero-initialized tensors a seeded U(-1/√fan_in, 1/√fan_in) init.

    A zero factor makes every data-driven score of its partner zero too (LoRA: ∂L/∂A ∝ B = 0),
    so it gets a stand-in init while scoring under both zero-init policies; it is zero again
    before training starts.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in names:
            p = params[name]
            fan_in = p.shape[1] if p.dim() > 1 else p.numel()
            bound = 1.0 / math.sqrt(fan_in)
            values = torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1
            p.copy_(values * bound)
    try:
        yield
    finally:
        with torch.no_grad():
            for name in names:
                params[name].zero_()


def _check_scores(scores: dict[str, torch.Tensor], params: dict[str, nn.Parameter], method: str):
    missing = set(params) - set(scores)
    if missing:
        raise ScoreError(f"pruning method {method!r} returned no scores for {sorted(missing)[:3]}")
    for name, s in scores.items():
        if s.shape != params[name].shape:
            raise ScoreError(
                f"pruning method {method!r} returned a score of shape {tuple(s.shape)} for "
                f"{name} of shape {tuple(params[name].shape)}"
            )
        if not torch.isfinite(s).all():
            raise ScoreError(
                f"pruning method {method!r} gave non-finite scores for {name}: check the scoring "
                "data and the model's loss, or use magnitude/random"
            )
    if all(not s.any() for s in scores.values()):
        raise ScoreError(
            f"pruning method {method!r} gave all-zero scores: the adapter weights or their "
            "gradients are all zero; check that the adapter is trainable and the scoring batches "
            "have labels, or use magnitude/random"
        )


def sparsify(
    model: nn.Module,
    config: SparsityConfig | None = None,
    batches: Iterable[Mapping] | None = None,
) -> SparsityReport:
    """Prune the model's trainable adapter weights once and keep them pruned while training.

    ``batches`` are training batches (dicts of tensors with labels); whole batches are taken
    until ``config.num_examples`` examples are seen. Scoring runs in eval mode (dropout off) and
    the train/eval mode of every module is restored. Calling it again replaces the masks; if that
    call fails, the masks the model had stay.
    """
    config = _checked(model, config)
    start = time.perf_counter()
    previous = masked_parameters(model)
    remove_sparsity(model)  # old masks would hold back the gradients that scoring reads
    try:
        scored = _score(model, config, batches)
        params = scored.params
        masks = select_masks(scored.scores, config.sparsity, config.scope, lora_pairs(params))
    except BaseException:
        if previous is not None:
            apply_masks(model, previous.masks, previous.config)
        raise
    setattr(model, STATE_ATTRIBUTE, MaskedParameters(params, masks, config))
    return SparsityReport(
        config=config,
        tensors=[
            TensorReport(n, tuple(p.shape), int(masks[n].sum()), n in scored.zero_init)
            for n, p in params.items()
        ],
        dense_tensors=[n for n in scored.zero_init if n not in params],
        scoring_examples=scored.examples,
        seconds=time.perf_counter() - start,
    )


def score_weights(
    model: nn.Module,
    config: SparsityConfig | None = None,
    batches: Iterable[Mapping] | None = None,
) -> dict[str, torch.Tensor]:
    """The scores that ``sparsify`` ranks (higher = kept first), by prunable parameter name,
    computed exactly as ``sparsify`` computes them; nothing is pruned."""
    return _score(model, _checked(model, config), batches).scores


def _checked(model: object, config: object) -> SparsityConfig:
    """``config`` (the default when None) once ``model`` and ``config`` are of the right types."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch nn.Module (a PEFT or AdapterHub model), got "
            f"{type(model).__name__}"
        )
    if config is None:
        return SparsityConfig()
    if not isinstance(config, SparsityConfig):
        raise ConfigError(
            f"config must be a SparsityConfig, got {type(config).__name__}; e.g. "
            "SparsityConfig(method='snip', sparsity=0.4)"
        )
    return config


@dataclass
class _Scored:
    params: dict[str, nn.Parameter]  # the tensors to prune
    scores: dict[str, torch.Tensor]
    zero_init: list[str]  # prunable tensors that were all zeros
    examples: int  # scoring examples used


def _score(model: nn.Module, config: SparsityConfig, batches: Iterable[Mapping] | None) -> _Scored:
    candidates = prunable_parameters(model, config)
    scales = scale_parameters(model) & set(candidates)
    if scales:
        warnings.warn(
            f"pruning {len(scales)} (IA)³ scale vectors (e.g. {min(scales)}): a pruned scale is "
            "0, which switches that channel of the frozen model off (its neutral value is 1); "
            "train (IA)³ dense, or exclude its scales, unless that is what you want",
            stacklevel=3,
        )
    zero_init = [n for n, p in candidates.items() if not p.detach().any()]
    params = candidates
    if config.zero_init == "dense":
        params = {n: p for n, p in candidates.items() if n not in zero_init}
        if not params:
            raise NoPrunableWeightsError(
                f"all {len(candidates)} prunable tensors are zero-initialized and "
                "zero_init='dense' leaves those unpruned: nothing is left to prune; use "
                "zero_init='surrogate' or include other tensors"
            )
    scorer = get_scorer(config.method)
    device = next(iter(params.values())).device
    scoring_batches = (
        take_scoring_batches(batches, config.num_examples, device)
        if scorer.needs_data or batches is not None
        else None
    )
    with _eval_mode(model), _surrogate_init(candidates, zero_init, config.seed):
        scores = scorer.fn(model, params, scoring_batches, config)
        _check_scores(scores, params, config.method)
    examples = sum(_batch_size(b) for b in scoring_batches or [])
    return _Scored(params, scores, zero_init, examples)


def apply_masks(
    model: nn.Module, masks: dict[str, torch.Tensor], config: SparsityConfig | None = None
) -> None:
    """Attach given keep-masks (by parameter name) to ``model`` and enforce them from now on.

    Used to restore a sparse checkpoint; replaces any masks already attached.
    """
    remove_sparsity(model)
    named = dict(model.named_parameters())
    unknown = [n for n in masks if n not in named]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} masks name parameters this model does not have (e.g. {unknown[0]}): "
            "the masks were made for another model or adapter configuration"
        )
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(named[name].shape):
            raise CheckpointError(
                f"mask for {name} has shape {tuple(mask.shape)} but the parameter has "
                f"{tuple(named[name].shape)}: the masks belong to another adapter configuration"
            )
    params = {n: named[n] for n in masks}
    setattr(model, STATE_ATTRIBUTE, MaskedParameters(params, masks, config))


def masked_parameters(model: nn.Module) -> MaskedParameters | None:
    """The masks sparsify attached to ``model`` (None if it was not sparsified)."""
    return getattr(model, STATE_ATTRIBUTE, None)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean keep-masks by parameter name; empty if ``model`` was not sparsified."""
    state = masked_parameters(model)
    return dict(state.masks) if state else {}


def remove_sparsity(model: nn.Module) -> None:
    """Stop enforcing masks on ``model`` (weights keep their values)."""
    state = masked_parameters(model)
    if state is not None:
        state.remove()
        delattr(model, STATE_ATTRIBUTE)
