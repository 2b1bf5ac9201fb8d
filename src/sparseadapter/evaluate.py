"""Dev-set evaluation: during training, and of a finished run from its folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from sparseadapter.data import eval_sets, load_run_data, load_tokenizer
from sparseadapter.distributed import make_accelerator
from sparseadapter.runconfig import DataConfig
from sparseadapter.rundir import finished_run, load_run_model, read_final
from sparseadapter.tasks import EvalSet, Task


def evaluate(
    model: nn.Module,
    sets: dict[str, EvalSet],
    task: Task,
    accelerator: Accelerator,
    tokenizer,
    data: DataConfig,
) -> dict[str, dict[str, float]]:
    """The task's metrics per dev split (gathered over processes), plus a ``collapsed`` flag."""
    model.eval()
    return {
        split: task.evaluate(model, eval_set, accelerator, tokenizer, data)
        for split, eval_set in sets.items()
    }


def prepared_eval_sets(accelerator: Accelerator, sets: dict[str, EvalSet]) -> dict[str, EvalSet]:
    """The sets with their loaders prepared by ``accelerator`` (split over processes)."""
    return {
        split: dataclasses.replace(eval_set, loader=accelerator.prepare(eval_set.loader))
        for split, eval_set in sets.items()
    }


def main_score(dev: dict[str, dict[str, float]], task: Task) -> float:
    return dev[task.dev_splits[0]][task.main_metric]


def evaluate_run(
    run_dir: str | Path, data_dir: str | None = None, checkpoint: str | Path | None = None
) -> dict[str, Any]:
    """Reload a finished run from its folder and re-score its dev split(s).

    Returns ``{"main_metric", "score", "dev", "saved_score"}``; ``data_dir`` overrides the run's
    data folder (e.g. for a run made on another machine); ``checkpoint`` scores the weights of
    another sparse checkpoint of the run's adapter (e.g. a low-precision export).
    """
    run_dir = Path(run_dir)
    config = finished_run(run_dir)
    saved = read_final(run_dir)
    data = load_run_data(config, data_dir, with_train=False)
    accelerator = make_accelerator(config)
    set_seed(config.train.seed)
    model, tokenizer_path = load_run_model(run_dir, config, data.task, checkpoint)
    tokenizer = load_tokenizer(tokenizer_path, model)
    model = accelerator.prepare(model)
    sets = prepared_eval_sets(accelerator, eval_sets(config, data, tokenizer))
    dev = evaluate(model, sets, data.task, accelerator, tokenizer, config.data)
    return {
        "main_metric": data.task.main_metric,
        "score": main_score(dev, data.task),
        "dev": dev,
        "saved_score": saved["score"],
    }
