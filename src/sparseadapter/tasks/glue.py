"""GLUE tasks: their specs, loading from the dataset hub or from GLUE-layout TSVs, and metrics.

Labels follow the hub's ``ClassLabel`` order (``label_names[i]`` is class ``i``), whichever
source the examples come from. Metrics come from scikit-learn / scipy (the ``evaluate`` library
needs a hub) and are plain floats on their natural scale (accuracy in [0, 1], not x100).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from sparseadapter.errors import ConfigError, DataError, not_utf8_message, shown
from sparseadapter.tasks.hub import hub_split

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    """A GLUE task: hub config ``name``, TSV ``folder``, hub text columns, labels and metrics."""

    name: str
    folder: str
    text_keys: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    dev_splits: tuple[str, ...] = ("validation",)
    label_range: tuple[float, float] | None = None  # the scores a regression task's labels take

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def problem_type(self) -> str:
        """The ``problem_type`` of a Hugging Face sequence-classification model."""
        return "regression" if self.is_regression else "single_label_classification"


@dataclass(frozen=True)
class Example:
    """One sentence (``text_b`` None) or sentence pair; ``label`` a class id, or a float for STS-B."""

    text_a: str
    text_b: str | None
    label: float | int


@dataclass(frozen=True)
class _TsvLayout:
    """Where a task's TSV keeps its texts and label: header names, or indices when headerless."""

    text_a: str | int
    text_b: str | int | None
    label: str | int
    labels_as_names: bool = False  # "entailment" rather than "0"


_NLI = ("entailment", "not_entailment")
_MNLI_DEV = ("validation_matched", "validation_mismatched")
# fmt: off
GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", "CoLA", ("sentence",), 2, ("unacceptable", "acceptable"),
                 ("matthews_correlation",), "matthews_correlation"),
        TaskSpec("sst2", "SST-2", ("sentence",), 2, ("negative", "positive"),
                 ("accuracy",), "accuracy"),
        TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), 2, ("not_equivalent", "equivalent"),
                 ("f1", "accuracy"), "f1"),
        TaskSpec("qqp", "QQP", ("question1", "question2"), 2, ("not_duplicate", "duplicate"),
                 ("f1", "accuracy"), "f1"),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), 1, None,
                 ("pearson", "spearmanr"), "pearson", label_range=(0.0, 5.0)),
        TaskSpec("mnli", "MNLI", ("premise", "hypothesis"), 3,
                 ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy", _MNLI_DEV),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), 2, _NLI, ("accuracy",), "accuracy"),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), 2, _NLI, ("accuracy",), "accuracy"),
        TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), 2, ("not_entailment", "entailment"),
                 ("accuracy",), "accuracy"),
    )
}
# fmt: on

_TSV_LAYOUTS: dict[str, _TsvLayout] = {
    "cola": _TsvLayout(3, None, 1),  # no header: source, label, author mark, sentence
    "sst2": _TsvLayout("sentence", None, "label"),
    "mrpc": _TsvLayout("#1 String", "#2 String", "Quality"),
    "qqp": _TsvLayout("question1", "question2", "is_duplicate"),
    "stsb": _TsvLayout("sentence1", "sentence2", "score"),
    "mnli": _TsvLayout("sentence1", "sentence2", "gold_label", labels_as_names=True),
    "qnli": _TsvLayout("question", "sentence", "label", labels_as_names=True),
    "rte": _TsvLayout("sentence1", "sentence2", "label", labels_as_names=True),
    "wnli": _TsvLayout("sentence1", "sentence2", "label"),
}

_TSV_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


def glue_spec(name: str) -> TaskSpec:
    """The spec of a GLUE task, by name in any case, with or without a dash ("SST-2", "sts-b")."""
    spec = GLUE_TASKS.get(name.lower().replace("-", ""))
    if spec is None:
        raise DataError(f"unknown GLUE task {shown(name)}; use one of: {', '.join(GLUE_TASKS)}")
    return spec


def load_glue(
    task: str,
    split: str,
    data_dir: str | Path | None = None,
    max_samples: int | None = None,
) -> list[Example]:
    """The examples of one split, from the hub (``data_dir=None``) or from GLUE-layout TSVs.

    ``split`` is ``"train"`` or one of the task's ``dev_splits``; ``max_samples`` keeps the first
    N examples in file order.
    """
    spec = glue_spec(task)
    valid_splits = ("train", *spec.dev_splits)
    if split not in valid_splits:
        raise DataError(
            f"unknown split {shown(split)} for GLUE task {spec.name}; use one of: {', '.join(valid_splits)}"
        )
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be a positive integer, got {max_samples}")
    if data_dir is None:
        return _load_hub(spec, split, max_samples)
    return _load_tsv(spec, split, Path(data_dir), max_samples)


def _load_hub(spec: TaskSpec, split: str, max_samples: int | None) -> list[Example]:
    ds = hub_split("GLUE", HUB_DATASET, split, "GLUE TSV files", config=spec.name)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    texts_a = list(ds[spec.text_keys[0]])
    texts_b = list(ds[spec.text_keys[1]]) if len(spec.text_keys) > 1 else [None] * len(texts_a)
    cast = float if spec.is_regression else int
    examples = [Example(a, b, cast(y)) for a, b, y in zip(texts_a, texts_b, ds["label"])]
    if not examples:
        raise DataError(f"the hub's {HUB_DATASET}/{spec.name} {split} split is empty")
    return examples


def _load_tsv(spec: TaskSpec, split: str, data_dir: Path, max_samples: int | None) -> list[Example]:
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(
            f"GLUE data directory {data_dir} is a file; pass the folder that holds "
            f"{spec.folder}/ with --data-dir"
        )
    if not data_dir.is_dir():
        raise DataError(
            f"GLUE data directory {data_dir} does not exist; pass the folder that holds "
            f"{spec.folder}/ with --data-dir (a relative path starts from the working directory), "
            "or give no data directory to train on GLUE from the hub"
        )
    task_dir = data_dir / spec.folder
    if not task_dir.is_dir():
        raise DataError(f"no {spec.folder}/ folder in {data_dir}; add the GLUE {spec.folder} files")
    path = task_dir / _TSV_FILES[split]
    if not path.is_file():
        raise DataError(f"the {split} split of {spec.name} is missing: expected {path}")

    layout = _TSV_LAYOUTS[spec.name]
    if spec.is_regression:
        label_ids = None
    else:
        names = spec.label_names if layout.labels_as_names else range(spec.num_labels)
        label_ids = {str(name): i for i, name in enumerate(names)}
    examples: list[Example] = []
    # utf-8-sig: the original MRPC files start with a byte-order mark before "Quality".
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = _tsv_rows(f)
            columns = [layout.text_a, layout.text_b, layout.label]
            if isinstance(layout.label, str):
                columns = _header_indices(next(rows, (1, []))[1], columns, path)
            i_a, i_b, i_label = columns
            min_fields = max(i for i in columns if i is not None) + 1
            for line, row in rows:
                if max_samples is not None and len(examples) == max_samples:
                    break
                if len(row) < min_fields:
                    raise DataError(
                        f"line {line} of {path} has {len(row)} tab-separated fields, "
                        f"expected at least {min_fields}; fix or remove that line"
                    )
                label = _parse_label(row[i_label], label_ids, path, line, spec.label_range)
                examples.append(Example(row[i_a], None if i_b is None else row[i_b], label))
    except UnicodeDecodeError as err:
        raise DataError(not_utf8_message(path, err)) from None
    if not examples:
        raise DataError(f"{path} has no examples; restore the {spec.folder} {split} file")
    return examples


def _tsv_rows(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of each non-empty line. GLUE's files quote nothing,
    so a field is exactly the text between tabs, however long."""
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if line:
            yield number, line.split("\t")


def _header_indices(header: list[str], columns: list, path: Path) -> list[int | None]:
    missing = [c for c in columns if c is not None and c not in header]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)} in its header row "
            f"(found: {', '.join(header) or 'nothing'}); use the GLUE file layout"
        )
    return [None if c is None else header.index(c) for c in columns]


def _parse_label(
    value: str,
    label_ids: dict[str, int] | None,
    path: Path,
    line: int,
    label_range: tuple[float, float] | None = None,
) -> int | float:
    try:
        label = float(value) if label_ids is None else label_ids[value]
        if not math.isfinite(label):
            raise ValueError(value)
        if label_range is not None and not label_range[0] <= label <= label_range[1]:
            raise ValueError(value)
        return label
    except (KeyError, ValueError):
        if label_ids is not None:
            expected = f"one of {', '.join(label_ids)}"
        elif label_range is not None:
            expected = f"a finite number in [{label_range[0]:g}, {label_range[1]:g}]"
        else:
            expected = "a finite number"
        raise DataError(
            f"unknown label {shown(value)} on line {line} of {path}; expected {expected}"
        ) from None


def _correlation(fn: Callable, predictions: np.ndarray, references: np.ndarray) -> float:
    # constant or non-finite predictions (a diverged run) correlate with nothing: 0, never NaN,
    # so best-epoch selection can still compare the score
    if not np.isfinite(predictions).all() or np.ptp(predictions) == 0 or np.ptp(references) == 0:
        return 0.0
    return float(fn(predictions, references).statistic)


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, r: float(np.mean(p == r)),
    "f1": lambda p, r: float(f1_score(r, p, zero_division=0.0)),
    "f1_macro": lambda p, r: float(f1_score(r, p, average="macro", zero_division=0.0)),
    "matthews_correlation": lambda p, r: float(matthews_corrcoef(r, p)),
    "pearson": lambda p, r: _correlation(pearsonr, p, r),
    "spearmanr": lambda p, r: _correlation(spearmanr, p, r),
}


# A regression head that learned next to nothing (train loss still at the label variance)
# predicts about the mean score: its predictions spread a small fraction of the labels'
COLLAPSE_SPREAD = 0.2


def arrays(predictions: Sequence, references: Sequence, is_regression: bool):
    """Predictions and references as two 1-D arrays (DataError if they cannot be)."""
    dtype = np.float64 if is_regression else None
    preds = np.asarray(predictions, dtype=dtype)
    refs = np.asarray(references, dtype=dtype)
    if is_regression:
        preds, refs = preds.reshape(-1), refs.reshape(-1)
    if preds.ndim != 1 or preds.shape != refs.shape or refs.size == 0:
        raise DataError(
            f"predictions {preds.shape} and references {refs.shape} must be two non-empty 1-D "
            "sequences of the same length; pass one class id (or score) per example"
        )
    return preds, refs


def metric_values(
    names: Sequence[str], predictions: Sequence, references: Sequence, is_regression: bool
) -> dict[str, float]:
    """The named metrics (accuracy, f1, f1_macro, matthews_correlation, pearson, spearmanr)."""
    preds, refs = arrays(predictions, references, is_regression)
    return {name: _METRICS[name](preds, refs) for name in names}


def collapsed(predictions: Sequence, references: Sequence, is_regression: bool) -> bool:
    """Whether the model predicts (nearly) one value: a single class, or regression scores that
    spread less than ``COLLAPSE_SPREAD`` times the labels' standard deviation (or are not all
    finite)."""
    preds, refs = arrays(predictions, references, is_regression)
    if is_regression:
        return bool(not np.isfinite(preds).all() or preds.std() < COLLAPSE_SPREAD * refs.std())
    return bool(np.unique(preds).size == 1)


def compute_metrics(task: str, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """The task's GLUE metrics, keyed by the names in ``TaskSpec.metrics``.

    ``predictions`` are class ids (``logits.argmax(-1)``), or scores for STS-B. A correlation is
    undefined when predictions or references are constant (a collapsed regression head); it is
    reported as 0.0, the same value Matthews correlation takes for constant predictions.
    """
    spec = glue_spec(task)
    return metric_values(spec.metrics, predictions, references, spec.is_regression)


def is_collapsed(task: str, predictions: Sequence, references: Sequence) -> bool:
    """:func:`collapsed` for a GLUE task."""
    return collapsed(predictions, references, glue_spec(task).is_regression)
