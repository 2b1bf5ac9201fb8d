"""Sentence(-pair) classification and regression behind the Task interface: the GLUE tasks, and
a user's own data (``text-classification``: CSV, TSV or JSON lines files)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sparseadapter.batching import PadCollator
from sparseadapter.errors import ConfigError, DataError, not_utf8_message, shown
from sparseadapter.tasks.base import SEQUENCE_CLASSIFICATION, EvalSet, Task, check_max_samples
from sparseadapter.tasks.glue import Example, TaskSpec, collapsed, load_glue, metric_values

if TYPE_CHECKING:
    from accelerate import Accelerator

    from sparseadapter.runconfig import DataConfig

TEXT_CLASSIFICATION = "text-classification"
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "jsonl", ".jsonl": "jsonl"}


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


class ClassificationTask(Task):
    """A classification (or regression, ``num_labels == 1``) head on the model's pooled input."""

    head = SEQUENCE_CLASSIFICATION

    @property
    def problem_type(self) -> str:  # type: ignore[override]
        """The ``problem_type`` of a Hugging Face sequence-classification model."""
        return "regression" if self.is_regression else "single_label_classification"

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
        metrics: dict[str, Any] = metric_values(self.metrics, preds, refs, self.is_regression)
        metrics["collapsed"] = collapsed(preds, refs, self.is_regression)
        return metrics


class GlueTask(ClassificationTask):
    """A GLUE task, from its :class:`TaskSpec`."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.name = spec.name
        self.metrics = spec.metrics
        self.main_metric = spec.main_metric
        self.dev_splits = spec.dev_splits
        self.num_labels = spec.num_labels

    def load(self, split: str, data_dir: str | None, max_samples: int | None) -> list[Example]:
        return load_glue(self.name, split, data_dir, max_samples)


class TextClassificationTask(ClassificationTask):
    """A user's own sentence(-pair) data: ``data.train_file`` and ``data.validation_file``.

    Labels are mapped to ids in the order of ``data.label_names`` (by default the sorted labels
    of the training file, written to the run's config so that evaluation maps them the same
    way); labels that are all numbers, some not whole, mean regression (``data.label_names``
    then is ``[]``). Metrics: accuracy and F1 (macro-averaged over more than two classes), or
    Pearson and Spearman correlation."""

    name = TEXT_CLASSIFICATION

    @classmethod
    def check(cls, data: DataConfig) -> None:
        for option in ("train_file", "validation_file"):
            if getattr(data, option) is None:
                flag = option.replace("_", "-")
                raise ConfigError(
                    f"--task text-classification needs --{flag} (a CSV, TSV or JSON lines file)"
                )

    @classmethod
    def run_label(cls, data: DataConfig) -> str:
        """Named after the data: the training file's name without its extension."""
        return Path(data.train_file).stem

    def __init__(self, data: DataConfig):
        self.data = data
        if data.label_names is None:
            data.label_names = infer_labels(read_rows(data, data.train_file))
        self.label_ids = {name: i for i, name in enumerate(data.label_names)}
        self.num_labels = len(data.label_names) or 1
        if self.is_regression:
            self.metrics, self.main_metric = ("pearson", "spearmanr"), "pearson"
        else:
            f1 = "f1" if self.num_labels == 2 else "f1_macro"
            self.metrics, self.main_metric = ("accuracy", f1), "accuracy"

    def load(self, split: str, data_dir: str | None, max_samples: int | None) -> list[Example]:
        check_max_samples(max_samples)
        path = self.data.train_file if split == "train" else self.data.validation_file
        rows = read_rows(self.data, path)[:max_samples]
        return [self._example(row, path, number) for number, row in enumerate(rows, 2)]

    def _example(self, row: dict[str, str], path: str, number: int) -> Example:
        value = row[self.data.label_column]
        if self.is_regression:
            label: float | int = _number(value)
            if not math.isfinite(label):
                raise DataError(f"label {shown(value)} in row {number} of {path} is not a number")
        elif value not in self.label_ids:
            raise DataError(
                f"label {shown(value)} in row {number} of {path} does not occur in the training "
                f"file (labels: {', '.join(self.label_ids)}); fix the row, or add examples of it "
                "to the training file"
            )
        else:
            label = self.label_ids[value]
        pair = self.data.text_pair_column
        return Example(row[self.data.text_column], row[pair] if pair else None, label)


def infer_labels(rows: list[dict[str, str]]) -> list[str]:
    """The class names of a training file in id order, or [] for regression labels."""
    values = [row["__label__"] for row in rows]
    numbers = [_number(v) for v in values]
    if all(math.isfinite(n) for n in numbers) and any(n != int(n) for n in numbers):
        return []
    names = sorted(set(values), key=lambda v: (not math.isfinite(_number(v)), _number(v), v))
    if len(names) < 2:
        raise DataError(
            f"the training file has a single label {shown(values[0])}; classification needs "
            "examples of at least two classes"
        )
    return names


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def read_rows(data: DataConfig, path: str) -> list[dict[str, str]]:
    """The rows of a CSV, TSV or JSON lines file as strings, with the label also under
    ``__label__``; DataError naming a missing column and the flag that names it."""
    file = Path(path)
    kind = FILE_FORMATS.get(file.suffix.lower())
    if kind is None:
        raise DataError(
            f"{file}: unknown file type {shown(file.suffix)}; use .csv, .tsv, .json or .jsonl"
        )
    if not file.is_file():
        raise DataError(f"data file {file} does not exist; check --train-file/--validation-file")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(not_utf8_message(file, err)) from None
    if kind == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise DataError(
                        f"line {number} of {file} is not JSON; fix or remove it"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"line {number} of {file} is not a JSON object")
                rows.append({k: "" if v is None else str(v) for k, v in row.items()})
    else:
        delimiter = "," if kind == "csv" else "\t"
        rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows:
        raise DataError(f"{file} has no examples")
    columns = {
        "--text-column": data.text_column,
        "--text-pair-column": data.text_pair_column,
        "--label-column": data.label_column,
    }
    for flag, column in columns.items():
        if column is not None and any(column not in row or row[column] is None for row in rows):
            found = ", ".join(k for k in rows[0] if k is not None)
            raise DataError(
                f"{file} has no column {shown(column)} (found: {found}); name the right one with "
                f"{flag}"
            )
    for row in rows:
        row["__label__"] = row[data.label_column]
    return rows
