"""Quality benchmark v2: the paper's claims as statistical tests, against same-budget baselines.

    python benchmarks/quality_v2.py --tasks mrpc --adapters houlsby \
        --arms dense snip40 snip-random40 snip-rowshuffle40 narrow40      # run (resumable), report
    python benchmarks/quality_v2.py --report-only [--readme]              # rebuild quality_v2.md
    python benchmarks/quality_v2.py --quick --runs-dir /tmp/q2            # a minutes-long smoke run

Protocol ``v2-validation-split`` (``quality_v2_grid``): a fixed, seeded 10% of each task's training
set is held out as validation (``quality_v2_data.carve``); every arm trains on the rest at each
learning rate of ``LRS``, with its best epoch chosen on validation; the real dev set is scored once
per run afterwards (``sparseadapter.evaluate.evaluate_run``, what ``sparseadapter eval RUN
--data-dir`` runs). The report picks each arm's rate by its mean validation score over seeds and
tests the dev scores at that rate. Seeds per task and adapter follow from the v1 seed variances
(``seeds_for``: a standard error of a difference <= 0.5 points, at most ``MAX_SEEDS``).

Every finished run is appended to ``benchmarks/results/quality_v2_runs.jsonl`` with its device and
library versions; a run recorded there is never trained again, and an interrupted run resumes
from its checkpoint. ``--workers N`` trains N runs at once, worker i taking every N-th run of the
plan (on a GPU all share it; on a CPU each gets its share of the threads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common
from common import RESULTS, ROOT, library_versions, model_label
from quality_v2_baselines import register
from quality_v2_grid import (
    ARMS,
    DEFAULT_MODEL,
    LRS,
    MAX_SEEDS,
    PROTOCOL,
    planned,
    record_path,
    recorded_settings,
    run_config,
    run_name,
    run_settings,
)

from sparseadapter.evaluate import evaluate_run
from sparseadapter.rundir import finished_result, interrupted
from sparseadapter.sweep import where_trained
from sparseadapter.train import train

V1_RECORDS = RESULTS / "quality_runs.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", default=["mrpc"])
    p.add_argument("--adapters", nargs="+", default=["houlsby"])
    p.add_argument("--arms", nargs="+", default=["dense", "snip40"], choices=list(ARMS))
    p.add_argument("--lrs", nargs="+", type=float, default=LRS)
    p.add_argument("--seeds", type=int, default=None, help="per arm (default: from v1 variances)")
    p.add_argument("--max-seeds", type=int, default=MAX_SEEDS)
    p.add_argument("--epochs", type=int, default=None, help="default: v1's per task")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="an alias (minilm, mpnet-base), a local folder or a hub id; its runs, records "
        "and report rows are named by model_label (a folder by its name)",
    )
    p.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="train.mixed_precision of every run (bf16 on a GPU: benchmarks/gpu.sh)",
    )
    common.add_data_dir(p)
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "quality_v2")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--records", type=Path, default=None)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no run that would end past this (judged by the longest run so far)",
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--readme",
        action="store_true",
        help="also rewrite the README's verdict block from the report",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: RTE, LoRA, dense and SNIP 40%%, 2 seeds, 2 lrs, 64 examples, 1 epoch",
    )
    args = p.parse_args(argv)
    if args.seeds is not None and args.seeds < 2:
        p.error(f"--seeds {args.seeds}: a test needs at least 2 seeds per arm; use 2 or more")
    if any(lr <= 0 for lr in args.lrs):
        p.error("--lrs must be positive learning rates, e.g. 3e-4 1e-3 3e-3")
    args.records = record_path(args)
    args.model_label = model_label(args.model)
    if args.quick:
        args.tasks, args.adapters, args.arms = ["rte"], ["lora"], ["dense", "snip40"]
        args.seeds, args.lrs, args.epochs = 2, [1e-3, 3e-3], 1
        args.max_length, args.max_train_samples, args.max_eval_samples = 64, 64, 64
        args.records = args.runs_dir / "quality_v2_runs.jsonl"
    return args


def load_records(path: Path) -> dict[tuple[str, str], dict]:
    """The recorded v2 runs, by (device, run name): one run's records of two devices both stay
    (the report compares within one device and model). Records written before the model was
    recorded were all trained on ``DEFAULT_MODEL``."""
    if not path.is_file():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("protocol") == PROTOCOL:
                r.setdefault("model", DEFAULT_MODEL)
                records[r["device"], r["run"]] = r
    return records


def v1_records() -> list[dict]:
    if not V1_RECORDS.is_file():
        return []
    lines = V1_RECORDS.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if r.get("protocol")]


def append_record(path: Path, record: dict) -> None:
    """One line, written with one ``write`` on a file opened for appending: lines of workers
    that finish together do not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def train_and_score(task, adapter, arm, lr, seed, args) -> dict:
    """Train one run on the carved split (or pick up its finished or interrupted run), score
    the real dev set once, and return its record."""
    run = run_config(task, adapter, arm, lr, seed, args)
    start = time.monotonic()
    final = finished_result(run)
    resumed = final is not None or interrupted(run)
    if final is None:
        final = train(run, quiet=True, resume=resumed)
    scored = evaluate_run(run.output, data_dir=str(args.data_dir))
    dev = next(iter(scored["dev"].values()))
    return {
        "run": Path(run.output).name,
        "protocol": PROTOCOL,
        "model": args.model_label,
        "task": task,
        "adapter": adapter,
        "arm": arm.name,
        "pruner": arm.pruner,
        "sparsity": arm.sparsity,
        "large_sparse": arm.large_sparse,
        "width": run.model.width,
        "lr": lr,
        "seed": seed,
        **run_settings(task, args),
        "selected_epoch": final["selected_epoch"],
        "metric": scored["main_metric"],
        "validation": final["score"],
        "score": scored["score"],
        "dev": {k: v for k, v in dev.items() if k != "collapsed"},
        "collapsed": bool(dev.get("collapsed", False)),
        "examples": final["examples"],
        "nonzero_trainable": final["parameters"]["nonzero_trainable"],
        "trainable": final["parameters"]["trainable"],
        "seconds": round(time.monotonic() - start, 1),
        "resumed": resumed,
        **where_trained(),
        "versions": library_versions(),
    }


def check_settings(args: argparse.Namespace, plan: list, device: str) -> None:
    """Stop before training a grid whose runs would share a comparison with recorded runs of
    other settings (epochs, max length, caps, precision: run names do not say them)."""
    records = load_records(args.records).values()
    for task, adapter in sorted({(task, adapter) for task, adapter, *_ in plan}):
        wanted = run_settings(task, args)
        for r in records:
            same_cell = (r["device"], r["model"], r["task"], r["adapter"]) == (
                device,
                args.model_label,
                task,
                adapter,
            )
            if same_cell and recorded_settings(r) != wanted:
                raise SystemExit(
                    f"{args.records} holds {task} {adapter} runs of {args.model_label} on "
                    f"{device} trained with {recorded_settings(r)}, not {wanted}: pass the same "
                    "options, or --records and --runs-dir for a grid of its own"
                )


def run_all(args: argparse.Namespace) -> None:
    register()
    plan = planned(args, v1_records())
    check_settings(args, plan, where_trained()["device"])
    if args.worker_index is not None:
        plan = plan[args.worker_index :: args.workers]
    start, longest = time.monotonic(), 0.0
    device = where_trained()["device"]
    for i, (task, adapter, arm, lr, seed) in enumerate(plan):
        name = run_name(args.model_label, task, adapter, arm, lr, seed)
        if (device, name) in load_records(args.records):
            continue
        if args.max_minutes and time.monotonic() - start + longest > 60 * args.max_minutes:
            print(f"time budget spent; {len(plan) - i} runs of this worker left", flush=True)
            return
        print(f"[{i + 1}/{len(plan)}] {name}", flush=True)
        record = train_and_score(task, adapter, arm, lr, seed, args)
        append_record(args.records, record)
        longest = max(longest, record["seconds"])
        print(f"    {record['metric']} = {record['score']:.4f} in {record['seconds']}s", flush=True)


def run_workers(args: argparse.Namespace, argv: list[str]) -> None:
    """``args.workers`` copies of this script, worker i taking every N-th planned run."""
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    script = str(Path(__file__).resolve())
    workers = [
        subprocess.Popen([sys.executable, script, *argv, "--worker-index", str(i)], env=env)
        for i in range(args.workers)
    ]
    failed = [w.args for w in workers if w.wait() != 0]
    if failed:
        raise SystemExit(f"{len(failed)} of {args.workers} workers failed")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker_index is not None or (args.workers == 1 and not args.report_only):
        run_all(args)
        if args.worker_index is not None:
            return 0
    elif not args.report_only:
        run_workers(args, argv)
    from quality_v2_report import report

    print(f"wrote {report(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
