"""Training and evaluation of one GLUE run on accelerate, and its output folder.

The flow: data → model + adapter → pruning (before ``accelerator.prepare``, on the first training
batches, the same masks on every process) → AdamW with a linear warm-up schedule → an evaluation
after every epoch → the best (or last) epoch's weights → the run folder.

A run is written into ``<output>.partial/`` and renamed to ``<output>/`` only when it finished,
so an unfinished run never looks finished and ``--overwrite`` replaces an old run only once the
new one succeeded. Only the main process writes. Every ``train.checkpoint_every`` optimizer
steps and after every epoch the run saves ``<output>.partial/checkpoint.pt`` (see
:mod:`sparseadapter.resume`); ``train(config, resume=True)`` continues from it and ends with the
same weights and metrics as a run that was never interrupted.

Data parallelism is DDP through accelerate (``torchrun`` / ``accelerate launch``); sharded
parameters (FSDP, DeepSpeed, Megatron-LM) are refused, see :func:`check_parallelism`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.data_loader import skip_first_batches
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, broadcast, gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from sparseadapter.adapters import build_model, load_model, resolve_library, resolve_model
from sparseadapter.batching import LengthGroupedBatches, PadCollator
from sparseadapter.budget import parameter_report
from sparseadapter.checkpoint import base_identity, export_dense, load_sparse, save_sparse
from sparseadapter.config import SparsityConfig
from sparseadapter.errors import CheckpointError, ConfigError, SparseAdapterError
from sparseadapter.resume import (
    CHECKPOINT_FILE,
    Progress,
    read_checkpoint,
    remove_checkpoint,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from sparseadapter.runconfig import RunConfig, TrainConfig, changed_keys, load_yaml, save_yaml
from sparseadapter.sparsify import apply_masks, get_masks, sparsify
from sparseadapter.tasks.glue import Example, TaskSpec, compute_metrics, get_task, load_glue

CONFIG_FILE = "config.yaml"
EPOCHS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
LOG_FILE = "log.txt"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
PARTIAL_SUFFIX = ".partial"
# when set to a folder, every process writes rank<N>.pt there: its masks and final trainable weights
DEBUG_DUMP_ENV = "SPARSEADAPTER_DEBUG_DUMP"
SHARDED = {
    DistributedType.FSDP: "FSDP",
    DistributedType.DEEPSPEED: "DeepSpeed",
    DistributedType.MEGATRON_LM: "Megatron-LM",
}

log = logging.getLogger("sparseadapter.train")


@dataclass
class RunData:
    task: TaskSpec
    train: list[Example]
    dev: dict[str, list[Example]]


def load_run_data(
    config: RunConfig, data_dir: str | None = None, with_train: bool = True
) -> RunData:
    """The run's training examples (unless ``with_train=False``) and its dev split(s)."""
    task = get_task(config.data.task)
    data_dir = data_dir or config.data.data_dir
    train = (
        load_glue(task.name, "train", data_dir, config.data.max_train_samples) if with_train else []
    )
    dev = {
        split: load_glue(task.name, split, data_dir, config.data.max_eval_samples)
        for split in task.dev_splits
    }
    return RunData(task, train, dev)


def load_tokenizer(model_path: str):
    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"no tokenizer found for model {model_path!r} ({str(err).splitlines()[0]}); "
            "pass --model minilm, an HF model id, or a folder holding a model and its tokenizer"
        ) from None


def encode(
    tokenizer, examples: list[Example], max_length: int, is_regression: bool
) -> list[dict[str, Any]]:
    """Tokenized examples (unpadded) with their labels."""
    pairs = bool(examples) and examples[0].text_b is not None
    encoded = tokenizer(
        [e.text_a for e in examples],
        [e.text_b for e in examples] if pairs else None,
        truncation=True,
        max_length=max_length,
    )
    cast = float if is_regression else int
    return [
        {**{key: values[i] for key, values in encoded.items()}, "labels": cast(e.label)}
        for i, e in enumerate(examples)
    ]


def make_accelerator(config: RunConfig) -> Accelerator:
    """A fresh Accelerator for this run (runs in one process may differ in precision).

    Under ``torchrun`` on a machine without GPUs accelerate finds no backend and would let every
    process train alone; then the processes are joined over gloo on the CPU instead.
    """

    def fresh(cpu: bool) -> Accelerator:
        AcceleratorState._reset_state(reset_partial_state=cpu)
        GradientState._reset_state()
        return Accelerator(
            cpu=cpu,
            mixed_precision=config.train.mixed_precision,
            gradient_accumulation_steps=config.train.grad_accum,
        )

    accelerator = fresh(cpu=False)
    if accelerator.num_processes == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        accelerator = fresh(cpu=True)
    check_parallelism(accelerator)
    if config.train.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("fp16 mixed precision needs a GPU; use --mixed-precision bf16 on CPU")
    return accelerator


def check_parallelism(accelerator: Accelerator) -> None:
    """Refuse parallelism that shards or wraps parameters: the masks would silently stop working.

    Masks are tied to the parameter tensors of the model; FSDP and DeepSpeed ZeRO-3 replace
    them with flat shards, and DeepSpeed/Megatron-LM step their own optimizers. Data parallel
    (DDP) on CPUs or GPUs is supported.
    """
    name = SHARDED.get(accelerator.distributed_type)
    if name is not None:
        raise ConfigError(
            f"{name} is not supported yet: it shards or wraps the parameters, so the pruning "
            "masks would not be enforced. Train data parallel instead (accelerate launch "
            "--multi_gpu, or torchrun); see docs/distributed.md"
        )


def _problem_type(task: TaskSpec) -> str:
    return "regression" if task.is_regression else "single_label_classification"


def build_run_model(config: RunConfig, task: TaskSpec) -> tuple[nn.Module, str]:
    """The backbone with the run's adapter (or fully trainable), and the resolved model path."""
    model_path = resolve_model(config.model.name)
    model, _ = build_model(
        model_path,
        task.num_labels,
        None if config.model.is_full_finetune else config.model.adapter,
        library=config.model.library,
        width=config.model.width,
        large_sparse=config.model.large_sparse,
        problem_type=_problem_type(task),
    )
    return model, model_path


def save_run_model(model: nn.Module, tokenizer, folder: Path, config: RunConfig) -> None:
    """The trained adapter as a sparse checkpoint; a fully fine-tuned model as an HF folder."""
    if config.model.is_full_finetune:
        model.save_pretrained(folder / MODEL_DIR)
        tokenizer.save_pretrained(folder / MODEL_DIR)
    else:
        save_sparse(model, folder / ADAPTER_DIR)


def load_run_model(run_dir: Path, config: RunConfig, task: TaskSpec) -> tuple[nn.Module, str]:
    """The trained model of a finished run, and the path of its tokenizer."""
    if config.model.is_full_finetune:
        path = str(run_dir / MODEL_DIR)
        return load_model(path, task.num_labels, _problem_type(task)), path
    path = resolve_model(config.model.name)
    base = load_model(path, task.num_labels, _problem_type(task))
    return load_sparse(base, run_dir / ADAPTER_DIR), path


def _broadcast_masks(model: nn.Module, config: SparsityConfig, accelerator: Accelerator) -> None:
    """Make every process use the main process's masks (scores may differ in the last bit)."""
    if accelerator.num_processes == 1:
        return
    masks = {
        name: broadcast(mask.to(accelerator.device, torch.uint8)).bool()
        for name, mask in get_masks(model).items()
    }
    apply_masks(model, masks, config)


def _train_loader(
    config: RunConfig, features: list[dict[str, Any]], tokenizer, generator: torch.Generator
) -> DataLoader:
    """Shuffled training batches; the order depends on the state of ``generator`` only."""
    collate = PadCollator(tokenizer.pad_token_id or 0)
    if config.data.group_by_length:
        lengths = [len(f["input_ids"]) for f in features]
        batches = LengthGroupedBatches(lengths, config.train.batch_size, generator)
        # the loader's base seed then comes from the data generator, not from the global RNG
        # that dropout uses, so a resumed run draws the same dropout masks
        return DataLoader(features, batch_sampler=batches, collate_fn=collate, generator=generator)
    return DataLoader(
        features,
        batch_size=config.train.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
    )


def _data_generator(config: RunConfig) -> torch.Generator:
    return torch.Generator().manual_seed(config.train.seed)


def _dev_loaders(config: RunConfig, data: RunData, tokenizer) -> dict[str, DataLoader]:
    return {
        split: DataLoader(
            encode(tokenizer, examples, config.data.max_length, data.task.is_regression),
            batch_size=config.train.eval_batch_size,
            collate_fn=PadCollator(tokenizer.pad_token_id or 0),
        )
        for split, examples in data.dev.items()
    }


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
        preds, refs = torch.cat(predictions), torch.cat(references)
        metrics = compute_metrics(task.name, preds.tolist(), refs.tolist())
        metrics["collapsed"] = bool(preds.unique().numel() == 1)
        results[split] = metrics
    return results


def _describe(record: dict[str, Any], task: TaskSpec) -> str:
    """One line for an epoch record: train loss and the dev metrics."""
    parts = [f"train loss {record['train_loss']:.4f}"]
    for split, metrics in record.get("dev", {}).items():
        values = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "collapsed")
        parts.append(f"{split} {values}" + (" (collapsed)" if metrics["collapsed"] else ""))
    return ", ".join(parts)


def _score(dev: dict[str, dict[str, float]], task: TaskSpec) -> float:
    return dev[task.dev_splits[0]][task.main_metric]


def _partial_dir(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


def interrupted(config: RunConfig) -> bool:
    """Whether the run's output folder has an unfinished run that can be resumed."""
    return (_partial_dir(config.output_dir()) / CHECKPOINT_FILE).is_file()


def _check_writable(folder: Path) -> None:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write the run folder {folder}: {existing} is not a writable folder; "
            "choose another --output"
        )


def _output_dirs(config: RunConfig, overwrite: bool) -> tuple[Path, Path]:
    output = config.output_dir()
    if (output / FINAL_FILE).exists() and not overwrite:
        raise ConfigError(
            f"{output} already holds a finished run; pass --overwrite to replace it "
            "or choose another --output"
        )
    is_other = output.exists() and (not output.is_dir() or any(output.iterdir()))
    if is_other and not (output / FINAL_FILE).exists():
        raise ConfigError(
            f"{output} exists and is not a sparseadapter run; choose another --output"
        )
    if interrupted(config) and not overwrite:
        raise ConfigError(
            f"{output} has an interrupted run with a checkpoint: pass --resume {output} to "
            "continue it, or --overwrite to start over"
        )
    partial = _partial_dir(output)
    _check_writable(partial)
    return output, partial


def interrupted_config(run_dir: str | Path) -> dict[str, Any]:
    """The config (as a dict) of the interrupted run in ``run_dir``, to resume it.

    ``run_dir`` is the run's output folder (or its ``.partial`` folder); ConfigError if it
    holds no checkpoint.
    """
    output = Path(run_dir)
    if output.name.endswith(PARTIAL_SUFFIX):
        output = output.with_name(output.name.removesuffix(PARTIAL_SUFFIX))
    _checkpoint_path(output)
    data = load_yaml(_partial_dir(output) / CONFIG_FILE)
    data["output"] = str(output)
    return data


def _checkpoint_path(output: Path) -> Path:
    path = _partial_dir(output) / CHECKPOINT_FILE
    if path.is_file():
        return path
    if (output / FINAL_FILE).is_file():
        raise ConfigError(f"{output} is a finished run: there is nothing to resume")
    raise ConfigError(
        f"nothing to resume in {output}: no checkpoint {path} (one is written every "
        "train.checkpoint_every steps and after each epoch); start the run again without --resume"
    )


def _resume_dirs(config: RunConfig) -> tuple[Path, Path, dict[str, Any]]:
    """The output and partial folders and the checkpoint of a run to resume with ``config``."""
    output = config.output_dir()
    path = _checkpoint_path(output)
    saved = RunConfig.from_dict(load_yaml(path.parent / CONFIG_FILE))
    changes = changed_keys(saved, config)
    if changes:
        raise ConfigError(
            f"resume of a run with a changed config ({'; '.join(changes)}): drop the options "
            "that change it, or start a new run with --overwrite"
        )
    return output, path.parent, read_checkpoint(path)


def _publish(partial: Path, output: Path) -> None:
    """Move the finished run into place (without its checkpoint), replacing an old run only now."""
    remove_checkpoint(partial / CHECKPOINT_FILE)
    if output.exists():
        old = output.with_name(output.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)
        partial.rename(output)
        shutil.rmtree(old)
    else:
        partial.rename(output)


@contextmanager
def _log_to(path: Path | None, quiet: bool) -> Iterator[None]:
    """Log this run to ``path`` and (unless quiet) to stderr, without breaking progress bars."""
    handlers: list[logging.Handler] = []
    if path is not None:
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
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
) -> dict[str, Any]:
    """Run one training run and write its folder; returns the content of ``final.json``.

    ``resume=True`` continues the interrupted run in ``config.output_dir()`` from its
    checkpoint; ``config`` must be the run's own (ConfigError naming the changed keys if not).
    """
    checkpoint = None
    if resume:
        output, partial, checkpoint = _resume_dirs(config)
    else:
        output, partial = _output_dirs(config, overwrite)
    data = load_run_data(config)
    accelerator = make_accelerator(config)
    if checkpoint is not None and checkpoint["num_processes"] != accelerator.num_processes:
        raise ConfigError(
            f"the run was checkpointed with {checkpoint['num_processes']} processes, this resume "
            f"has {accelerator.num_processes}: resume it with as many processes"
        )
    set_seed(config.train.seed)
    model, model_path = build_run_model(config, data.task)
    tokenizer = load_tokenizer(model_path)
    if checkpoint is not None:
        _restore_model(model, checkpoint, config)
    if accelerator.is_main_process and checkpoint is None:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_yaml(config, partial / CONFIG_FILE)
    accelerator.wait_for_everyone()
    try:
        with _log_to(partial / LOG_FILE if accelerator.is_main_process else None, quiet):
            final = _train(config, data, model, tokenizer, accelerator, partial, quiet, checkpoint)
    except SparseAdapterError:
        # bad input found while pruning: leave no half-made run behind (unless it can resume)
        if accelerator.is_main_process and not (partial / CHECKPOINT_FILE).exists():
            shutil.rmtree(partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _publish(partial, output)
    final["output"] = str(output)
    return final


def _prune(config: SparsityConfig, model: nn.Module, scoring: DataLoader, accelerator: Accelerator):
    """Prune ``model`` once, before the optimizer exists; the same masks on every process."""
    report = sparsify(model, config, batches=scoring)
    _broadcast_masks(model, config, accelerator)
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


def _optimizer(model: nn.Module, cfg: TrainConfig, batches_per_epoch: int):
    """AdamW (weight decay on matrices only) and a linear warm-up/decay schedule."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.dim() > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in trainable if p.dim() <= 1], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
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
) -> dict[str, Any]:
    task, cfg = data.task, config.train
    log.debug("run %s: %s", config.output_dir(), json.dumps(config.to_dict()))
    features = encode(tokenizer, data.train, config.data.max_length, task.is_regression)
    generator = _data_generator(config)
    train_loader = _train_loader(config, features, tokenizer, generator)
    model.to(accelerator.device)
    if checkpoint is None:
        progress = Progress()
        sparsity = None
        if config.prune is not None:
            # a loader of its own, so that pruning leaves the training data order unchanged
            scoring = _train_loader(config, features, tokenizer, _data_generator(config))
            sparsity = _prune(config.prune, model, scoring, accelerator).to_dict()
    else:
        progress, sparsity = Progress(**checkpoint["progress"]), checkpoint["sparsity"]
    optimizer, scheduler = _optimizer(model, cfg, len(train_loader))
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler
    )
    dev_loaders = {
        split: accelerator.prepare(loader)
        for split, loader in _dev_loaders(config, data, tokenizer).items()
    }
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        generator.set_state(progress.data_state)
        if accelerator.is_main_process:  # the epochs after the checkpoint are trained again
            _write_history(folder, progress.history)
        log.info("resumed at epoch %d, batch %d", progress.epoch, progress.batches_done)
        set_rng_states(checkpoint["rng"][accelerator.process_index])

    def save() -> None:
        _save_checkpoint(folder, accelerator, model, optimizer, scheduler, progress, sparsity)

    bar = tqdm(
        total=cfg.epochs * len(train_loader),
        initial=(progress.epoch - 1) * len(train_loader) + progress.batches_done,
        desc="train",
        unit="batch",
        disable=quiet or not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    for epoch in range(progress.epoch, cfg.epochs + 1):
        if progress.batches_done == 0:
            progress.data_state = generator.get_state()
        loader = train_loader
        if progress.batches_done:  # resumed mid-epoch: the same order, without the batches done
            loader = skip_first_batches(train_loader, progress.batches_done)
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
            progress.seen += len(batch["labels"]) * accelerator.num_processes
            bar.update()
            bar.set_postfix(
                epoch=f"{epoch}/{cfg.epochs}",
                loss=f"{progress.loss_sum / progress.batches_done:.4f}",
                ex_s=f"{progress.seen / (progress.train_seconds + time.perf_counter() - start):.1f}",
            )
            if accelerator.sync_gradients:
                progress.steps += 1
                mid_epoch = not accelerator.gradient_state.end_of_dataloader
                if (
                    mid_epoch
                    and cfg.checkpoint_every
                    and progress.steps % cfg.checkpoint_every == 0
                ):
                    progress.train_seconds += time.perf_counter() - start
                    save()
                    start = time.perf_counter()
        progress.train_seconds += time.perf_counter() - start
        record = _end_epoch(epoch, progress, model, dev_loaders, task, cfg, accelerator)
        log.info("epoch %d/%d: %s", epoch, cfg.epochs, _describe(record, task))
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
    final = {
        "task": task.name,
        "main_metric": task.main_metric,
        "score": best["score"],
        "dev": best["dev"],
        "selected_epoch": best["epoch"],
        "select": cfg.select,
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
        },
    }
    if accelerator.is_main_process:
        save_run_model(model, tokenizer, folder, config)
        (folder / FINAL_FILE).write_text(json.dumps(final, indent=2), encoding="utf-8")
        log.debug("final: %s", json.dumps(final))
    final["history"] = progress.history
    return final


def _end_epoch(
    epoch: int,
    progress: Progress,
    model: nn.Module,
    dev_loaders: dict[str, DataLoader],
    task: TaskSpec,
    cfg: TrainConfig,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """The epoch's record (evaluated if due), added to the history; tracks the best epoch."""
    record: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": progress.loss_sum / max(progress.batches_done, 1),
    }
    if cfg.eval_each_epoch or epoch == cfg.epochs:
        start = time.perf_counter()
        record["dev"] = evaluate(model, dev_loaders, task, accelerator)
        progress.eval_seconds += time.perf_counter() - start
        record["score"] = _score(record["dev"], task)
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


def _write_history(folder: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in history)
    (folder / EPOCHS_FILE).write_text(lines, encoding="utf-8")


def _save_checkpoint(
    folder: Path,
    accelerator: Accelerator,
    model: nn.Module,
    optimizer,
    scheduler,
    progress: Progress,
    sparsity: dict[str, Any] | None,
) -> None:
    """Write the run's resumable state (main process; every process adds its RNG states)."""
    rng = gather_object([rng_states()])
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(model)
    write_checkpoint(
        folder / CHECKPOINT_FILE,
        {
            "num_processes": accelerator.num_processes,
            "base_model": base_identity(model),
            "trainable": _trainable_state(model),
            "masks": {name: mask.cpu() for name, mask in get_masks(model).items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "progress": progress.to_dict(),
            "sparsity": sparsity,
        },
    )
    log.debug("checkpoint at epoch %d, batch %d", progress.epoch, progress.batches_done)


def _restore_model(model: nn.Module, checkpoint: dict[str, Any], config: RunConfig) -> None:
    """Load a checkpoint's trainable weights and masks into the freshly built ``model``."""
    saved, current = checkpoint["base_model"], base_identity(model)
    differ = [k for k in current if k != "name_or_path" and saved.get(k) != current[k]]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if differ or trainable != set(checkpoint["trainable"]):
        what = f"base model ({', '.join(differ)} differ)" if differ else "adapter"
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


def finished_run(run_dir: str | Path) -> RunConfig:
    """The config of a finished run folder; ConfigError if the folder holds none."""
    run_dir = Path(run_dir)
    if not (run_dir / FINAL_FILE).is_file():
        raise ConfigError(
            f"{run_dir} is not a finished run (no {FINAL_FILE}); pass the output folder of a "
            "completed `sparseadapter train`"
        )
    return RunConfig.from_dict(load_yaml(run_dir / CONFIG_FILE))


def evaluate_run(run_dir: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Reload a finished run from its folder and re-score its dev split(s).

    Returns ``{"main_metric", "score", "dev", "saved_score"}``; ``data_dir`` overrides the run's
    data folder (e.g. for a run made on another machine).
    """
    run_dir = Path(run_dir)
    config = finished_run(run_dir)
    saved = json.loads((run_dir / FINAL_FILE).read_text(encoding="utf-8"))
    data = load_run_data(config, data_dir, with_train=False)
    accelerator = make_accelerator(config)
    set_seed(config.train.seed)
    model, tokenizer_path = load_run_model(run_dir, config, data.task)
    tokenizer = load_tokenizer(tokenizer_path)
    model = accelerator.prepare(model)
    loaders = {
        split: accelerator.prepare(loader)
        for split, loader in _dev_loaders(config, data, tokenizer).items()
    }
    dev = evaluate(model, loaders, data.task, accelerator)
    return {
        "main_metric": data.task.main_metric,
        "score": _score(dev, data.task),
        "dev": dev,
        "saved_score": saved["score"],
    }


def export_run(run_dir: str | Path, format: str, output: str | Path | None = None) -> Path:
    """Write a finished run's adapter as ``format`` (peft, adapterhub or sparse); its folder."""
    run_dir = Path(run_dir)
    config = finished_run(run_dir)
    if config.model.is_full_finetune:
        raise ConfigError(
            f"a full fine-tuning run has no adapter to export: {run_dir / MODEL_DIR} already is "
            "a plain Hugging Face model folder"
        )
    model, _ = load_run_model(run_dir, config, get_task(config.data.task))
    target = Path(output) if output else run_dir / f"export-{format}"
    if format == "sparse":
        return save_sparse(model, target)
    return export_dense(model, target, format)


def summary(final: dict[str, Any], config: RunConfig) -> str:
    """A one-screen summary of a finished run."""
    params, timing = final["parameters"], final["timing"]
    sparse = final["sparsity"]
    model = f"{config.model.name} + {config.model.adapter}"
    if not config.model.is_full_finetune:
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
        f"non-zero trainable {params['nonzero_trainable']:,}",
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
        lines.append(f"warning    predictions collapsed to one value on {', '.join(collapsed)}")
    lines.append(f"dev {final['main_metric']} = {final['score']:.4f}")
    return "\n".join(lines)
