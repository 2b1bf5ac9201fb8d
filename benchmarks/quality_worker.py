"""The quality benchmark's runs: trains the planned runs not yet recorded, on the sweep's executor
(one at a time, or several at once on Ray), and records each as it finishes."""

from __future__ import annotations

import argparse
import functools
import itertools
import time
from collections.abc import Callable
from typing import Any

from common import model_label
from quality_grid import PROTOCOL, planned_runs, record_key
from quality_records import append_record, load_records

from sparseadapter.parallel import Executor
from sparseadapter.runconfig import RunConfig
from sparseadapter.rundir import (
    CONFIG_FILE,
    finished_result,
    partial_dir,
    saved_config_changes,
)
from sparseadapter.sweep import train_run, where_trained


def set_aside_stale(run: RunConfig) -> None:
    """Rename the run's folders (finished or ``.partial``) that hold a run of another config,
    one trained under an earlier protocol (say another epoch count), to ``<name>.superseded``:
    their results are in the records already, and must not pass for this run's."""
    output = run.output_dir()
    for folder in (output, partial_dir(output)):
        if not (folder / CONFIG_FILE).is_file():  # no run there, or killed before its config
            continue
        changes = saved_config_changes(folder, run)
        if changes:
            aside = folder.with_name(f"{folder.name}.superseded")
            n = 1
            while aside.exists():
                n += 1
                aside = folder.with_name(f"{folder.name}.superseded{n}")
            folder.rename(aside)
            print(
                f"    {folder.name} was a run of another config ({'; '.join(changes)}): "
                f"moved to {aside.name}",
                flush=True,
            )


def record_of(run: RunConfig, trained: dict[str, Any]) -> dict[str, Any]:
    """The record of a finished run, from what :func:`sparseadapter.sweep.train_run` returned."""
    final = trained["final"]
    dev = final["dev"][next(iter(final["dev"]))]
    return {
        "run": record_key(run),
        "protocol": PROTOCOL,
        "task": run.data.task,
        "adapter": run.model.adapter,
        "pruner": run.pruner,
        "sparsity": run.prune.sparsity if run.prune else 0.0,
        "large_sparse": run.model.large_sparse,
        "lr": run.train.lr,
        "seed": run.train.seed,
        "epochs": run.train.epochs,
        "model": model_label(run.model.name),
        "max_length": run.data.max_length,
        "max_train_samples": run.data.max_train_samples,
        "max_eval_samples": run.data.max_eval_samples,
        "metric": final["main_metric"],
        "score": final["score"],
        "dev": {k: v for k, v in dev.items() if k != "collapsed"},
        "collapsed": bool(dev.get("collapsed", False)),
        "nonzero_trainable": final["parameters"]["nonzero_trainable"],
        "trainable": final["parameters"]["trainable"],
        "seconds": trained["seconds"],
        "resumed": trained["resumed"],
        "device": trained["device"],
        "torch": trained["torch"],
    }


def todo_runs(args: argparse.Namespace, records: dict, failed: dict[str, str]) -> list[RunConfig]:
    """The planned runs not yet recorded (nor failed), claim by claim, each on every task."""
    todo = []
    for claim in args.claims:
        for task in args.tasks:
            todo += [
                r for r in planned_runs(task, claim, records, args) if record_key(r) not in records
            ]
    return [r for r in {record_key(r): r for r in todo}.values() if record_key(r) not in failed]


def _announcer(first: int, total: int) -> Callable[[RunConfig], None]:
    numbers = itertools.count(first)

    def started(run: RunConfig) -> None:
        print(f"[{next(numbers)}] {record_key(run)} ({total} in this round)", flush=True)

    return started


def run_all(args: argparse.Namespace, executor: Executor) -> dict[str, str]:
    """Train and record the planned runs, round by round: a round is every run planned now;
    the runs waiting for a tuned learning rate are planned once their tuning runs are recorded.
    Returns the runs that failed (run name -> error): they are not tried again in this call."""
    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    failed: dict[str, str] = {}
    while True:
        records = load_records(args.records, args=args)
        todo = todo_runs(args, records, failed)
        if not todo:
            return failed
        if out_of_time():
            print(f"time budget spent; {len(todo)} runs left", flush=True)
            return failed
        ready = []
        for run in todo:
            set_aside_stale(run)
            final = finished_result(run)  # killed after publishing, before recording
            if final is None:
                ready.append(run)
                continue
            trained = {"final": final, "seconds": 0.0, "resumed": True, **where_trained()}
            append_record(args.records, record_of(run, trained))
        started = _announcer(len(records) + len(todo) - len(ready) + 1, len(ready))
        train = functools.partial(train_run, quiet=True)
        for outcome in executor.map(train, ready, started=started, stop=out_of_time):
            key = record_key(outcome.item)
            if not outcome.ok:
                failed[key] = outcome.error
                print(f"    {key} failed: {outcome.error}", flush=True)
                continue
            record = record_of(outcome.item, outcome.value)
            append_record(args.records, record)
            print(
                f"    {key}: {record['metric']} = {record['score']:.4f} in {record['seconds']}s",
                flush=True,
            )
