"""What a task is to the rest of sparseadapter: one interface behind which GLUE classification,
extractive QA and summarization differ.

The training loop, evaluation, sweeps, resume and the benchmarks only talk to :class:`Task`:
adding a task touches ``tasks/`` and nothing else. A task says which model head it trains
(``head``), loads its examples, turns them into training features (whose batches carry what the
model's own loss needs: ``labels``, or ``start_positions``/``end_positions``), builds the
evaluation batches of a split, and scores a model on them.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn
from torch.utils.data import DataLoader

from sparseadapter.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from sparseadapter.runconfig import DataConfig

SEQUENCE_CLASSIFICATION = "sequence-classification"
QUESTION_ANSWERING = "question-answering"
CAUSAL_LM = "causal-lm"
HEADS = (SEQUENCE_CLASSIFICATION, QUESTION_ANSWERING, CAUSAL_LM)

# the seed of the subset that max_train_samples / max_eval_samples keep (not the run's seed:
# every run of a comparison sees the same examples)
SUBSET_SEED = 0


@dataclass
class EvalSet:
    """A split ready to score: its batches, its examples and what decoding needs besides."""

    loader: DataLoader
    examples: list
    extra: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A task: its data, its model head, its loss inputs, its decoding and its metrics."""

    name: str
    head: ClassVar[str]
    metrics: tuple[str, ...]
    main_metric: str
    dev_splits: tuple[str, ...] = ("validation",)
    default_max_length: ClassVar[int] = 128
    default_model: ClassVar[str] = "minilm"
    default_batch_size: ClassVar[int] = 32
    default_eval_batch_size: ClassVar[int] = 64
    num_labels: int = 0  # classification heads only
    problem_type: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @classmethod  # noqa: B027 (most tasks take any options)
    def check(cls, data: DataConfig) -> None:
        """ConfigError for data options this task cannot run with."""

    @classmethod
    def run_label(cls, data: DataConfig) -> str:
        """The task's part of a run's name."""
        return data.task

    @abstractmethod
    def load(self, split: str, data_dir: str | None, max_samples: int | None) -> list:
        """The examples of ``split`` ("train" or one of ``dev_splits``)."""

    @abstractmethod
    def train_features(self, tokenizer, examples: list, data: DataConfig) -> list[dict[str, Any]]:
        """Tokenized training features (unpadded) with what the model's loss needs."""

    @abstractmethod
    def eval_set(self, tokenizer, examples: list, data: DataConfig, batch_size: int) -> EvalSet:
        """The evaluation batches of one split."""

    @abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        eval_set: EvalSet,
        accelerator: Accelerator,
        tokenizer,
        data: DataConfig,
    ) -> dict[str, float]:
        """The split's metrics (gathered over processes) and a ``collapsed`` flag: whether the
        model gives (nearly) one answer to every example."""

    def describe_data(self, data_dir: str | None) -> str:
        """Where the examples come from, for the run's log and summary."""
        return data_dir or "the datasets hub"


def check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be a positive integer, got {max_samples}")


def subset(examples: list, max_samples: int | None) -> list:
    """``max_samples`` examples drawn with a fixed seed, kept in file order (all if None).

    A seeded draw rather than the first N: SQuAD and XSum files are ordered by article or
    topic, so their first N examples would all come from a few documents."""
    check_max_samples(max_samples)
    if max_samples is None or max_samples >= len(examples):
        return examples
    keep = sorted(random.Random(SUBSET_SEED).sample(range(len(examples)), max_samples))
    return [examples[i] for i in keep]
