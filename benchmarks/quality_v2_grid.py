"""The quality benchmark v2's grid: its arms (dense, sparse and same-budget baselines), the
claims as tests between arms, the learning rates every arm is tuned over, the seed counts, and
the run configs they plan.

Run names carry everything that tells runs apart: ``<task>-<adapter>-<arm>-lr<lr>-s<seed>``,
after ``<model>-`` for a model other than ``DEFAULT_MODEL`` (the names of the runs recorded
before other models were benchmarked stay valid).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quality_grid import EPOCHS, TASKS
from quality_v2_baselines import SHUFFLED_IN_ROW, SHUFFLED_IN_TENSOR, matched_width
from quality_v2_data import carve, carved_dir
from quality_v2_stats import plan_seeds, seed_sds

from sparseadapter.config import SparsityConfig
from sparseadapter.runconfig import RunConfig

PROTOCOL = "v2-validation-split"
# every arm is tuned over these on the validation split; v1 chose its top rate (3e-3) for Houlsby
# on 4 of 5 tasks, and a sparse adapter may want a higher one: the grid reaches 1e-2
LRS = [3e-4, 1e-3, 3e-3, 1e-2]
SYNFLOW_ROUNDS = 100  # the SynFlow method's iterative schedule, not the one-shot default
POOLER = ("pooler",)  # model.modules_to_save of the "-pooler" arms: a trained pooler
# the SparseAdapter code's MAM scope: prune the adapters, not the prefix MLP
PREFIX = r"(^|\.)prefix_tuning(\.|$)"
DEFAULT_MODEL = "minilm"
MAX_SEEDS = 10
DEFAULT_SEEDS = 5  # where no earlier variance is known
# at least: a seed sd estimated from v1's 3 seeds is rough, and 2 seeds a side leave a t test
# about 2 degrees of freedom
MIN_SEEDS = 3


@dataclass(frozen=True)
class Arm:
    """One way to train the adapter: its pruner and sparsity, Large-Sparse factor, or a narrow
    dense adapter at the width that matches ``narrow_to``'s non-zero budget."""

    name: str
    pruner: str = "none"
    sparsity: float = 0.0
    large_sparse: float = 1.0
    narrow_to: float | None = None
    synflow_rounds: int = 1
    modules_to_save: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


def _arms() -> dict[str, Arm]:
    arms = [
        Arm("dense"),
        Arm("ls4-snip75", "snip", 0.75, 4.0),
        Arm("dense-pooler", modules_to_save=POOLER),
        Arm("snip40-pooler", "snip", 0.4, modules_to_save=POOLER),
        Arm("snip40-noprefix", "snip", 0.4, exclude=(PREFIX,)),
    ]
    for s in (0.4, 0.6, 0.8):
        pct = round(100 * s)
        arms += [
            Arm(f"snip{pct}", "snip", s),
            Arm(f"random{pct}", "random", s),
            Arm(f"{SHUFFLED_IN_TENSOR}{pct}", SHUFFLED_IN_TENSOR, s),
            Arm(f"{SHUFFLED_IN_ROW}{pct}", SHUFFLED_IN_ROW, s),
            Arm(f"narrow{pct}", narrow_to=s),
            Arm(f"magnitude{pct}", "magnitude", s),
            Arm(f"grasp{pct}", "grasp", s),
            Arm(f"synflow{pct}", "synflow", s, synflow_rounds=SYNFLOW_ROUNDS),
        ]
    return {a.name: a for a in arms}


ARMS = _arms()
SAME_BUDGET = (SHUFFLED_IN_TENSOR, SHUFFLED_IN_ROW, "narrow")
PRUNERS_BESIDE_SNIP = ("random", "magnitude", "grasp", "synflow")

# Each claim: the tests between arms (a, b) it makes, per task and adapter. "noninferior": a is
# no worse than b by more than the margin (each margin a test of its own); "superior": a > b.
CLAIMS: dict[str, dict[str, Any]] = {
    "1": {
        "title": "SNIP at 40% sparsity is no worse than the dense adapter",
        "test": "noninferior",
        "margins": [0.0, 1.0],
        "pairs": [("snip40", "dense")],
    },
    "2": {
        "title": "Up to 80% sparsity (SNIP and random) stays within 1 point of dense",
        "test": "noninferior",
        "margins": [0.0, 1.0],
        "pairs": [(f"{p}{s}", "dense") for p in ("snip", "random") for s in (40, 60, 80)],
    },
    "3": {
        "title": "Large-Sparse (4x width, 75% sparse, dense budget) beats the dense adapter",
        "test": "superior",
        "margins": [0.0],
        "pairs": [("ls4-snip75", "dense")],
    },
    "4": {
        "title": "SNIP beats the other pruners (random, magnitude, GraSP, SynFlow at 100 rounds)",
        "test": "superior",
        "margins": [0.0],
        "pairs": [(f"snip{s}", f"{p}{s}") for s in (40, 60, 80) for p in PRUNERS_BESIDE_SNIP],
    },
    "fidelity": {
        "title": "A trained pooler beats the frozen one; MAM pruned in the "
        "SparseAdapter code's scope (adapters, not the prefix MLP) beats pruning everything",
        "test": "superior",
        "margins": [0.0],
        "pairs": [
            ("dense-pooler", "dense"),
            ("snip40-pooler", "snip40"),
            ("snip40-noprefix", "snip40"),
        ],
    },
    "budget": {
        "title": "SNIP beats same-budget baselines (its masks shuffled, a narrow dense adapter)",
        "test": "superior",
        "margins": [0.0],
        "pairs": [(f"snip{s}", f"{b}{s}") for s in (40, 60, 80) for b in SAME_BUDGET],
    },
}


def run_name(model: str, task: str, adapter: str, arm: Arm, lr: float, seed: int) -> str:
    """The run's name; ``model`` is its ``common.model_label``."""
    prefix = "" if model == DEFAULT_MODEL else f"{model}-"
    return f"{prefix}{task}-{adapter}-{arm.name}-lr{lr:g}-s{seed}"


def seeds_for(task: str, adapter: str, v1_records: list[dict], max_seeds: int = MAX_SEEDS) -> int:
    """Seeds per arm from the v1 seed variances of the task and adapter (dense and sparse arms
    pooled apart) for a standard error of a difference <= 0.5 points, at least ``MIN_SEEDS``
    and at most ``max_seeds``."""
    sds = seed_sds(
        [{**r, "dense": r["pruner"] == "none"} for r in v1_records if r["adapter"] == adapter],
        ["task", "adapter", "dense"],
    )
    dense, sparse = sds.get((task, adapter, True)), sds.get((task, adapter, False))
    if dense is None or sparse is None:
        return DEFAULT_SEEDS
    return max(MIN_SEEDS, plan_seeds(sparse, dense, max_seeds).seeds)


def run_settings(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """What the grid's runs of a task share that their names do not say; one records file holds
    one set per (device, model, task, adapter), so no comparison mixes them."""
    return {
        "epochs": args.epochs or EPOCHS[task],
        "max_length": args.max_length,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "mixed_precision": args.mixed_precision,
    }


# what records written before these fields trained with
UNRECORDED = {"max_length": 128, "max_train_samples": None, "max_eval_samples": None}
UNRECORDED["mixed_precision"] = "no"


def recorded_settings(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("epochs", "max_length", "max_train_samples", "max_eval_samples", "mixed_precision")
    return {key: record.get(key, UNRECORDED.get(key)) for key in keys}


def run_config(
    task: str, adapter: str, arm: Arm, lr: float, seed: int, args: argparse.Namespace
) -> RunConfig:
    """The run, trained on the task's carved split (best epoch chosen on validation)."""
    limit = TASKS[task].get("max_train_samples")
    data_dir = carve(task, args.data_dir, carved_dir(args.runs_dir / "data", limit), limit=limit)
    model: dict[str, Any] = {"name": args.model, "adapter": adapter}
    if arm.large_sparse != 1:
        model["large_sparse"] = arm.large_sparse
    if arm.modules_to_save:
        model["modules_to_save"] = list(arm.modules_to_save)
    if arm.narrow_to is not None:
        model["width"] = matched_width(args.model, adapter, arm.narrow_to, num_labels(task))[
            "width"
        ]
    data = {
        "task": task,
        "data_dir": str(data_dir),
        "max_length": args.max_length,
        "group_by_length": True,
    }
    if args.max_train_samples:
        data["max_train_samples"] = args.max_train_samples
    if args.max_eval_samples:
        data["max_eval_samples"] = args.max_eval_samples
    config = {
        "model": model,
        "data": data,
        "prune": {"method": arm.pruner} if arm.pruner == "none" else _prune(arm),
        "train": {
            "epochs": run_settings(task, args)["epochs"],
            "lr": lr,
            "lr_density_exponent": 0.0,  # the grid tunes each arm's rate itself
            "seed": seed,
            "batch_size": 32,
            "checkpoint_every": args.checkpoint_every,
            "mixed_precision": args.mixed_precision,
        },
        "output": str(
            args.runs_dir / PROTOCOL / run_name(args.model_label, task, adapter, arm, lr, seed)
        ),
    }
    return RunConfig.from_dict(config)


def _prune(arm: Arm) -> dict[str, Any]:
    prune = {"method": arm.pruner, "sparsity": arm.sparsity, "synflow_rounds": arm.synflow_rounds}
    if arm.exclude:
        prune["exclude"] = [*SparsityConfig().exclude, *arm.exclude]
    return prune


def num_labels(task: str) -> int:
    from sparseadapter.tasks.glue import glue_spec

    return glue_spec(task).num_labels


def planned(
    args: argparse.Namespace, v1_records: list[dict]
) -> list[tuple[str, str, Arm, float, int]]:
    """(task, adapter, arm, lr, seed) of every run, seed by seed: after seed k every arm has k
    seeds at every rate, whenever the grid stops."""
    seeds = {
        (t, a): args.seeds or seeds_for(t, a, v1_records, args.max_seeds)
        for t in args.tasks
        for a in args.adapters
    }
    runs = []
    for seed in range(1, max(seeds.values()) + 1):
        for task in args.tasks:
            for adapter in args.adapters:
                if seed > seeds[task, adapter]:
                    continue
                for arm in args.arms:
                    runs += [(task, adapter, ARMS[arm], lr, seed) for lr in args.lrs]
    return runs


def record_path(args: argparse.Namespace) -> Path:
    return args.records or args.results_dir / "quality_v2_runs.jsonl"
