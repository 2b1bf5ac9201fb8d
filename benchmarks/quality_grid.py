"""The quality benchmark's grid: its tasks, claims and learning-rate tuning, and the runs they
plan (``planned_runs``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common import model_label

from sparseadapter.runconfig import RunConfig
from sparseadapter.sweep import SweepSpec

FULL_FT_LR = 5e-5
# MAM's prefix part diverged at 3e-3 and on one seed in three at 1e-3 (SST-2): a lower grid
LR_GRIDS = {"mam": [3e-4, 1e-3]}
DEFAULT_LR_GRID = [1e-3, 3e-3]
# Where every rate tried so far collapsed on the dense seed-1 run, tuning goes on to the next
# lower rate here, down to 1e-4 (STS-B MAM collapsed at 3e-4 and 1e-3). An adapter whose every
# rate collapsed has no working rate on the task and none of its other runs is trained: with
# its dense seed-1 run collapsed, each of its cells would be left out of the verdicts anyway.
LR_LADDER = [3e-3, 1e-3, 3e-4, 1e-4]
NO_LR = "no working learning rate"
PROTOCOL = "length-grouped"
TASKS = {  # task: extra data options (SST-2 on a fixed 8k-example training subset)
    "rte": {},
    "mrpc": {},
    "stsb": {},
    "cola": {},
    "sst2": {"max_train_samples": 8000},
}
# Epochs per task, from the dev curves of 6-epoch dense Houlsby runs (``benchmarks/epochs.py``,
# results/epochs.md): about where each curve levels off. RTE: 56.0 dev accuracy after epoch 2,
# 60.6 after 5; MRPC: F1 82.6 after 2, 86.9 after 5; STS-B: Pearson 86.2 after 3, no higher
# later; CoLA: MCC 16-22 after 2, 25-27 from epoch 4 on. SST-2 keeps the 2 epochs its grid was
# recorded with (8k examples: as many steps as RTE's 6 epochs).
EPOCHS = {"rte": 6, "mrpc": 5, "stsb": 3, "cola": 5, "sst2": 2}
CLAIMS: dict[str, dict[str, Any]] = {
    "1": {
        "title": "SNIP at 40% sparsity vs the dense adapter",
        "adapters": ["houlsby", "pfeiffer", "lora", "mam"],
        "grid": {"pruner": ["none", "snip"], "sparsity": [0.4]},
        "rule": (">=", 0.0),  # sparse − dense, in points
    },
    "2": {
        "title": "Up to 80% sparsity within about 1 point of dense (SNIP and random)",
        "adapters": ["houlsby", "lora"],
        "grid": {"pruner": ["none", "snip", "random"], "sparsity": [0.4, 0.6, 0.8]},
        "rule": (">=", -1.0),
    },
    "3": {
        "title": "Large-Sparse (4x width, 75% sparse) vs dense, and full fine-tuning",
        "adapters": ["houlsby", "lora"],
        "grid": {"pruner": ["snip"], "large_sparse": [4], "sparsity": [0.75]},
        "full_finetune": True,
        "rule": (">", 0.0),
    },
    "4": {
        "title": "Five pruners at 40/60/80/90% sparsity (Houlsby)",
        "adapters": ["houlsby"],
        # 42 runs a task beyond claim 2's; RTE and MRPC would add ~31 worker-hours for a
        # descriptive plot: three tasks, one per metric, show whether the ranking carries over
        "tasks": ["sst2", "cola", "stsb"],
        "grid": {
            "pruner": ["none", "random", "magnitude", "snip", "grasp", "synflow"],
            "sparsity": [0.4, 0.6, 0.8, 0.9],
        },
    },
}


def claim_runs_on(claim: str, task: str) -> bool:
    return task in CLAIMS[claim].get("tasks", TASKS)


def record_key(run: RunConfig) -> str:
    return Path(run.output).name


def task_epochs(args: argparse.Namespace) -> dict[str, int]:
    return {task: args.epochs or EPOCHS[task] for task in TASKS}


def run_settings(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """What the grid's runs of a task share that their names do not say: a record of other
    settings is not this grid's run (``quality_records.load_records``)."""
    return {
        "epochs": task_epochs(args)[task],
        "model": model_label(args.model),
        "max_length": args.max_length,
        "max_train_samples": args.max_train_samples or TASKS[task].get("max_train_samples"),
        "max_eval_samples": args.max_eval_samples,
    }


def base_config(task: str, args: argparse.Namespace) -> dict[str, Any]:
    data = {"task": task, "data_dir": str(args.data_dir), **TASKS[task]}
    if args.max_train_samples:
        data["max_train_samples"] = args.max_train_samples
    if args.max_eval_samples:
        data["max_eval_samples"] = args.max_eval_samples
    data["max_length"] = args.max_length
    data["group_by_length"] = True
    return {
        "model": {"name": args.model},
        "data": data,
        # v1's records were trained at the rate the grid names, before the density-aware default
        "train": {"epochs": task_epochs(args)[task], "batch_size": 32, "lr_density_exponent": 0.0},
    }


def runs_for(spec_grid: dict[str, list], base: dict[str, Any], runs_dir: Path) -> list[RunConfig]:
    return SweepSpec(runs_dir / PROTOCOL, base, spec_grid).runs()


def lr_grid(adapter: str, args: argparse.Namespace) -> list[float]:
    return args.lr_grid or LR_GRIDS.get(adapter, DEFAULT_LR_GRID)


def tuning(
    adapter: str, seed1: dict[float, dict], args: argparse.Namespace
) -> tuple[list[float], float | None]:
    """The learning rates to try on the dense seed-1 run, given its records so far (lr → record),
    and the tuned rate once all of them are recorded. The rates: the adapter's grid, one
    ``LR_LADDER`` step lower each time every rate tried has collapsed (an explicit
    ``--lr-grid`` is taken as given)."""
    grid = list(lr_grid(adapter, args))
    while not args.lr_grid and all(lr in seed1 and seed1[lr]["collapsed"] for lr in grid):
        lower = [lr for lr in LR_LADDER if lr < min(grid)]
        if not lower:
            break
        grid.append(lower[0])
    if any(lr not in seed1 for lr in grid):
        return grid, None
    return grid, best_lr({lr: seed1[lr] for lr in grid})


def best_lr(seed1: dict[float, dict]) -> float:
    """The tuning rule over dense seed-1 records (lr → record): a rate whose run did not collapse
    wins over one whose run did, then the best dev score, then the smaller rate."""
    return max(seed1, key=lambda lr: (not seed1[lr]["collapsed"], seed1[lr]["score"], -lr))


def no_working_lr(seed1: dict[float, dict], lr: float | None, args: argparse.Namespace) -> bool:
    """Tuning is over and its rate collapsed too; an explicit ``--lr-grid`` is used as given."""
    return lr is not None and seed1[lr]["collapsed"] and not args.lr_grid


def dense_seed1(task: str, adapter: str, records: dict, args: argparse.Namespace) -> dict:
    """The recorded dense seed-1 runs of ``adapter`` on ``task`` that tuning may use, by lr.
    Matched by run name, which carries the run's settings: what is planned must match exactly
    (the report groups records by their fields instead, ``dense_seed1_records``)."""
    found = {}
    for lr in {*LR_LADDER, *lr_grid(adapter, args)}:
        grid = {"adapter": [adapter], "pruner": ["none"], "seed": [1], "train.lr": [lr]}
        (run,) = runs_for(grid, base_config(task, args), args.runs_dir / task)
        if record_key(run) in records:
            found[lr] = records[record_key(run)]
    return found


def planned_runs(
    task: str, claim: str, records: dict, args, assume_lr: bool = False
) -> list[RunConfig]:
    """The runs of one claim on one task; lr-tuning runs first while the lr is unknown.

    ``assume_lr``: while the lr is unknown, also list the runs that follow tuning, with the grid's
    first lr standing in (for counting: their names will differ, their number will not). An
    adapter without a working rate (``tuning``) has only its tuning runs.
    """
    spec = CLAIMS[claim]
    if not claim_runs_on(claim, task):
        return []
    runs: list[RunConfig] = []
    base = base_config(task, args)
    for adapter in [a for a in spec["adapters"] if not args.adapters or a in args.adapters]:
        seed1 = dense_seed1(task, adapter, records, args)
        lrs, lr = tuning(adapter, seed1, args)
        if lr is None or no_working_lr(seed1, lr, args):
            grid = {"adapter": [adapter], "pruner": ["none"], "seed": [1], "train.lr": lrs}
            runs += runs_for(grid, base, args.runs_dir / task)
            if lr is not None or not assume_lr:
                continue
            lr = lrs[0]
        for grid in ({"pruner": ["none"]}, spec["grid"]):  # every claim compares with dense
            grid = {"adapter": [adapter], **grid, "seed": args.seeds, "train.lr": [lr]}
            runs += runs_for(grid, base, args.runs_dir / task)
    if spec.get("full_finetune"):
        grid = {"adapter": ["full"], "seed": args.seeds, "train.lr": [FULL_FT_LR]}
        runs += runs_for(grid, base, args.runs_dir / task)
    return list({record_key(r): r for r in runs}.values())
