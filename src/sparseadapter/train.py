"""Training of one GLUE run on accelerate.

The flow: data (:mod:`sparseadapter.data`) → model + adapter → pruning (before
``accelerator.prepare``, on the first training batches, the same masks on every process) → AdamW
with a linear warm-up schedule → an evaluation after every epoch (:mod:`sparseadapter.evaluate`)
→ the best (or last) epoch's weights → the run folder (:mod:`sparseadapter.rundir`).

Only the main process writes. Every ``train.checkpoint_every`` optimizer steps and after every
epoch the run saves ``<output>.partial/checkpoint.pt`` (see :mod:`sparseadapter.resume`);
``train(config, resume=True)`` continues from it and ends with the same weights and metrics as
a run that was never interrupted. Data parallelism: :mod:`sparseadapter.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.data_loader import skip_first_batches
from accelerate.utils import gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from sparseadapter import tracking
from sparseadapter.budget import parameter_report
from sparseadapter.checkpoint import base_identity, base_mismatch
from sparseadapter.config import SparsityConfig, density_scaled_lr
from sparseadapter.data import (
    RunData,
    data_generator,
    eval_sets,
    load_run_data,
    load_tokenizer,
    train_features,
    train_loader,
)
from sparseadapter.distributed import broadcast_masks, make_accelerator
from sparseadapter.errors import CheckpointError, ConfigError, SparseAdapterError
from sparseadapter.evaluate import evaluate, main_score, prepared_eval_sets
from sparseadapter.files import exclusive, write_error
from sparseadapter.resume import (
    RESUME_FILE,
    Progress,
    rng_states,
    set_rng_states,
    write_resume_state,
)
from sparseadapter.runconfig import RunConfig, TrainConfig
from sparseadapter.rundir import (
    EPOCHS_FILE,
    FINAL_FILE,
    LOG_FILE,
    LOGS_DIR,
    RunResult,
    build_run_model,
    discard_partial,
    new_run_dirs,
    publish,
    resume_dirs,
    save_run_model,
    start_partial,
    write_history,
)
from sparseadapter.sparsify import apply_masks, get_masks, sparsify
from sparseadapter.tasks import EvalSet, Task

# when set to a folder, every process writes rank<N>.pt there: its masks and final trainable weights
DEBUG_DUMP_ENV = "SPARSEADAPTER_DEBUG_DUMP"

log = logging.getLogger("sparseadapter.train")


def _describe(record: dict[str, Any]) -> str:
    """One line for an epoch record: train loss and the dev metrics."""
    parts = [f"train loss {record['train_loss']:.4f}"]
    for split, metrics in record.get("dev", {}).items():
        values = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "collapsed")
        parts.append(f"{split} {values}" + (" (collapsed)" if metrics["collapsed"] else ""))
    return ", ".join(parts)


@contextmanager
def _log_to(path: Path | None, quiet: bool) -> Iterator[None]:
    """Log this run to ``path`` and (unless quiet) to stderr, without breaking progress bars."""
    handlers: list[logging.Handler] = []
    if path is not None:
        # a path that is not valid UTF-8 (bytes from the shell) is logged with escapes
        handlers.append(logging.FileHandler(path, encoding="utf-8", errors="backslashreplace"))
        handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        if not quiet:
            handlers.append(_TqdmHandler(logging.INFO))
    for handler in handlers:
        log.addHandler(handler)
    previous = log.level, log.propagate
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(previous[0])
        log.propagate = previous[1]


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def train(
    config: RunConfig, overwrite: bool = False, quiet: bool = False, resume: bool = False
) -> RunResult:
    """Run one training run and write its folder; returns the content of ``final.json``.

    ``resume=True`` continues the interrupted run in ``config.output_dir()`` from its
    checkpoint; ``config`` must be the run's own (ConfigError naming the changed keys if not).
    """
    # one process writes a run folder at a time (under `accelerate launch`: the main process
    # holds the lock for all of them)
    main = int(os.environ.get("RANK", "0")) == 0
    with exclusive(config.output_dir()) if main else contextlib.nullcontext():
        try:
            return _run(config, overwrite, quiet, resume)
        except OSError as err:
            if err.filename is None:
                raise
            raise write_error(err.filename, err) from None


def _run(config: RunConfig, overwrite: bool, quiet: bool, resume: bool) -> RunResult:
    checkpoint = None
    if resume:
        output, partial, checkpoint = resume_dirs(config)
    else:
        output, partial = new_run_dirs(config, overwrite)
    data = load_run_data(config)
    accelerator = make_accelerator(config, partial / LOGS_DIR)
    if checkpoint is not None and checkpoint["num_processes"] != accelerator.num_processes:
        raise ConfigError(
            f"the run was checkpointed with {checkpoint['num_processes']} processes, this resume "
            f"has {accelerator.num_processes}: resume it with as many processes"
        )
    set_seed(config.train.seed)
    model, model_path = build_run_model(config, data.task)
    tokenizer = load_tokenizer(model_path, model)
    if checkpoint is not None:
        _restore_model(model, checkpoint, config)
    if accelerator.is_main_process and checkpoint is None:
        start_partial(partial, config)
    accelerator.wait_for_everyone()
    tracking.start(accelerator, config)
    try:
        with _log_to(partial / LOG_FILE if accelerator.is_main_process else None, quiet):
            final = _train(config, data, model, tokenizer, accelerator, partial, quiet, checkpoint)
    except (SparseAdapterError, OSError):
        # bad input found while pruning, or a full disk: leave no half-made run behind (unless
        # it can resume)
        if accelerator.is_main_process:
            discard_partial(partial)
        raise
    finally:
        tracking.finish(accelerator)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish(partial, output)
    final["output"] = str(output)
    return final


def _prune(config: SparsityConfig, model: nn.Module, scoring: DataLoader, accelerator: Accelerator):
    """Prune ``model`` once, before the optimizer exists; the same masks on every process."""
    report = sparsify(model, config, batches=scoring)
    broadcast_masks(model, config, accelerator)
    log.debug("pruning:\n%s", report)
    log.info(
        "pruned %s: %d of %d prunable weights kept (%.1f%% sparse) in %.1fs",
        config.method,
        report.kept,
        report.prunable,
        100 * report.achieved_sparsity,
        report.seconds,
    )
    return report


def _peak_lr(cfg: TrainConfig, sparsity: dict[str, Any] | None) -> float:
    """``train.lr``, scaled to a pruned adapter's density (its kept share of the prunable
    weights, from the pruning report) by ``train.lr_density_exponent``."""
    if not sparsity:
        return cfg.lr
    return density_scaled_lr(
        cfg.lr, sparsity["kept"], sparsity["prunable"], cfg.lr_density_exponent
    )


def _optimizer(model: nn.Module, cfg: TrainConfig, lr: float, batches_per_epoch: int):
    """AdamW (weight decay on matrices only) and a linear warm-up/decay schedule."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.dim() > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in trainable if p.dim() <= 1], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    total_steps = cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(cfg.warmup_ratio * total_steps), total_steps
    )
    return optimizer, scheduler


def _train(
    config: RunConfig,
    data: RunData,
    model: nn.Module,
    tokenizer,
    accelerator: Accelerator,
    folder: Path,
    quiet: bool,
    checkpoint: dict[str, Any] | None,
) -> RunResult:
    task, cfg = data.task, config.train
    log.debug("run %s: %s", config.output_dir(), json.dumps(config.to_dict()))
    features = train_features(config, task, tokenizer, data.train)
    generator = data_generator(config)
    batches = train_loader(config, features, tokenizer, generator)
    # taken before training: full fine-tuning changes the embeddings the identity hashes
    base = base_identity(model) if checkpoint is None else checkpoint["base_model"]
    model.to(accelerator.device)
    if checkpoint is None:
        progress = Progress()
        sparsity = None
        if config.prune is not None:
            # a loader of its own, so that pruning leaves the training data order unchanged
            scoring = train_loader(config, features, tokenizer, data_generator(config))
            sparsity = _prune(config.prune, model, scoring, accelerator).to_dict()
            tracking.log_pruning(accelerator, sparsity)
        tracking.log_parameters(accelerator, parameter_report(model).to_dict())
    else:
        progress, sparsity = Progress(**checkpoint["progress"]), checkpoint["sparsity"]
    lr = _peak_lr(cfg, sparsity)
    if lr != cfg.lr:
        log.info("lr %.3g: train.lr %.3g x density^-%g", lr, cfg.lr, cfg.lr_density_exponent)
    optimizer, scheduler = _optimizer(model, cfg, lr, len(batches))
    model, optimizer, batches, scheduler = accelerator.prepare(model, optimizer, batches, scheduler)
    dev_sets = prepared_eval_sets(accelerator, eval_sets(config, data, tokenizer))
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        generator.set_state(progress.data_state)
        if accelerator.is_main_process:  # the epochs after the checkpoint are trained again
            write_history(folder, progress.history)
        log.info("resumed at epoch %d, batch %d", progress.epoch, progress.batches_done)
        set_rng_states(checkpoint["rng"][accelerator.process_index])

    def save() -> None:
        _save_checkpoint(folder, accelerator, model, base, optimizer, scheduler, progress, sparsity)

    bar = tqdm(
        total=cfg.epochs * len(batches),
        initial=(progress.epoch - 1) * len(batches) + progress.batches_done,
        desc="train",
        unit="batch",
        disable=quiet or not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    for epoch in range(progress.epoch, cfg.epochs + 1):
        if progress.batches_done == 0:
            progress.data_state = generator.get_state()
        loader = batches
        if progress.batches_done:  # resumed mid-epoch: the same order, without the batches done
            loader = skip_first_batches(batches, progress.batches_done)
        _train_epoch(
            epoch, loader, model, optimizer, scheduler, progress, accelerator, cfg, bar, save
        )
        record = _end_epoch(epoch, progress, model, dev_sets, task, config, accelerator, tokenizer)
        log.info("epoch %d/%d: %s", epoch, cfg.epochs, _describe(record))
        tracking.log_epoch(accelerator, record, progress.steps)
        if accelerator.is_main_process:
            with (folder / EPOCHS_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        progress.epoch, progress.batches_done, progress.loss_sum = epoch + 1, 0, 0.0
        progress.data_state = generator.get_state()
        if cfg.checkpoint_every:
            save()
    bar.close()

    model = accelerator.unwrap_model(model)
    if progress.best_state is not None:
        _load_trainable_state(model, progress.best_state)
    _debug_dump(model, accelerator)
    best = progress.best
    assert best is not None  # the last epoch is always evaluated
    final = _result(config, data, model, progress, best, sparsity, lr)
    if accelerator.is_main_process:
        save_run_model(model, tokenizer, folder, config)
        (folder / FINAL_FILE).write_text(json.dumps(final, indent=2), encoding="utf-8")
        log.debug("final: %s", json.dumps(final))
    final["history"] = progress.history
    return final


def _train_epoch(
    epoch: int,
    loader,
    model: nn.Module,
    optimizer,
    scheduler,
    progress: Progress,
    accelerator: Accelerator,
    cfg: TrainConfig,
    bar: tqdm,
    save,
) -> None:
    """One pass over ``loader``: optimizer steps, progress, and a checkpoint every
    ``cfg.checkpoint_every`` steps (``save``)."""
    model.train()
    start = time.perf_counter()
    for batch in loader:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        progress.loss_sum += loss.item()
        progress.batches_done += 1
        progress.seen += len(batch["input_ids"]) * accelerator.num_processes
        bar.update()
        bar.set_postfix(
            epoch=f"{epoch}/{cfg.epochs}",
            loss=f"{progress.loss_sum / progress.batches_done:.4f}",
            ex_s=f"{progress.seen / (progress.train_seconds + time.perf_counter() - start):.1f}",
        )
        if accelerator.sync_gradients:
            progress.steps += 1
            tracking.log_step(accelerator, loss.item(), scheduler.get_last_lr()[0], progress.steps)
            mid_epoch = not accelerator.gradient_state.end_of_dataloader
            if mid_epoch and cfg.checkpoint_every and progress.steps % cfg.checkpoint_every == 0:
                progress.train_seconds += time.perf_counter() - start
                save()
                start = time.perf_counter()
    progress.train_seconds += time.perf_counter() - start


def _result(
    config: RunConfig,
    data: RunData,
    model: nn.Module,
    progress: Progress,
    best: dict[str, Any],
    sparsity: dict[str, Any] | None,
    lr: float,
) -> RunResult:
    """What the run reports in ``final.json`` (``lr``: the peak rate it trained at)."""
    task, cfg = data.task, config.train
    evaluations = sum(1 for record in progress.history if "dev" in record)
    scored = evaluations * sum(len(examples) for examples in data.dev.values())
    final: RunResult = {
        "task": task.name,
        "main_metric": task.main_metric,
        "score": best["score"],
        "dev": best["dev"],
        "selected_epoch": best["epoch"],
        "select": cfg.select,
        "lr": lr,
        "examples": {"train": len(data.train), **{s: len(e) for s, e in data.dev.items()}},
        "parameters": parameter_report(model, config.prune or SparsityConfig()).to_dict(),
        "sparsity": sparsity,
        "timing": {
            "prune_seconds": sparsity["seconds"] if sparsity else 0.0,
            "train_seconds": progress.train_seconds,
            "eval_seconds": progress.eval_seconds,
            "train_examples_per_second": progress.seen / progress.train_seconds
            if progress.train_seconds
            else 0.0,
            # examples scored per second (generation included: the slow part of xsum)
            "eval_examples_per_second": scored / progress.eval_seconds
            if progress.eval_seconds
            else 0.0,
        },
    }
    return final


def _end_epoch(
    epoch: int,
    progress: Progress,
    model: nn.Module,
    dev_sets: dict[str, EvalSet],
    task: Task,
    config: RunConfig,
    accelerator: Accelerator,
    tokenizer,
) -> dict[str, Any]:
    """The epoch's record (evaluated if due), added to the history; tracks the best epoch."""
    cfg = config.train
    record: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": progress.loss_sum / max(progress.batches_done, 1),
    }
    if cfg.eval_each_epoch or epoch == cfg.epochs:
        start = time.perf_counter()
        record["dev"] = evaluate(model, dev_sets, task, accelerator, tokenizer, config.data)
        progress.eval_seconds += time.perf_counter() - start
        record["score"] = main_score(record["dev"], task)
        best = progress.best
        if cfg.select == "last" or best is None or record["score"] > best["score"]:
            progress.best = record
            # the last epoch's weights are the model's own: no copy needed
            last = epoch == cfg.epochs or cfg.select == "last"
            progress.best_state = (
                None if last else _trainable_state(accelerator.unwrap_model(model))
            )
    progress.history.append(record)
    return record


def _save_checkpoint(
    folder: Path,
    accelerator: Accelerator,
    model: nn.Module,
    base: dict[str, Any],
    optimizer,
    scheduler,
    progress: Progress,
    sparsity: dict[str, Any] | None,
) -> None:
    """Write the run's resumable state (main process; every process adds its RNG states).

    ``base`` is the base model's identity from before training, which a resume checks.
    """
    rng = gather_object([rng_states()])
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(model)
    write_resume_state(
        folder / RESUME_FILE,
        {
            "num_processes": accelerator.num_processes,
            "base_model": base,
            "trainable": _trainable_state(model),
            "masks": {name: mask.cpu() for name, mask in get_masks(model).items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "progress": progress.to_dict(),
            "sparsity": sparsity,
        },
    )
    if progress.batches_done:
        log.debug("checkpoint at epoch %d, batch %d", progress.epoch, progress.batches_done)
    else:  # saved at the end of an epoch: progress already points at the next one
        log.debug("checkpoint after epoch %d", progress.epoch - 1)


def _restore_model(model: nn.Module, checkpoint: dict[str, Any], config: RunConfig) -> None:
    """Load a checkpoint's trainable weights and masks into the freshly built ``model``."""
    mismatch = base_mismatch(checkpoint["base_model"], model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if mismatch or trainable != set(checkpoint["trainable"]):
        what = f"base model ({mismatch})" if mismatch else "adapter"
        raise CheckpointError(
            f"the checkpoint of {config.output_dir()} was written for another {what}: resume "
            f"with the model the run started with ({config.model.name}), or start a new run "
            "with --overwrite"
        )
    _load_trainable_state(model, checkpoint["trainable"])
    if checkpoint["masks"]:
        apply_masks(model, checkpoint["masks"], config.prune)


def _debug_dump(model: nn.Module, accelerator: Accelerator) -> None:
    """With SPARSEADAPTER_DEBUG_DUMP=DIR: this process's masks and trained weights, for tests."""
    folder = os.environ.get(DEBUG_DUMP_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        state = {
            "num_processes": accelerator.num_processes,
            "masks": {name: mask.cpu() for name, mask in get_masks(model).items()},
            "trainable": _trainable_state(model),
        }
        torch.save(state, Path(folder) / f"rank{accelerator.process_index}.pt")


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name in state:
            param.copy_(state[name])
