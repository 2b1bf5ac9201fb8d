"""The ``sparseadapter`` command: argument parsing only; the work is in train, sweep, checkpoint.

Any :class:`SparseAdapterError` or bad argument becomes one line ``error: ...`` on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn

from sparseadapter.config import SparsityConfig
from sparseadapter.errors import ConfigError, SparseAdapterError
from sparseadapter.runconfig import (
    DEFAULT_SPARSITY,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)

EXIT_USAGE = 2

# flag -> (config key, type); the help text comes from the config dataclasses.
RUN_FLAGS: dict[str, tuple[str, type]] = {
    "--task": ("data.task", str),
    "--data-dir": ("data.data_dir", str),
    "--max-train-samples": ("data.max_train_samples", int),
    "--max-eval-samples": ("data.max_eval_samples", int),
    "--max-length": ("data.max_length", int),
    "--train-file": ("data.train_file", str),
    "--validation-file": ("data.validation_file", str),
    "--text-column": ("data.text_column", str),
    "--text-pair-column": ("data.text_pair_column", str),
    "--label-column": ("data.label_column", str),
    "--doc-stride": ("data.doc_stride", int),
    "--max-answer-length": ("data.max_answer_length", int),
    "--max-new-tokens": ("data.max_new_tokens", int),
    "--num-beams": ("data.num_beams", int),
    "--model": ("model.name", str),
    "--adapter": ("model.adapter", str),
    "--library": ("model.library", str),
    "--width": ("model.width", int),
    "--large-sparse": ("model.large_sparse", float),
    "--pruner": ("prune.method", str),
    "--sparsity": ("prune.sparsity", float),
    "--scope": ("prune.scope", str),
    "--scoring-examples": ("prune.num_examples", int),
    "--epochs": ("train.epochs", int),
    "--batch-size": ("train.batch_size", int),
    "--eval-batch-size": ("train.eval_batch_size", int),
    "--lr": ("train.lr", float),
    "--lr-density-exponent": ("train.lr_density_exponent", float),
    "--weight-decay": ("train.weight_decay", float),
    "--warmup-ratio": ("train.warmup_ratio", float),
    "--grad-accum": ("train.grad_accum", int),
    "--mixed-precision": ("train.mixed_precision", str),
    "--max-grad-norm": ("train.max_grad_norm", float),
    "--seed": ("train.seed", int),
    "--select": ("train.select", str),
    "--checkpoint-every": ("train.checkpoint_every", int),
    "--report-to": ("train.report_to", str),
    "--output": ("output", str),
}
_EXTRA_HELP = {
    "prune.method": "'none' (dense adapter; the default), random, magnitude, snip, grasp, synflow.",
    "prune.sparsity": f"Fraction of adapter weights set to zero; default {DEFAULT_SPARSITY}, or 1 - 1/K with "
    "--large-sparse K.",
    "prune.seed": "Default: the training seed.",
}


def _help(key: str) -> str:
    if key in _EXTRA_HELP:
        return _EXTRA_HELP[key]
    section, _, name = key.rpartition(".")
    cls = {
        "model": ModelConfig,
        "data": DataConfig,
        "prune": SparsityConfig,
        "train": TrainConfig,
        "": RunConfig,
    }[section]
    field = next(f for f in fields(cls) if f.name == name)
    has_default = field.default is not MISSING and field.default is not None
    return field.metadata.get("help", "") + (f" Default: {field.default}." if has_default else "")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (sections model, data, prune, train).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override any config key, e.g. --set train.epochs=3 (repeatable; applied last).",
    )
    for flag, (key, kind) in RUN_FLAGS.items():
        parser.add_argument(
            flag,
            dest=key,
            type=kind,
            default=None,
            metavar=flag[2:].upper().replace("-", "_"),
            help=f"{_help(key)} [{key}]",
        )
    parser.add_argument(
        "--modules-to-save",
        dest="model.modules_to_save",
        nargs="+",
        default=None,
        metavar="MODULE",
        help=f"{_help('model.modules_to_save')} [model.modules_to_save]",
    )
    parser.add_argument(
        "--fuse",
        dest="model.fuse",
        nargs="+",
        default=None,
        metavar="RUN",
        help=f"{_help('model.fuse')} [model.fuse]",
    )
    parser.add_argument(
        "--full-finetune",
        action="store_true",
        help="Baseline: train every weight, no adapter and no pruning (lr default 5e-5).",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace a finished run in the output folder (only once the new run has finished).",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bar or epoch lines.")
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="Continue the interrupted run in folder RUN (its --output) from its last checkpoint "
        "with its own config; other options must not change that config.",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparseadapter",
        description="Prune adapters at initialization and fine-tune them on GLUE.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train",
        help="Train one run (adapter + pruner + sparsity) and write its folder.",
        description="Train one run and write its folder. Each flag sets the config key shown in "
        "brackets; precedence: defaults < --config file < flags < --set. See docs/cli.md.",
    )
    _add_run_flags(train)
    evaluate = commands.add_parser("eval", help="Reload a finished run and re-score its dev set.")
    evaluate.add_argument("run", help="A run folder written by `sparseadapter train`.")
    evaluate.add_argument("--data-dir", help="GLUE TSV folder, if not the run's own.")
    evaluate.add_argument(
        "--checkpoint",
        help="Score the weights of this sparse checkpoint (e.g. `export --precision int4`) "
        "instead of the run's adapter/.",
    )
    sweep = commands.add_parser(
        "sweep", help="Run a grid of runs (resumable) and write results tables and a plot."
    )
    sweep.add_argument("spec", help="Sweep YAML: output, base (run config) and grid.")
    sweep.add_argument("--quiet", action="store_true", help="No progress bars or epoch lines.")
    sweep.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Train N runs at once on Ray (local, or the cluster at --address); default 1.",
    )
    sweep.add_argument("--address", help="A running Ray cluster, e.g. ray://head:10001 or auto.")
    export = commands.add_parser("export", help="Export a run's adapter in another format.")
    export.add_argument("run", help="A run folder written by `sparseadapter train`.")
    export.add_argument(
        "--format",
        required=True,
        choices=("peft", "adapterhub", "sparse"),
        help="peft / adapterhub: the library's own dense format; sparse: the compact format.",
    )
    export.add_argument("--output", help="Target folder (default: RUN/export-FORMAT).")
    export.add_argument(
        "--precision",
        help="sparse format only: value precision fp32 (default, lossless), bf16, fp16, int8 or "
        "int4 (int: one scale per 64 values).",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an earlier export (or adapter checkpoint) at the target; a folder of "
        "anything else is never replaced.",
    )
    inspect = commands.add_parser(
        "inspect", help="Print a sparse checkpoint's metadata (configs, format, versions) as JSON."
    )
    inspect.add_argument("checkpoint", help="A sparse checkpoint folder, or a run folder.")
    return parser


def _run_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    from sparseadapter.runconfig import FULL_FINETUNE, resolve

    flags: dict[str, Any] = {
        key: getattr(args, key)
        for key in [*(k for k, _ in RUN_FLAGS.values()), "model.fuse", "model.modules_to_save"]
        if getattr(args, key) is not None
    }
    if args.full_finetune:
        if "model.adapter" in flags:
            raise _UsageError("--full-finetune trains without an adapter: drop --adapter")
        flags["model.adapter"] = FULL_FINETUNE
    return resolve(args.config, flags, args.overrides, base=base)


def train_config(argv: Sequence[str]) -> RunConfig:
    """The run ``sparseadapter train ARGV`` would start (``--resume`` aside), for scripts that
    plan runs before starting them; ConfigError on options the command would refuse."""
    try:
        return _run_config(build_parser().parse_args(["train", *argv]))
    except _UsageError as err:
        raise ConfigError(str(err)) from None


def _train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from sparseadapter.rundir import interrupted_config
    from sparseadapter.summary import summary
    from sparseadapter.train import train

    if args.resume is None:
        config = _run_config(args)
    else:
        for flag, value in (("--output", args.output), ("--overwrite", args.overwrite)):
            if value:
                raise _UsageError(f"--resume RUN continues the run in RUN: drop {flag}")
        config = _run_config(args, base=interrupted_config(args.resume))
    final = train(
        config, overwrite=args.overwrite, quiet=args.quiet, resume=args.resume is not None
    )
    if PartialState().is_main_process:  # one summary under `accelerate launch`
        print(summary(final, config))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from sparseadapter.evaluate import evaluate_run

    result = evaluate_run(args.run, data_dir=args.data_dir, checkpoint=args.checkpoint)
    for split, metrics in result["dev"].items():
        values = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "collapsed")
        print(f"{split}: {values}")
    same = "same as" if result["score"] == result["saved_score"] else "DIFFERS from"
    print(
        f"dev {result['main_metric']} = {result['score']:.4f} "
        f"({same} final.json: {result['saved_score']:.4f})"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from sparseadapter.sweep import run_sweep

    result = run_sweep(args.spec, quiet=args.quiet, workers=args.workers, address=args.address)
    print(result.table_markdown)
    print(f"results: {', '.join(str(p) for p in result.files)}")
    if result.failed:
        for name, message in result.failed.items():
            print(f"failed: {name}: {message}", file=sys.stderr)
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from sparseadapter.rundir import export_run

    path = export_run(
        args.run, args.format, args.output, overwrite=args.overwrite, precision=args.precision
    )
    print(f"exported {args.format} adapter to {path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from sparseadapter.checkpoint import read_sparse
    from sparseadapter.rundir import ADAPTER_DIR

    path = Path(args.checkpoint)
    if (path / ADAPTER_DIR).is_dir():
        path = path / ADAPTER_DIR
    meta, _ = read_sparse(path)  # verified against its checksum
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "sweep": _sweep,
    "export": _export,
    "inspect": _inspect,
}


def _quiet_libraries(quiet: bool) -> None:
    """Library chatter ("newly initialized: classifier.*", adapter activation notes) is expected;
    imported only once a command runs, so that --help needs no torch or transformers. ``quiet``
    also hides transformers' weight-loading progress bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if quiet:
        hf_logging.disable_progress_bar()
    logging.getLogger("adapters").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparseadapter`` command; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):
        # paths from the shell may hold bytes that are not UTF-8: print them escaped
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(argv)
        _quiet_libraries(getattr(args, "quiet", False))
        return COMMANDS[args.command](args)
    except (_UsageError, SparseAdapterError) as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
