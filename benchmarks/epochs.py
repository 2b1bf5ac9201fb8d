"""How many epochs each task needs: the dense adapter's dev score after every epoch.

The quality benchmark trains each task for a fixed number of epochs (``EPOCHS`` in
``quality_grid.py``). This script is the evidence behind those numbers: it trains the dense Houlsby
adapter (lr 1e-3; otherwise the quality protocol: length-grouped batches of 32, max length 128)
for ``--epochs`` epochs on each task and records the dev score after each epoch. The linear
schedule decays over all of them, so the score after epoch k is a guide to a k-epoch run, not
the same run. A run folder found finished is read, not trained again; an interrupted one resumes;
each call adds its rows to ``epochs.json`` (replacing those of the same task and seed).

    python benchmarks/epochs.py                           # writes results/epochs.{json,md}
    python benchmarks/epochs.py --tasks cola --seeds 1 2  # a part of it
    python benchmarks/epochs.py --quick --runs-dir /tmp/e # RTE, 64 examples, 2 epochs, print only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common
from quality_grid import EPOCHS, TASKS, base_config

from sparseadapter.runconfig import RunConfig
from sparseadapter.rundir import EPOCHS_FILE, finished_result, interrupted
from sparseadapter.train import train


def run_config(task: str, seed: int, args: argparse.Namespace) -> RunConfig:
    """The quality benchmark's settings (``base_config``) for the dense Houlsby adapter."""
    quick = args.max_train_samples is not None
    protocol = argparse.Namespace(
        model="minilm",
        data_dir=args.data_dir,
        max_train_samples=args.max_train_samples,
        max_eval_samples=64 if quick else None,
        max_length=128,
        epochs=args.epochs,
    )
    config = base_config(task, protocol)
    config["model"]["adapter"] = "houlsby"
    config["train"].update(lr=1e-3, seed=seed)
    config["output"] = str(args.runs_dir / f"{task}-houlsby-dense-e{args.epochs}-s{seed}")
    return RunConfig.from_dict(config)


def per_epoch(run: RunConfig) -> tuple[str, list[float]]:
    """The run's main metric and its dev score after each epoch; trains the run first unless it
    is finished."""
    output = Path(run.output)
    final = finished_result(run) or train(run, quiet=True, resume=interrupted(run))
    lines = (output / EPOCHS_FILE).read_text(encoding="utf-8").splitlines()
    return final["main_metric"], [json.loads(line)["score"] for line in lines if line.strip()]


def merged(path: Path, rows: list[dict]) -> list[dict]:
    """The rows recorded in ``path`` with ``rows`` added or replacing those of the same task and
    seed, in task order: the results grow a part at a time."""
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    by_key = {(r["task"], r["seed"]): r for r in [*old, *rows]}
    return sorted(by_key.values(), key=lambda r: (list(TASKS).index(r["task"]), r["seed"]))


def markdown(rows: list[dict]) -> str:
    """Scores x100 per epoch; ``quality`` is the epoch count the quality benchmark uses now."""
    epochs = max(len(r["scores"]) for r in rows)
    header = ["task", "metric", "seed", *[f"epoch {e}" for e in range(1, epochs + 1)], "quality"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        scores = [f"{100 * s:.1f}" for s in r["scores"]] + [""] * (epochs - len(r["scores"]))
        cells = [r["task"], r["metric"], str(r["seed"]), *scores, str(EPOCHS[r["task"]])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola"], choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--max-train-samples", type=int, default=None)
    common.add_data_dir(p)
    p.add_argument("--runs-dir", type=Path, default=common.ROOT / "runs" / "epochs")
    p.add_argument("--results-dir", type=Path, default=common.RESULTS)
    p.add_argument("--quick", action="store_true", help="RTE, 64 examples, 2 epochs; print only")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.epochs, args.max_train_samples = ["rte"], [1], 2, 64
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            metric, scores = per_epoch(run_config(task, seed, args))
            rows.append({"task": task, "metric": metric, "seed": seed, "scores": scores})
    if not args.quick:
        rows = merged(args.results_dir / "epochs.json", rows)
        common.write_json(args.results_dir / "epochs.json", rows)
    table = markdown(rows)
    print(table)
    if not args.quick:
        common.write_text(args.results_dir / "epochs.md", table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
