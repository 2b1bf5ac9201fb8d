"""The quality benchmark's records: one JSON line per finished run, read back by protocol and
epoch count, and the learning rates tuning picked from them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from quality_grid import PROTOCOL, best_lr, no_working_lr, run_settings, tuning

CPU = {"device": "cpu", "torch": "2.13.0"}  # where records without these fields trained
# what records written before these fields trained with (GPU runs: MiniLM staged as a folder)
UNRECORDED = {"model": "minilm", "max_length": 128, "max_eval_samples": None}
DEVICE_CHECK = "quality_device_check.jsonl"
LEGACY_PROTOCOL = "random-batches"  # records without a "protocol" field


def recorded_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``quality_grid.run_settings`` a record was trained with."""
    keys = ("epochs", "model", "max_length", "max_train_samples", "max_eval_samples")
    return {key: record.get(key, UNRECORDED.get(key)) for key in keys}


def load_records(
    path: Path, protocol: str = PROTOCOL, args: argparse.Namespace | None = None
) -> dict[str, dict[str, Any]]:
    """The recorded runs of ``protocol``, by run name; with ``args``, only those trained with
    the grid's settings (epochs, model, caps: run names do not say, so a grid of other settings
    must not reuse the old runs)."""
    if not path.is_file():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if record.setdefault("protocol", LEGACY_PROTOCOL) != protocol:
                continue
            if args is None or recorded_settings(record) == run_settings(record["task"], args):
                records[record["run"]] = record
    return records


def trained_on(record: dict[str, Any]) -> str:
    return f"{record.get('device', CPU['device'])}, torch {record.get('torch', CPU['torch'])}"


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def dense_seed1_records(records: list[dict]) -> dict[tuple[str, str], dict[float, dict]]:
    """(task, adapter) → lr → the dense seed-1 record: the runs tuning chooses from."""
    seed1: dict[tuple[str, str], dict[float, dict]] = {}
    for r in records:
        if r["pruner"] == "none" and r["seed"] == 1:
            seed1.setdefault((r["task"], r["adapter"]), {})[r["lr"]] = r
    return seed1


def tuned_lrs(records: list[dict], args: argparse.Namespace) -> dict[tuple[str, str], float]:
    """(task, adapter) → ``best_lr`` over the dense seed-1 runs recorded so far on the adapter's
    ``tuning`` rates: the lr tuning picks once all of them are recorded."""
    tuned = {}
    for (task, adapter), by_lr in dense_seed1_records(records).items():
        tried = {lr: by_lr[lr] for lr in tuning(adapter, by_lr, args)[0] if lr in by_lr}
        if tried:
            tuned[task, adapter] = best_lr(tried)
    return tuned


def without_working_lr(
    records: list[dict], args: argparse.Namespace
) -> dict[tuple[str, str], list[float]]:
    """(task, adapter) → the rates tried, for each adapter whose every tuning rate collapsed."""
    found = {}
    for (task, adapter), by_lr in dense_seed1_records(records).items():
        lrs, lr = tuning(adapter, by_lr, args)
        if no_working_lr(by_lr, lr, args):
            found[task, adapter] = sorted(lrs)
    return found
