"""The one-screen summary of a finished run, as ``sparseadapter train`` prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseadapter.adapters import resolve_library
from sparseadapter.runconfig import RunConfig


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
    rate, cfg = f"lr {final['lr']:.3g}", config.train
    if final["lr"] != cfg.lr:
        rate += f" (train.lr {cfg.lr:g} x density^-{cfg.lr_density_exponent:g})"
    task = final["task"]
    if config.data.train_file:  # text-classification: the data's own name
        task += f" ({Path(config.data.train_file).stem})"
    lines = [
        f"run        {final['output']}",
        f"task       {task}: {final['examples']['train']:,} train examples, dev "
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
        f"training   epochs {len(final['history'])}, {rate}, {timing['train_seconds']:.1f}s "
        f"({timing['train_examples_per_second']:.1f} examples/s), "
        f"eval {timing['eval_seconds']:.1f}s"
        + (
            f" ({timing['eval_examples_per_second']:.1f} examples/s)"
            if "eval_examples_per_second" in timing
            else ""
        ),
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
