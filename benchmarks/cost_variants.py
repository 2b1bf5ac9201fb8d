"""The cost benchmark's variants: a family's adapter built, pruned and trained a step at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import common
import torch
import transformers
from cost_settings import FAMILIES, MASK_METHOD, CostSettings, Variant, VariantSpec

from sparseadapter import (
    SparsityConfig,
    apply_masks,
    get_masks,
    remove_sparsity,
    sparsify,
)
from sparseadapter.adapters import build_model
from sparseadapter.data import load_tokenizer


def quiet_libraries() -> None:
    transformers.logging.set_verbosity_error()
    logging.getLogger("adapters").setLevel(logging.ERROR)


def load_batches(settings: CostSettings, model_path: str, data_dir: str | None) -> list[dict]:
    """``settings.batches`` fixed training batches, each padded to its own longest example."""
    tokenizer = load_tokenizer(model_path)
    limit = settings.batch_size * settings.batches
    features = common.task_features(tokenizer, settings.task, data_dir, limit, settings.max_length)
    return common.fixed_batches(features, tokenizer, settings.batch_size)


def make_variant(
    family: str, spec: VariantSpec, model_path: str, batches: list[dict], num_labels: int
) -> Variant:
    """Build a variant, prune it (SNIP on the first batch) and keep its masks, detached.

    Raises ConfigError when the family cannot be widened for Large-Sparse.
    """
    adapter, library = FAMILIES[family]
    torch.manual_seed(0)
    model, large_sparsity = build_model(
        model_path, num_labels, adapter, library, large_sparse=spec.large_sparse
    )
    model.train()
    sparsity = spec.sparsity if large_sparsity is None else large_sparsity
    config, masks = None, {}
    if sparsity:
        config = SparsityConfig(MASK_METHOD, sparsity, num_examples=len(batches[0]["labels"]))
        sparsify(model, config, batches=batches[:1])
        masks = get_masks(model)
        remove_sparsity(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.1)
    info = {
        "sparsity": sparsity or 0.0,
        "trainable": sum(p.numel() for p in trainable),
        "prunable": sum(m.numel() for m in masks.values()),
        "kept": sum(int(m.sum()) for m in masks.values()),
    }
    return Variant(spec.key, model, optimizer, masks, config, info)


@contextmanager
def enforced(variant: Variant) -> Iterator[None]:
    """Attach the variant's masks (if any) for the steps inside, then detach them.

    The engine's optimizer post-hook looks at every live mask set after any optimizer's step
    (to re-mask the parameters that optimizer holds). Attaching a variant's masks only around
    its own steps (untimed) keeps the other variants' mask sets out of its timings, so each
    variant costs what it costs when trained alone.
    """
    if variant.masks:
        apply_masks(variant.model, variant.masks, variant.config)
    try:
        yield
    finally:
        remove_sparsity(variant.model)


def training_step(variant: Variant, batch: dict) -> dict[str, float]:
    """One forward + backward + AdamW step + zero_grad; seconds per phase and in total."""
    start = time.perf_counter()
    loss = variant.model(**batch).loss
    forward = time.perf_counter()
    loss.backward()
    backward = time.perf_counter()
    variant.optimizer.step()
    variant.optimizer.zero_grad()
    end = time.perf_counter()
    return {
        "forward": forward - start,
        "backward": backward - forward,
        "optimizer": end - backward,
        "total": end - start,
    }
