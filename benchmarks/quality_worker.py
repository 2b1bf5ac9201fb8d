"""The quality benchmark's worker: takes the planned runs not yet recorded, one at a time
(lock files keep workers apart), trains them and records them."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from quality_grid import PROTOCOL, planned_runs, record_key, task_epochs
from quality_records import append_record, load_records, where_trained

from sparseadapter.runconfig import RunConfig
from sparseadapter.rundir import (
    CONFIG_FILE,
    finished_result,
    interrupted,
    partial_dir,
    saved_config_changes,
)
from sparseadapter.train import train


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


def _lock(run: RunConfig) -> Path:
    return Path(f"{run.output}.lock")


def take(run: RunConfig) -> bool:
    """Claim ``run`` for this process; False while another live process trains it."""
    lock = _lock(run)
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = lock.read_text(encoding="utf-8").strip()
        if not owner.isdigit() or _alive(int(owner)):
            return False
        lock.unlink(missing_ok=True)  # its worker died: the run resumes from its checkpoint
        return take(run)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_all(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None
    while True:
        records = load_records(args.records, epochs=task_epochs(args))  # workers append to it
        todo = []
        for claim in args.claims:  # claim by claim, each on every task
            for task in args.tasks:
                todo += [
                    r
                    for r in planned_runs(task, claim, records, args)
                    if record_key(r) not in records
                ]
        todo = list({record_key(r): r for r in todo}.values())
        if not todo:
            return
        if deadline and time.monotonic() > deadline:
            print(f"time budget spent; {len(todo)} runs left", flush=True)
            return
        run = next((r for r in todo if take(r)), None)
        if run is None:  # every run left is being trained by another worker, or waits for its lr
            time.sleep(20)
            continue
        if record_key(run) in load_records(args.records, epochs=task_epochs(args)):  # since listed
            _lock(run).unlink(missing_ok=True)
            continue
        print(f"[{len(records) + 1}] {record_key(run)} ({len(todo)} left)", flush=True)
        start = time.monotonic()
        set_aside_stale(run)
        final = finished_result(run)  # killed after publishing, before recording
        resumed = final is not None or interrupted(run)  # then ``seconds`` is only the rest
        if final is None:
            final = train(run, quiet=True, resume=resumed)
        dev = final["dev"][next(iter(final["dev"]))]
        record = {
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
            "max_train_samples": run.data.max_train_samples,
            "metric": final["main_metric"],
            "score": final["score"],
            "dev": {k: v for k, v in dev.items() if k != "collapsed"},
            "collapsed": bool(dev.get("collapsed", False)),
            "nonzero_trainable": final["parameters"]["nonzero_trainable"],
            "trainable": final["parameters"]["trainable"],
            "seconds": round(time.monotonic() - start, 1),
            "resumed": resumed,
            **where_trained(),
        }
        append_record(args.records, record)
        _lock(run).unlink(missing_ok=True)
        print(f"    {record['metric']} = {record['score']:.4f} in {record['seconds']}s", flush=True)
