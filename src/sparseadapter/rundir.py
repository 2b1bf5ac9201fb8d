"""A run's output folder: its files, its life as ``<output>.partial/`` until it is published,
and the trained model stored in it.

A run is written into ``<output>.partial/`` and renamed to ``<output>/`` only when it finished,
so an unfinished run never looks finished and ``--overwrite`` replaces an old run only once the
new one succeeded. The ``.partial`` folder holds the resumable checkpoint
(:mod:`sparseadapter.resume`); a published run holds ``config.yaml``, ``metrics.jsonl``,
``final.json``, ``log.txt`` and the trained adapter (``adapter/``, a sparse checkpoint) or, for
full fine-tuning, the whole model (``model/``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, TypedDict

from torch import nn

from sparseadapter.adapters import build_model, load_model, resolve_model
from sparseadapter.checkpoint import load_sparse, save_sparse
from sparseadapter.errors import ConfigError
from sparseadapter.export import export_dense
from sparseadapter.files import check_parent, move_into_place
from sparseadapter.resume import RESUME_FILE, read_resume_state, remove_checkpoint
from sparseadapter.runconfig import RunConfig, changed_keys, load_yaml, save_yaml
from sparseadapter.tasks import Task, get_task

CONFIG_FILE = "config.yaml"
EPOCHS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
LOG_FILE = "log.txt"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
LOGS_DIR = "logs"  # the experiment trackers' files (train.report_to)
FUSED_DIR = "fused"  # an AdapterFusion run's copies of its task adapters
PARTIAL_SUFFIX = ".partial"
PARTIAL_MARKER = ".sparseadapter-run"  # the first file of every .partial folder a run makes
# What a finished run folder may hold: its own files, and exports made into it.
RUN_ENTRIES = (
    CONFIG_FILE,
    EPOCHS_FILE,
    FINAL_FILE,
    LOG_FILE,
    ADAPTER_DIR,
    MODEL_DIR,
    LOGS_DIR,
    FUSED_DIR,
)
EXPORT_PREFIX = "export-"


def partial_dir(output: Path) -> Path:
    """Where the run in ``output`` lives until it is published."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def interrupted(config: RunConfig) -> bool:
    """Whether the run's output folder has an unfinished run that can be resumed."""
    return (partial_dir(config.output_dir()) / RESUME_FILE).is_file()


def _check_writable(folder: Path) -> None:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write the run folder {folder}: {existing} is not a writable folder; "
            "choose another --output"
        )


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a finished run folder and nothing else: its config and results,
    and no entry a run does not write (a user's notes beside a ``final.json`` make it not a run).
    """
    if not (folder / FINAL_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        return False
    return all(
        p.name in RUN_ENTRIES or (p.is_dir() and p.name.startswith(EXPORT_PREFIX))
        for p in folder.iterdir()
    )


def _is_ours(partial: Path) -> bool:
    """Whether a ``.partial`` folder was left by a run (and so may be cleared)."""
    return (partial / PARTIAL_MARKER).is_file() or (partial / RESUME_FILE).is_file()


def new_run_dirs(config: RunConfig, overwrite: bool) -> tuple[Path, Path]:
    """The output and partial folders of a new run; ConfigError if starting it would lose or
    mix up another run (a finished one without ``overwrite``, foreign files, a resumable one)."""
    output = config.output_dir()
    check_parent(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not is_run(output):
            raise ConfigError(
                f"{output} exists and is not a sparseadapter run; choose another --output (a run "
                "folder holds only the files a run writes: move yours away to reuse it)"
            )
        if not overwrite:
            raise ConfigError(
                f"{output} already holds a finished run; pass --overwrite to replace it "
                "or choose another --output"
            )
    partial = partial_dir(output)
    if partial.exists():
        if not partial.is_dir() or not _is_ours(partial):
            raise ConfigError(
                f"{partial} exists and was not left by a sparseadapter run; move it away "
                "or choose another --output"
            )
        if interrupted(config) and not overwrite:
            raise ConfigError(
                f"{output} has an interrupted run with a checkpoint: pass --resume {output} to "
                "continue it, or --overwrite to start over"
            )
    _check_writable(partial)
    return output, partial


def start_partial(partial: Path, config: RunConfig) -> None:
    """Clear what an earlier attempt left in ``partial`` (checked by :func:`new_run_dirs`) and
    start it anew: the marker first, then the run's config."""
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / PARTIAL_MARKER).write_text("", encoding="utf-8")
    save_yaml(config, partial / CONFIG_FILE)


def discard_partial(partial: Path) -> None:
    """Remove a ``.partial`` folder this run made, unless it holds a checkpoint to resume."""
    if _is_ours(partial) and not (partial / RESUME_FILE).exists():
        shutil.rmtree(partial, ignore_errors=True)


def interrupted_config(run_dir: str | Path) -> dict[str, Any]:
    """The config (as a dict) of the interrupted run in ``run_dir``, to resume it.

    ``run_dir`` is the run's output folder (or its ``.partial`` folder); ConfigError if it
    holds no checkpoint.
    """
    output = Path(run_dir)
    if output.name.endswith(PARTIAL_SUFFIX):
        output = output.with_name(output.name.removesuffix(PARTIAL_SUFFIX))
    _checkpoint_path(output)
    data = load_run_config(partial_dir(output))
    data["output"] = str(output)
    return data


# Keys of a run's config.yaml that versions before them did not write, with the value those
# versions trained with: a run saved without one ran at that value, not at today's default.
WRITTEN_SINCE = {("train", "lr_density_exponent"): 0.0}


def load_run_config(folder: Path) -> dict[str, Any]:
    """The config a run folder (finished or ``.partial``) was trained with, as a dict."""
    data = load_yaml(folder / CONFIG_FILE)
    for (section, key), value in WRITTEN_SINCE.items():
        if isinstance(data.get(section), dict):
            data[section].setdefault(key, value)
    return data


def _checkpoint_path(output: Path) -> Path:
    path = partial_dir(output) / RESUME_FILE
    if path.is_file():
        return path
    if (output / FINAL_FILE).is_file():
        raise ConfigError(f"{output} is a finished run: there is nothing to resume")
    raise ConfigError(
        f"nothing to resume in {output}: no checkpoint {path} (one is written every "
        "train.checkpoint_every steps and after each epoch); start the run again without --resume"
    )


def resume_dirs(config: RunConfig) -> tuple[Path, Path, dict[str, Any]]:
    """The output and partial folders and the checkpoint of a run to resume with ``config``."""
    output = config.output_dir()
    path = _checkpoint_path(output)
    changes = saved_config_changes(path.parent, config)
    if changes:
        raise ConfigError(
            f"resume of a run with a changed config ({'; '.join(changes)}): drop the options "
            "that change it, or start a new run with --overwrite"
        )
    return output, path.parent, read_resume_state(path)


def publish(partial: Path, output: Path) -> None:
    """Move the finished run into place (without its checkpoint and marker), replacing an old
    run only now."""
    remove_checkpoint(partial / RESUME_FILE)
    (partial / PARTIAL_MARKER).unlink(missing_ok=True)
    move_into_place(partial, output)


def write_history(folder: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in history)
    (folder / EPOCHS_FILE).write_text(lines, encoding="utf-8")


def saved_config_changes(folder: Path, config: RunConfig) -> list[str]:
    """How the config saved in a run folder (finished or ``.partial``) differs from ``config``;
    empty if they agree, ConfigError if the folder holds no config."""
    return changed_keys(RunConfig.from_dict(load_run_config(folder)), config)


def finished_result(config: RunConfig) -> dict[str, Any] | None:
    """The final results of the finished run of ``config`` (its ``final.json``), or None if it
    has not finished; ConfigError if its folder holds a run of another config, whose results
    must not pass for this one's."""
    output = config.output_dir()
    if not (output / FINAL_FILE).is_file():
        return None
    changes = saved_config_changes(output, config)
    if changes:
        raise ConfigError(
            f"{output} holds a finished run of another config ({'; '.join(changes)}): move it "
            "away or choose another output to train this one, or --overwrite to replace it"
        )
    return read_final(output)


class RunResult(TypedDict, total=False):
    """What a finished run reports (``final.json``, and what ``train`` returns)."""

    task: str  # the task's name, e.g. "rte", "squad"
    main_metric: str  # the metric that selects the best epoch, e.g. "accuracy", "f1", "rougeL"
    score: float  # main_metric on the first dev split, at the selected epoch (0-1 scale)
    dev: dict[str, dict[str, float]]  # split -> metric -> value, plus a "collapsed" flag
    selected_epoch: int
    select: str  # "best" or "last"
    lr: float  # the peak learning rate trained at (train.lr, scaled by the density when asked)
    examples: dict[str, int]  # split -> number of examples
    parameters: dict[str, int]  # budget.parameter_report: total, trainable, non-zero, ...
    sparsity: dict[str, Any] | None  # sparsify's report; None for a dense run
    timing: dict[str, float]  # prune/train/eval seconds, training examples per second
    output: str  # the run folder (returned by train, not stored)
    history: list[dict[str, Any]]  # one record per epoch (returned by train, not stored)


def read_final(run_dir: Path) -> RunResult:
    """The results a finished run saved (``final.json``); ConfigError if they are damaged."""
    path = run_dir / FINAL_FILE
    damaged = ConfigError(
        f"{path} is damaged (not the JSON a run writes): train the run again with --overwrite"
    )
    try:
        final = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise damaged from None
    score = final.get("score") if isinstance(final, dict) else None
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise damaged
    return final


def finished_run(run_dir: str | Path) -> RunConfig:
    """The config of a finished run folder; ConfigError if the folder holds none."""
    run_dir = Path(run_dir)
    if not (run_dir / FINAL_FILE).is_file():
        raise ConfigError(
            f"{run_dir} is not a finished run (no {FINAL_FILE}); pass the output folder of a "
            "completed `sparseadapter train`"
        )
    return RunConfig.from_dict(load_run_config(run_dir))


def save_run_model(model: nn.Module, tokenizer, folder: Path, config: RunConfig) -> None:
    """The trained adapter as a sparse checkpoint; a fully fine-tuned model as an HF folder."""
    if config.model.is_full_finetune:
        model.save_pretrained(folder / MODEL_DIR)
        tokenizer.save_pretrained(folder / MODEL_DIR)
    elif config.model.is_fusion:
        from sparseadapter.fusion import save_fusion_run, task_adapters_from_runs

        save_fusion_run(model, folder, task_adapters_from_runs(config.model.fuse or []))
    else:
        save_sparse(model, folder / ADAPTER_DIR)


def build_run_model(
    config: RunConfig, task: Task, run_dir: Path | None = None
) -> tuple[nn.Module, str]:
    """The backbone with the run's adapter (or fully trainable), and the resolved model path.

    An AdapterFusion takes its task adapters from the fused runs, or from the copies in
    ``run_dir`` when it rebuilds a finished run."""
    model_path = resolve_model(config.model.name)
    if config.model.is_fusion:
        from sparseadapter.fusion import build_fusion_model

        model = build_fusion_model(config, task.num_labels, task.problem_type, model_path, run_dir)
        return model, model_path
    model, _ = build_model(
        model_path,
        task.num_labels,
        None if config.model.is_full_finetune else config.model.adapter,
        library=config.model.library,
        width=config.model.width,
        large_sparse=config.model.large_sparse,
        problem_type=task.problem_type,
        head=task.head,
        modules_to_save=config.model.modules_to_save,
    )
    return model, model_path


def load_run_model(
    run_dir: Path, config: RunConfig, task: Task, checkpoint: str | Path | None = None
) -> tuple[nn.Module, str]:
    """The trained model of a finished run, and the path of its tokenizer.

    The adapter is built from the run's config, as for training, and the checkpoint loaded
    into it (``checkpoint``: another sparse checkpoint of the same adapter, e.g. a low-precision
    export, instead of ``adapter/``): a checkpoint of another adapter is refused.
    """
    if checkpoint is not None and config.model.is_full_finetune:
        raise ConfigError(
            f"{run_dir} is a full fine-tuning run: it has no adapter that --checkpoint could "
            "replace; drop --checkpoint"
        )
    if config.model.is_full_finetune:
        path = str(run_dir / MODEL_DIR)
        return load_model(path, task.num_labels, task.problem_type, task.head), path
    model, path = build_run_model(config, task, run_dir)
    if config.model.is_fusion:
        from sparseadapter.fusion import load_fusion

        if checkpoint is not None:
            raise ConfigError(
                f"{run_dir} is an AdapterFusion run: --checkpoint replaces a single adapter's "
                "file; drop --checkpoint"
            )
        return load_fusion(model, run_dir / ADAPTER_DIR), path
    return load_sparse(model, Path(checkpoint) if checkpoint else run_dir / ADAPTER_DIR), path


def export_run(
    run_dir: str | Path,
    format: str,
    output: str | Path | None = None,
    overwrite: bool = False,
    precision: str | None = None,
) -> Path:
    """Write a finished run's adapter as ``format`` (peft, adapterhub or sparse); its folder.

    ``precision``: the sparse format's value precision (``save_sparse``; fp32 when None). An
    existing export (or checkpoint) at the target is replaced only with ``overwrite``."""
    if precision is not None and format != "sparse":
        raise ConfigError(
            f"--precision sets the sparse format's value precision; the {format} format stores "
            "the adapter as it is: drop --precision or use --format sparse"
        )
    run_dir = Path(run_dir)
    config = finished_run(run_dir)
    if config.model.is_full_finetune:
        raise ConfigError(
            f"a full fine-tuning run has no adapter to export: {run_dir / MODEL_DIR} already is "
            "a plain Hugging Face model folder"
        )
    if config.model.is_fusion and format != "adapterhub":
        raise ConfigError(
            f"an AdapterFusion run exports as format 'adapterhub', not {format!r}; its "
            f"compact files already are {run_dir / ADAPTER_DIR} and {run_dir / FUSED_DIR}"
        )
    model, _ = load_run_model(run_dir, config, get_task(config.data.task, config.data))
    target = Path(output) if output else run_dir / f"{EXPORT_PREFIX}{format}"
    if config.model.is_fusion:
        from sparseadapter.fusion import export_fusion

        return export_fusion(model, target, overwrite=overwrite)
    if format == "sparse":
        return save_sparse(model, target, precision=precision, overwrite=overwrite)
    return export_dense(model, target, format, overwrite=overwrite)
