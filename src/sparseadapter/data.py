"""A run's data: its task's examples, the tokenizer, and the training and evaluation batches.

What examples look like and how they become features is the task's business
(:mod:`sparseadapter.tasks`); this module only wires them to a run's config."""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from sparseadapter.batching import LengthGroupedBatches, PadCollator
from sparseadapter.errors import ConfigError
from sparseadapter.runconfig import RunConfig
from sparseadapter.tasks import EvalSet, Task, get_task

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """A run's task, its training examples and its dev split(s) by name."""

    task: Task
    train: list
    dev: dict[str, list]


def load_run_data(
    config: RunConfig, data_dir: str | None = None, with_train: bool = True
) -> RunData:
    """The run's training examples (unless ``with_train=False``) and its dev split(s)."""
    task = get_task(config.data.task, config.data)
    data_dir = data_dir or config.data.data_dir
    train = task.load("train", data_dir, config.data.max_train_samples) if with_train else []
    dev = {
        split: task.load(split, data_dir, config.data.max_eval_samples) for split in task.dev_splits
    }
    return RunData(task, train, dev)


def load_tokenizer(model_path: str, model: nn.Module | None = None):
    """The model's tokenizer, ready to batch for ``model``.

    A decoder tokenizer without a pad token pads with its EOS token (as decoder fine-tuning does;
    the model's ``pad_token_id`` is set to match, so a classifier pools the last real token), and
    the longest input is capped at the model's position embeddings."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"no tokenizer found for model {model_path!r} ({str(err).splitlines()[0]}); "
            "pass --model minilm, an HF model id, or a folder holding a model and its tokenizer"
        ) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"the tokenizer of {model_path!r} has neither a pad nor an EOS token to pad "
                "batches with; give it a pad token (tokenizer.pad_token = ...) and save it"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions and tokenizer.model_max_length > positions:
            tokenizer.model_max_length = positions
    return tokenizer


@functools.cache
def _note_capped(requested: int, limit: int) -> None:
    log.warning(
        "data.max_length %d is longer than the model takes: inputs are cut at %d tokens",
        requested,
        limit,
    )


def capped(config: RunConfig, tokenizer) -> RunConfig:
    """``config`` with ``data.max_length`` at most the tokenizer's own limit (noted once)."""
    if config.data.max_length <= tokenizer.model_max_length:
        return config
    _note_capped(config.data.max_length, tokenizer.model_max_length)
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, max_length=tokenizer.model_max_length)
    )


def train_features(
    config: RunConfig, task: Task, tokenizer, examples: list
) -> list[dict[str, Any]]:
    """The training examples as tokenized features (unpadded), with what the loss needs."""
    return task.train_features(tokenizer, examples, capped(config, tokenizer).data)


def train_loader(
    config: RunConfig, features: list[dict[str, Any]], tokenizer, generator: torch.Generator
) -> DataLoader:
    """Shuffled training batches; the order depends on the state of ``generator`` only."""
    collate = PadCollator(tokenizer.pad_token_id or 0)
    if config.data.group_by_length:
        lengths = [len(f["input_ids"]) for f in features]
        batches = LengthGroupedBatches(lengths, config.train.batch_size, generator)
        # the loader's base seed then comes from the data generator, not from the global RNG
        # that dropout uses, so a resumed run draws the same dropout masks
        return DataLoader(features, batch_sampler=batches, collate_fn=collate, generator=generator)
    return DataLoader(
        features,
        batch_size=config.train.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
    )


def data_generator(config: RunConfig) -> torch.Generator:
    """The generator behind the training data order (seeded by the run's seed)."""
    return torch.Generator().manual_seed(config.train.seed)


def eval_sets(config: RunConfig, data: RunData, tokenizer) -> dict[str, EvalSet]:
    """One evaluation set per dev split."""
    config = capped(config, tokenizer)
    return {
        split: data.task.eval_set(tokenizer, examples, config.data, config.train.eval_batch_size)
        for split, examples in data.dev.items()
    }
