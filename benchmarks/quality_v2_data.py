"""The quality benchmark v2's data: a fixed, seeded validation split carved from each task's
training set, and the trivial predictor's score on the real dev set.

The carved folder has the GLUE layout: ``<TASK>/train.tsv`` holds the training examples not held
out, ``<TASK>/dev.tsv`` the held-out validation examples, each line copied unchanged from the
original training file (header included where it has one). Training on it chooses the learning
rate and best epoch on validation; the real dev set is scored once per run afterwards.
"""

from __future__ import annotations

import random
from pathlib import Path

from quality_v2_stats import trivial_score

from sparseadapter.files import write_bytes
from sparseadapter.tasks.glue import glue_spec, load_glue

VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0


def _data_lines(path: Path, examples: int) -> tuple[list[str], list[str]]:
    """(header lines, example lines) of a GLUE TSV whose parser read ``examples`` examples:
    the non-empty lines the parser did not read as examples are the header."""
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    header = len(lines) - examples
    if header not in (0, 1):
        raise ValueError(f"{path}: {len(lines)} lines for {examples} examples")
    return lines[:header], lines[header:]


def carve(
    task: str,
    data_dir: Path,
    out_dir: Path,
    fraction: float = VALIDATION_FRACTION,
    seed: int = SPLIT_SEED,
    limit: int | None = None,
) -> Path:
    """Write ``out_dir/<TASK>/{train,dev}.tsv``: the first ``limit`` training examples (all
    when None), ``fraction`` of them (seeded shuffle) held out as validation. Returns
    ``out_dir``; an existing carve of the same split is kept as it is."""
    spec = glue_spec(task)
    folder = out_dir / spec.folder
    if (folder / "train.tsv").is_file() and (folder / "dev.tsv").is_file():
        return out_dir
    folder.mkdir(parents=True, exist_ok=True)
    source = data_dir / spec.folder / "train.tsv"
    total = len(load_glue(spec.name, "train", data_dir))
    header, lines = _data_lines(source, total)
    lines = lines[:limit] if limit else lines
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    held = set(order[: round(fraction * len(lines))])
    train = [line for i, line in enumerate(lines) if i not in held]
    valid = [line for i, line in enumerate(lines) if i in held]
    # dev.tsv first: a folder with both files is a finished carve
    for name, part in (("dev.tsv", valid), ("train.tsv", train)):
        write_bytes(folder / name, "\n".join([*header, *part, ""]).encode("utf-8"))
    return out_dir


def carved_dir(root: Path, limit: int | None) -> Path:
    """Where a carve of the first ``limit`` training examples lives under ``root``."""
    return (
        root / f"split{SPLIT_SEED}-{int(100 * VALIDATION_FRACTION)}pct" / f"first{limit or 'all'}"
    )


def trivial_dev_score(task: str, data_dir: Path, limit: int | None = None) -> float:
    """Points the trivial predictor scores on the task's real dev set (its first ``limit``
    examples: those the runs score), as ``trivial_score`` defines it."""
    spec = glue_spec(task)
    labels = [e.label for e in load_glue(spec.name, spec.dev_splits[0], data_dir, limit)]
    return trivial_score(spec.main_metric, labels)
