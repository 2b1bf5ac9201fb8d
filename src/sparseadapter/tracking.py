"""Experiment tracking through accelerate's trackers (``train.report_to``): the run's config as
hyper-parameters, loss and learning rate per optimizer step, dev metrics per epoch, and the
pruning and parameter reports. With ``report_to: none`` every call here does nothing."""

from __future__ import annotations

import math
from typing import Any

from accelerate import Accelerator

from sparseadapter.runconfig import RunConfig


def hyperparameters(config: RunConfig) -> dict[str, Any]:
    """The run config flattened to ``section.key`` scalars (trackers take no nesting or None)."""
    flat: dict[str, Any] = {}
    for section, values in config.to_dict().items():
        items = values.items() if isinstance(values, dict) else [("", values)]
        for key, value in items:
            name = f"{section}.{key}" if key else section
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def start(accelerator: Accelerator, config: RunConfig) -> None:
    if config.train.trackers:
        accelerator.init_trackers(config.output_dir().name, config=hyperparameters(config))


def log_parameters(accelerator: Accelerator, report: dict[str, int]) -> None:
    accelerator.log({f"parameters/{k}": v for k, v in report.items()}, step=0)


def log_pruning(accelerator: Accelerator, sparsity: dict[str, Any]) -> None:
    """The achieved sparsity and, per pruned tensor, the fraction of its weights kept."""
    values = {
        "sparsity/achieved": sparsity["achieved_sparsity"],
        "sparsity/kept": sparsity["kept"],
        "sparsity/prunable": sparsity["prunable"],
    }
    for tensor in sparsity["tensors"]:
        size = math.prod(tensor["shape"])
        values[f"sparsity/kept_fraction/{tensor['name']}"] = tensor["kept"] / size
    accelerator.log(values, step=0)


def log_step(accelerator: Accelerator, loss: float, lr: float, step: int) -> None:
    accelerator.log({"train/loss": loss, "train/lr": lr}, step=step)


def log_epoch(accelerator: Accelerator, record: dict[str, Any], step: int) -> None:
    values = {"train/epoch_loss": record["train_loss"], "epoch": record["epoch"]}
    for split, metrics in record.get("dev", {}).items():
        for metric, value in metrics.items():
            if metric != "collapsed":
                values[f"dev/{split}/{metric}"] = value
    accelerator.log(values, step=step)


def finish(accelerator: Accelerator) -> None:
    """Close the trackers' files (``Accelerator.end_training`` would also end the process
    group, which the run still needs)."""
    for tracker in accelerator.trackers:
        tracker.finish()
