"""The quality benchmark's plan: runs recorded and left per task and claim, and their hours."""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

from quality_grid import claim_runs_on, planned_runs, record_key
from quality_records import CPU, load_records

from sparseadapter.runconfig import RunConfig
from sparseadapter.tasks.glue import load_glue


def _pace_keys(task: str, adapter: str, large_sparse: float) -> list[tuple]:
    return [(task, adapter, large_sparse > 1), (adapter, large_sparse > 1), ()]


@functools.cache
def training_words(data_dir: Path, task: str, max_train_samples: int | None) -> int:
    """Words in one epoch of ``task``'s training set: the plan's measure of a run's work."""
    examples = load_glue(task, "train", data_dir=data_dir, max_samples=max_train_samples)
    return sum(len(e.text_a.split()) + len((e.text_b or "").split()) for e in examples)


def plan(args: argparse.Namespace) -> str:
    """Runs recorded and left per task and claim, and the hours they need at the recorded pace.

    The pace of an adapter (Large-Sparse or not) on a task is its median seconds per unit of
    work over the recorded CPU runs that were trained in one go (a resumed run's ``seconds`` cover
    only what was left of it); a run's work is its epochs times the words of its training set
    (``training_words``), so a task with no runs yet borrows the adapter's pace on the others.
    A run shared by several claims (the dense baselines) is counted under the first of them.
    The recorded seconds are those of one worker; ``--workers 2`` needs about half the hours.
    """
    records = load_records(args.records, args=args)
    pace: dict[tuple, list[float]] = {}  # seconds per unit of work, most specific key first
    for r in records.values():
        if not r.get("resumed", False) and r.get("device", CPU["device"]) == "cpu":
            work = r["epochs"] * training_words(args.data_dir, r["task"], r["max_train_samples"])
            for key in _pace_keys(r["task"], r["adapter"], r["large_sparse"]):
                pace.setdefault(key, []).append(r["seconds"] / work)

    def seconds_of(run: RunConfig) -> float:
        keys = _pace_keys(run.data.task, run.model.adapter, run.model.large_sparse)
        rates = next((pace[k] for k in keys if k in pace), [0.0])
        work = run.train.epochs * training_words(
            args.data_dir, run.data.task, run.data.max_train_samples
        )
        return statistics.median(rates) * work

    lines = [
        "| task | claim | recorded | left | hours left (one worker) |",
        "|---|---|---|---|---|",
    ]
    seen: set[str] = set()
    total_left, total_seconds = 0, 0.0
    for task in args.tasks:
        for claim in [c for c in args.claims if claim_runs_on(c, task)]:
            runs = [
                r
                for r in planned_runs(task, claim, records, args, assume_lr=True)
                if record_key(r) not in seen
            ]
            seen.update(record_key(r) for r in runs)
            left = [r for r in runs if record_key(r) not in records]
            seconds = sum(seconds_of(r) for r in left)
            total_left, total_seconds = total_left + len(left), total_seconds + seconds
            lines.append(
                f"| {task} | {claim} | {len(runs) - len(left)} | {len(left)} | "
                f"{seconds / 3600:.1f} |"
            )
    lines.append(f"| all | | {len(records)} | {total_left} | {total_seconds / 3600:.1f} |")
    return "\n".join(lines)
