"""Dev-set evaluation: during training, of a finished run from its folder, and the one-screen
summary of a run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from sparseadapter.adapters import resolve_library
from sparseadapter.data import dev_loaders, load_run_data, load_tokenizer
from sparseadapter.distributed import make_accelerator
from sparseadapter.runconfig import RunConfig
from sparseadapter.rundir import finished_run, load_run_model, read_final
from sparseadapter.tasks.glue import TaskSpec, compute_metrics, is_collapsed


@torch.no_grad()
def evaluate(
    model: nn.Module, loaders: dict[str, DataLoader], task: TaskSpec, accelerator: Accelerator
) -> dict[str, dict[str, float]]:
    """Metrics per dev split (gathered over processes), plus a ``collapsed`` flag per split."""
    model.eval()
    results = {}
    for split, loader in loaders.items():
        predictions, references = [], []
        for batch in loader:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            preds = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
            preds, refs = accelerator.gather_for_metrics((preds, batch["labels"]))
            predictions.append(preds.float().cpu() if task.is_regression else preds.cpu())
            references.append(refs.cpu())
        preds, refs = torch.cat(predictions).tolist(), torch.cat(references).tolist()
        metrics = compute_metrics(task.name, preds, refs)
        metrics["collapsed"] = is_collapsed(task.name, preds, refs)
        results[split] = metrics
    return results


def main_score(dev: dict[str, dict[str, float]], task: TaskSpec) -> float:
    return dev[task.dev_splits[0]][task.main_metric]


def evaluate_run(run_dir: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Reload a finished run from its folder and re-score its dev split(s).

    Returns ``{"main_metric", "score", "dev", "saved_score"}``; ``data_dir`` overrides the run's
    data folder (e.g. for a run made on another machine).
    """
    run_dir = Path(run_dir)
    config = finished_run(run_dir)
    saved = read_final(run_dir)
    data = load_run_data(config, data_dir, with_train=False)
    accelerator = make_accelerator(config)
    set_seed(config.train.seed)
    model, tokenizer_path = load_run_model(run_dir, config, data.task)
    tokenizer = load_tokenizer(tokenizer_path, model)
    model = accelerator.prepare(model)
    loaders = {
        split: accelerator.prepare(loader)
        for split, loader in dev_loaders(config, data, tokenizer).items()
    }
    dev = evaluate(model, loaders, data.task, accelerator)
    return {
        "main_metric": data.task.main_metric,
        "score": main_score(dev, data.task),
        "dev": dev,
        "saved_score": saved["score"],
    }


def summary(final: dict[str, Any], config: RunConfig) -> str:
    """A one-screen summary of a finished run."""
    params, timing = final["parameters"], final["timing"]
    sparse = final["sparsity"]
    model = f"{config.model.name} + {config.model.adapter}"
    if config.model.is_fusion:
        model += f" of {len(config.model.fuse or [])} frozen task adapters (adapterhub)"
    elif not config.model.is_full_finetune:
        model += f" ({resolve_library(config.model.adapter, config.model.library)})"
    if config.model.large_sparse != 1:
        model += f", Large-Sparse x{config.model.large_sparse:g}"
    pruning = "none (dense)"
    if sparse:
        pruning = (
            f"{sparse['method']} {sparse['scope']}: kept {sparse['kept']:,} of "
            f"{sparse['prunable']:,} ({sparse['achieved_sparsity']:.1%} sparse) "
            f"in {sparse['seconds']:.1f}s"
        )
    lines = [
        f"run        {final['output']}",
        f"task       {final['task']}: {final['examples']['train']:,} train examples, dev "
        + ", ".join(f"{s} {n:,}" for s, n in final["examples"].items() if s != "train"),
        f"model      {model}",
        f"pruning    {pruning}",
        f"params     total {params['total']:,} | trainable {params['trainable']:,} | "
        f"non-zero trainable {params['nonzero_trainable']:,}"
        + (
            f" | frozen task adapters {params['frozen_adapters']:,} (non-zero "
            f"{params['nonzero_frozen_adapters']:,})"
            if params.get("frozen_adapters")
            else ""
        ),
        f"training   epochs {len(final['history'])}, {timing['train_seconds']:.1f}s "
        f"({timing['train_examples_per_second']:.1f} examples/s), "
        f"eval {timing['eval_seconds']:.1f}s",
        "epoch  train loss  dev " + final["main_metric"],
    ]
    for record in final["history"]:
        score = f"{record['score']:.4f}" if "score" in record else "-"
        mark = "  <- selected" if record["epoch"] == final["selected_epoch"] else ""
        lines.append(f"{record['epoch']:>5}  {record['train_loss']:>10.4f}  {score}{mark}")
    collapsed = [s for s, m in final["dev"].items() if m.get("collapsed")]
    if collapsed:
        lines.append(
            f"warning    predictions collapsed on {', '.join(collapsed)}: one class for every "
            "example, or (regression) scores spread under a fifth of the labels' std"
        )
    lines.append(f"dev {final['main_metric']} = {final['score']:.4f}")
    return "\n".join(lines)
