"""Sweeps: a grid of runs (adapters x pruners x sparsities x seeds, ...) with results tables.

A sweep file (YAML)::

    output: runs/sweep_rte          # every run gets a subfolder named after its options
    base: rte_houlsby.yaml          # a run config file (relative to this file) or a mapping
    set: [train.epochs=3]           # optional overrides of the base
    grid:                           # each key: a list of values; the runs are the product
      adapter: [houlsby, lora]      # short keys: adapter, pruner, sparsity, large_sparse, seed
      pruner: [none, random, snip]
      sparsity: [0.4, 0.8]
      seed: [1, 2, 3]
      train.lr: [1.0e-3]            # or any section.key

Combinations that mean the same run are merged: ``pruner: none`` (dense) and ``adapter: full``
(full fine-tuning) ignore the sparsity, and Large-Sparse K fixes it at 1 - 1/K. Large-Sparse
without a pruner is skipped. Runs whose folder holds ``final.json`` are skipped and a run
killed midway resumes from its last checkpoint, so an interrupted sweep continues where it
stopped. A run that fails with a :class:`SparseAdapterError` is recorded and the sweep goes on;
so is a run whose folder holds a finished run of another config (say the sweep file's epochs
changed since): its old results are never reported as the new run's. A run that fails for any
other reason is tried once more, then recorded as failed.

``workers`` > 1 or an ``address`` train the runs on Ray (:mod:`sparseadapter.parallel`), several
at once; each run is the same function call as in a sequential sweep, so its results are too.

Outputs in the sweep folder: ``runs.csv`` (one row per run), ``results.csv`` and ``results.md``
(mean ± std over seeds per cell) and ``sparsity.png`` (score vs sparsity, a line per pruner, a
panel per adapter; the dense adapter and full fine-tuning as horizontal lines).
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import itertools
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseadapter.errors import ConfigError, SparseAdapterError
from sparseadapter.files import exclusive, write_bytes, write_error
from sparseadapter.parallel import Executor, SequentialExecutor, make_executor
from sparseadapter.runconfig import (
    FULL_FINETUNE,
    NO_PRUNING,
    RunConfig,
    changed_keys,
    config_section,
    drop_implied,
    load_yaml,
    set_key,
    set_value,
)
from sparseadapter.rundir import finished_result, interrupted
from sparseadapter.train import train

GRID_ALIASES = {
    "adapter": "model.adapter",
    "pruner": "prune.method",
    "sparsity": "prune.sparsity",
    "large_sparse": "model.large_sparse",
    "seed": "train.seed",
}
CELL_KEYS = ("task", "adapter", "pruner", "sparsity", "large_sparse")
RUNS_FILE, RESULTS_CSV, RESULTS_MD, PLOT_FILE = (
    "runs.csv",
    "results.csv",
    "results.md",
    "sparsity.png",
)


@dataclass
class SweepSpec:
    """A sweep: where it writes, the base run config (nested dict) and the grid."""

    output: Path
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)

    def extra_keys(self) -> list[str]:
        """Grid keys beyond the standard ones (e.g. train.lr): extra columns of the tables."""
        return [k for k in self.grid if k not in GRID_ALIASES and k not in GRID_ALIASES.values()]

    def runs(self) -> list[RunConfig]:
        """The distinct runs of the grid, in grid order, each with its own output folder."""
        keys = [GRID_ALIASES.get(k, k) for k in self.grid]
        runs: dict[str, RunConfig] = {}
        for values in itertools.product(*self.grid.values()):
            data = copy.deepcopy(self.base)
            for key, value in zip(keys, values):
                set_key(data, key, value)
            config = _normalized(data)
            if config is None:
                continue
            extra = {key: _config_value(config, key) for key in self.extra_keys()}
            name = config.run_name() + "".join(
                f"-{key.rsplit('.', 1)[-1]}{value}"
                for key, value in extra.items()
                if value is not None  # e.g. prune.scope of a dense run: the same run
            )
            name = re.sub(r"[^\w.+-]", "_", name)  # e.g. a model path as a grid value
            config.output = str(self.output / name)
            differences = changed_keys(runs.setdefault(name, config), config)
            if differences:
                raise ConfigError(
                    f"two grid points give the run folder name {name!r} "
                    f"({'; '.join(differences)}): folder names keep letters, digits and . + - "
                    "only; make the grid values differ in those"
                )
        if not runs:
            raise ConfigError("the sweep grid gives no runs; add values to its grid lists")
        return list(runs.values())


def _config_value(config: RunConfig, key: str) -> Any:
    """The run's value of a grid key; None where the run has no such option (a dense run's
    ``prune.*``, full fine-tuning's ``model.width``)."""
    section, _, name = key.partition(".")
    value = config.to_dict()[section]
    return value.get(name) if name else value


def _normalized(data: dict[str, Any]) -> RunConfig | None:
    """The run a grid point means, or None for Large-Sparse without a pruner (no such run)."""
    drop_implied(data)
    model, prune = config_section(data, "model"), config_section(data, "prune")
    if prune.get("method", NO_PRUNING) == NO_PRUNING and model.get("large_sparse", 1) != 1:
        return None
    return RunConfig.from_dict(data)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (see the module docstring)."""
    path = Path(path)
    data = load_yaml(path)
    unknown = set(data) - {"output", "base", "set", "grid"}
    if unknown:
        raise ConfigError(
            f"unknown sweep key(s) {', '.join(sorted(unknown))} in {path}; "
            "valid: output, base, set, grid"
        )
    base = data.get("base") or {}
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        base = load_yaml(base_path)
    if not isinstance(base, dict):
        raise ConfigError(f"sweep base in {path} must be a run config file or a mapping")
    assignments = data.get("set") or []
    for assignment in [assignments] if isinstance(assignments, str) else assignments:
        set_value(base, str(assignment))
    grid = data.get("grid")
    if not grid:
        raise ConfigError(
            f"the sweep in {path} has no grid: add one, e.g. grid: {{pruner: [snip, random]}} "
            "(for a single run use `sparseadapter train --config`)"
        )
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(
            f"the sweep grid in {path} must map keys to non-empty lists, e.g. pruner: [snip, random]"
        )
    output = data.get("output") or f"runs/{path.stem}"
    return SweepSpec(Path(output), base, dict(grid))


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    files: list[Path]
    table_markdown: str


def run_sweep(
    spec: SweepSpec | str | Path,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    workers: int = 1,
    address: str | None = None,
) -> SweepResult:
    """Train every unfinished run of the sweep, then write its tables and plot.

    ``workers``: runs trained at once, on Ray (local unless ``address`` names a running
    cluster); without Ray installed, one at a time."""
    spec = spec if isinstance(spec, SweepSpec) else load_sweep(spec)
    configs = spec.runs()
    executor = make_executor(workers, address, echo)
    try:
        with exclusive(spec.output, "sweep"):
            return _run_sweep(spec, configs, quiet, echo, executor)
    finally:
        executor.close()


def train_run(config: RunConfig, quiet: bool = True) -> dict[str, Any]:
    """Train (or resume) one run where this is called, a Ray worker or this process: its
    ``final.json`` content plus ``seconds`` (wall time here), ``resumed``, and the ``device``
    ("cpu" or the GPU's name) and ``torch`` version it trained with."""
    start = time.monotonic()
    resumed = interrupted(config)
    final = train(config, quiet=quiet, resume=resumed)
    seconds = round(time.monotonic() - start, 1)
    return {"final": final, "seconds": seconds, "resumed": resumed, **where_trained()}


def where_trained() -> dict[str, str]:
    """The device ("cpu" or the GPU's name) and torch version that runs train with here."""
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": device, "torch": torch.__version__.split("+")[0]}


def _run_sweep(
    spec: SweepSpec,
    configs: list[RunConfig],
    quiet: bool,
    echo: Callable[[str], None],
    executor: Executor,
) -> SweepResult:
    ran, skipped, failed = [], [], {}
    number = {config.output: i for i, config in enumerate(configs, 1)}

    def tag(config: RunConfig) -> str:
        return f"[{number[config.output]}/{len(configs)}] {Path(config.output).name}"

    todo = []
    for config in configs:
        try:
            if finished_result(config) is not None:
                skipped.append(Path(config.output).name)
                echo(f"{tag(config)}: finished before, skipped")
                continue
        except SparseAdapterError as err:
            failed[Path(config.output).name] = str(err)
            echo(f"{tag(config)} failed: {err}")
            continue
        todo.append(config)
    if todo and not isinstance(executor, SequentialExecutor):
        echo(f"training {len(todo)} runs {executor.description}")
    for outcome in executor.map(
        functools.partial(train_run, quiet=quiet), todo, started=lambda c: echo(tag(c))
    ):
        config, name = outcome.item, Path(outcome.item.output).name
        if not outcome.ok:
            tries = f" (after {outcome.attempts} attempts)" if outcome.attempts > 1 else ""
            failed[name] = outcome.error + tries
            echo(f"{tag(config)} failed{tries}: {outcome.error}")
            continue
        ran.append(name)
        final = outcome.value["final"]
        echo(f"{tag(config)}: dev {final['main_metric']} = {final['score']:.4f}")
    if todo:
        echo(f"done: {len(ran)} trained, {len(skipped)} skipped, {len(failed)} failed")
    order = {Path(c.output).name: i for i, c in enumerate(configs)}
    ran.sort(key=order.get)
    rows = collect_rows(configs, spec.extra_keys())
    cells = aggregate(rows, spec.extra_keys())
    try:
        spec.output.mkdir(parents=True, exist_ok=True)
        files = [
            _write_csv(spec.output / RUNS_FILE, rows),
            _write_csv(spec.output / RESULTS_CSV, cells),
        ]
        markdown = markdown_table(cells, spec.extra_keys())
        write_bytes(spec.output / RESULTS_MD, (markdown + "\n").encode())
    except OSError as err:
        raise write_error(spec.output, err) from None
    files.append(spec.output / RESULTS_MD)
    if cells:
        files.append(plot(cells, spec.output / PLOT_FILE, spec.extra_keys()))
    return SweepResult(rows, cells, ran, skipped, failed, files, markdown)


def collect_rows(configs: list[RunConfig], extra_keys: list[str] = ()) -> list[dict[str, Any]]:
    """One row per finished run: its options, dev metrics, parameter counts and timing."""
    rows = []
    for config in configs:
        try:
            final = finished_result(config)
        except ConfigError:  # a run of another config in its folder: run_sweep reports it
            continue
        if final is None:
            continue
        dev = final["dev"][next(iter(final["dev"]))]
        rows.append(
            {
                "run": Path(config.output).name,
                "task": config.data.task,
                "adapter": config.model.adapter,
                "pruner": config.pruner,
                "sparsity": config.prune.sparsity if config.prune else 0.0,
                "large_sparse": config.model.large_sparse,
                **{key: _config_value(config, key) for key in extra_keys},
                "seed": config.train.seed,
                "metric": final["main_metric"],
                "score": final["score"],
                **{k: v for k, v in dev.items() if k != "collapsed"},
                "collapsed": dev.get("collapsed", False),
                "trainable": final["parameters"]["trainable"],
                "nonzero_trainable": final["parameters"]["nonzero_trainable"],
                "prune_seconds": final["timing"]["prune_seconds"],
                "train_seconds": final["timing"]["train_seconds"],
            }
        )
    return rows


def aggregate(rows: list[dict[str, Any]], extra_keys: list[str] = ()) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of the score over seeds, per cell."""
    cell_keys = [*CELL_KEYS, *extra_keys]
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(row[k] for k in cell_keys), []).append(row)
    out = []
    for key, group in cells.items():
        scores = [r["score"] for r in group]
        out.append(
            {
                **dict(zip(cell_keys, key)),
                "metric": group[0]["metric"],
                "seeds": len(group),
                "mean": statistics.fmean(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "collapsed": sum(bool(r["collapsed"]) for r in group),
                "nonzero_trainable": round(statistics.fmean(r["nonzero_trainable"] for r in group)),
            }
        )
    return out


def markdown_table(cells: list[dict[str, Any]], extra_keys: list[str] = ()) -> str:
    """The cells as a markdown table; scores x100 as mean ± std over seeds."""
    columns = [*CELL_KEYS, *extra_keys, "seeds", "score (mean ± std)", "non-zero trainable"]
    lines = [
        "| " + " | ".join([*columns, "collapsed runs"]) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for c in cells:
        values = [f"{c[k]:g}" if isinstance(c[k], float) else str(c[k]) for k in columns[:-3]]
        values += [
            str(c["seeds"]),
            f"{c['metric']} {100 * c['mean']:.2f} ± {100 * c['std']:.2f}",
            f"{c['nonzero_trainable']:,}",
            str(c["collapsed"]),
        ]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, text.getvalue().encode())
    return path


def plot(cells: list[dict[str, Any]], path: Path, extra_keys: list[str] = ()) -> Path:
    """Score vs sparsity: a panel per adapter, a line per pruner (Large-Sparse as its own line),
    the dense adapter as a dashed and full fine-tuning as a dotted horizontal line."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "the sweep's tables are written, but its plot needs matplotlib: "
            "pip install 'sparseadapter[plot]' and rerun the sweep (finished runs are skipped)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adapters = list(dict.fromkeys(c["adapter"] for c in cells if c["adapter"] != FULL_FINETUNE))
    full = [c for c in cells if c["adapter"] == FULL_FINETUNE]
    panels = adapters or [FULL_FINETUNE]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False, sharey=True
    )
    for ax, adapter in zip(axes[0], panels):
        mine = [c for c in cells if c["adapter"] == adapter]
        lines: dict[str, list[dict[str, Any]]] = {}
        for c in mine:
            if c["pruner"] == NO_PRUNING:
                ax.axhline(100 * c["mean"], color="black", linestyle="--", label="dense adapter")
                continue
            label = c["pruner"] + (" (Large-Sparse)" if c["large_sparse"] != 1 else "")
            label += "".join(f" {k.rsplit('.', 1)[-1]}={c[k]}" for k in extra_keys)
            lines.setdefault(label, []).append(c)
        for label, points in lines.items():
            points.sort(key=lambda c: c["sparsity"])
            ax.errorbar(
                [c["sparsity"] for c in points],
                [100 * c["mean"] for c in points],
                yerr=[100 * c["std"] for c in points],
                marker="o",
                capsize=3,
                label=label,
            )
        for c in full:
            ax.axhline(100 * c["mean"], color="gray", linestyle=":", label="full fine-tuning")
        ax.set_title(f"{cells[0]['task']}: {adapter}")
        ax.set_xlabel("sparsity")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel(f"dev {cells[0]['metric']} (x100)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
