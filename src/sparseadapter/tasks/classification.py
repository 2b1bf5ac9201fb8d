"""Sentence(-pair) classification and regression: the GLUE tasks behind the Task interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sparseadapter.batching import PadCollator
from sparseadapter.tasks.base import SEQUENCE_CLASSIFICATION, EvalSet, Task
from sparseadapter.tasks.glue import Example, TaskSpec, compute_metrics, is_collapsed, load_glue

if TYPE_CHECKING:
    from accelerate import Accelerator

    from sparseadapter.runconfig import DataConfig


def encode_examples(
    tokenizer, examples: list[Example], max_length: int, is_regression: bool
) -> list[dict[str, Any]]:
    """Tokenized examples (unpadded) with their labels, at most ``max_length`` tokens."""
    pairs = bool(examples) and examples[0].text_b is not None
    encoded = tokenizer(
        [e.text_a for e in examples],
        [e.text_b for e in examples] if pairs else None,
        truncation=True,
        max_length=max_length,
    )
    cast = float if is_regression else int
    return [
        {**{key: values[i] for key, values in encoded.items()}, "labels": cast(e.label)}
        for i, e in enumerate(examples)
    ]


class GlueTask(Task):
    """A GLUE task (``TaskSpec``): a classification (or STS-B regression) head on the model."""

    head = SEQUENCE_CLASSIFICATION

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.name = spec.name
        self.metrics = spec.metrics
        self.main_metric = spec.main_metric
        self.dev_splits = spec.dev_splits
        self.num_labels = spec.num_labels
        self.problem_type = spec.problem_type

    def load(self, split: str, data_dir: str | None, max_samples: int | None) -> list[Example]:
        return load_glue(self.name, split, data_dir, max_samples)

    def train_features(self, tokenizer, examples, data: DataConfig) -> list[dict[str, Any]]:
        return encode_examples(tokenizer, examples, data.max_length, self.is_regression)

    def eval_set(self, tokenizer, examples, data: DataConfig, batch_size: int) -> EvalSet:
        # shortest examples first: batches carry little padding; metrics ignore the order
        features = sorted(
            encode_examples(tokenizer, examples, data.max_length, self.is_regression),
            key=lambda feature: len(feature["input_ids"]),
        )
        loader = DataLoader(
            features, batch_size=batch_size, collate_fn=PadCollator(tokenizer.pad_token_id or 0)
        )
        return EvalSet(loader, examples)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, eval_set: EvalSet, accelerator: Accelerator, tokenizer, data
    ) -> dict[str, float]:
        predictions, references = [], []
        for batch in eval_set.loader:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            preds = logits.squeeze(-1) if self.is_regression else logits.argmax(-1)
            preds, refs = accelerator.gather_for_metrics((preds, batch["labels"]))
            predictions.append(preds.float().cpu() if self.is_regression else preds.cpu())
            references.append(refs.cpu())
        preds, refs = torch.cat(predictions).tolist(), torch.cat(references).tolist()
        metrics: dict[str, Any] = compute_metrics(self.name, preds, refs)
        metrics["collapsed"] = is_collapsed(self.name, preds, refs)
        return metrics
