"""SQuAD and XSum cells: dense vs SNIP 40% vs Large-Sparse 4x, per adapter, over seeds.

Each run is one `sparseadapter train` process (several at once with --parallel, e.g. on one GPU);
a finished run is never trained again, so an interrupted benchmark resumes. What a run is
recorded and resumed by: its task, adapter, arm and seed, and the settings every run of an
invocation shares (`settings`: the model, rate, epochs, example counts and --extra options); a
run folder holding a run of another config is refused, not read as this one's (the check
`sparseadapter train` makes). Records go to benchmarks/results/tasks_runs.jsonl (one line per run,
with the device and library versions); the report (tasks.md) compares each arm with the dense
adapter of the same task, adapter and settings: mean difference, Welch 95% interval and p-value,
seeds and failures. All runs of one comparison must come from one device: the report refuses to
mix them.

    python benchmarks/tasks.py --task squad --adapters houlsby lora --parallel 6 --runs-dir /tmp/r
    python benchmarks/tasks.py --report
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
from common import model_label

from sparseadapter.cli import train_config
from sparseadapter.errors import SparseAdapterError
from sparseadapter.rundir import finished_result, interrupted, partial_dir, saved_config_changes
from sparseadapter.tasks import task_class

ARMS = {
    "dense": [],
    "snip40": ["--pruner", "snip", "--sparsity", "0.4"],
    "ls4": ["--large-sparse", "4", "--pruner", "snip"],
}
SHARED = common.ROOT.parent / "shared" / "data"
DEFAULTS = {  # per task: data, training subset, evaluation subset, epochs, lr
    "squad": {"data": SHARED / "squad", "train": 8000, "eval": None, "epochs": 2, "lr": 1e-3},
    "xsum": {"data": SHARED / "xsum", "train": 1000, "eval": None, "epochs": 2, "lr": 1e-3},
}
RECORDS = common.RESULTS / "tasks_runs.jsonl"
JOB_KEYS = ("task", "adapter", "arm", "seed")
REPORT = common.RESULTS / "tasks.md"


def versions() -> dict[str, str]:
    import torch
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__}
    found["transformers"] = transformers.__version__
    for name in ("peft", "adapters"):
        with contextlib.suppress(ImportError):
            found[name] = __import__(name).__version__
    found["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return found


def settings(task: str, args) -> dict:
    """What every run of this invocation shares beside its task: the model (by
    ``common.model_label``), rate, epochs, example counts and extra options."""
    cfg = DEFAULTS[task]
    return {
        "model": model_label(args.model or task_class(task).default_model),
        "lr": args.lr or cfg["lr"],
        "epochs": args.epochs or cfg["epochs"],
        "train": args.train or cfg["train"],
        "eval": args.eval or cfg["eval"],
        "options": args.extra,
    }


NO_OPTIONS = argparse.Namespace(model=None, lr=None, epochs=None, train=None, eval=None, extra="")


def recorded_settings(record: dict) -> dict:
    """A record's settings; records written before they were recorded ran on the defaults
    (MiniLM-L6 for SQuAD, SmolLM2 for XSum: the tasks' default models)."""
    return {k: record.get(k, v) for k, v in settings(record["task"], NO_OPTIONS).items()}


def cell_key(record: dict) -> tuple:
    """What a comparison holds fixed: task, adapter and settings."""
    setting = json.dumps(recorded_settings(record), sort_keys=True)
    return record["task"], record["adapter"], setting


def run_key(record: dict) -> tuple:
    return *cell_key(record), record["arm"], record["seed"]


def run_dir(job: tuple, args) -> Path:
    task, adapter, arm, seed = job
    return args.runs_dir / f"{task}-{adapter}-{arm}-s{seed}"


def command(task: str, adapter: str, arm: str, seed: int, args, output: Path) -> list[str]:
    cfg = DEFAULTS[task]
    cmd = [sys.executable, "-m", "sparseadapter", "train", "--task", task, "--adapter", adapter,
           "--data-dir", str(args.data_dir or cfg["data"]), "--seed", str(seed),
           "--epochs", str(args.epochs or cfg["epochs"]), "--lr", str(args.lr or cfg["lr"]),
           "--lr-density-exponent", "0",
           "--max-train-samples", str(args.train or cfg["train"]), "--output", str(output),
           "--quiet", *ARMS[arm]]  # fmt: skip
    if args.eval or cfg["eval"]:
        cmd += ["--max-eval-samples", str(args.eval or cfg["eval"])]
    if args.model:
        cmd += ["--model", args.model]
    return cmd + shlex.split(args.extra)


def check_run_dir(job: tuple, args) -> None:
    """Refuse a run folder that holds a finished or interrupted run of another config (another
    model or rate, say): its results must not pass for this run's."""
    output = run_dir(job, args)
    try:
        config = train_config(command(*job, args, output)[4:])
        finished_result(config)
        changes = interrupted(config) and saved_config_changes(partial_dir(output), config)
    except SparseAdapterError as err:
        raise SystemExit(f"{err} (or pass another --runs-dir)") from None
    if changes:
        raise SystemExit(
            f"{output} has an interrupted run of another config ({'; '.join(changes)}): "
            "pass another --runs-dir"
        )


def run_one(job: tuple, args, env: dict[str, str]) -> dict:
    task, adapter, arm, seed = job
    output = run_dir(job, args)
    final = output / "final.json"
    record = {"task": task, "adapter": adapter, "arm": arm, "seed": seed}
    record.update(settings(task, args), **env)
    if not final.exists():
        cmd = command(task, adapter, arm, seed, args, output)
        if (output.parent / f"{output.name}.partial" / "checkpoint.pt").exists():
            # an interrupted run continues from its checkpoint, with its own config
            cmd[cmd.index("--output")] = "--resume"
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            return {**record, "failed": (done.stderr.strip().splitlines() or ["?"])[-1]}
    result = json.loads(final.read_text())
    record.update(
        metrics={k: v for k, v in result["dev"][next(iter(result["dev"]))].items()},
        score=result["score"], main_metric=result["main_metric"], examples=result["examples"],
        nonzero=result["parameters"]["nonzero_trainable"], timing=result["timing"],
    )  # fmt: skip
    return record


def run(args) -> None:
    env = versions()
    done = {run_key(r) for r in read_records(args.records) if "failed" not in r}
    setting = settings(args.task, args)
    jobs = [(args.task, a, arm, s) for a in args.adapters for arm in args.arms for s in args.seeds]
    jobs = [j for j in jobs if run_key({**setting, **dict(zip(JOB_KEYS, j))}) not in done]
    for job in jobs:
        check_run_dir(job, args)
    print(f"{len(jobs)} runs on {env['device']}, {args.parallel} at once", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        for record in pool.map(lambda job: run_one(job, args, env), jobs):
            with args.records.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(
                json.dumps(
                    {
                        k: record.get(k)
                        for k in ("task", "adapter", "arm", "seed", "score", "failed")
                    }
                ),
                flush=True,
            )


def read_records(path: Path = RECORDS) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def welch(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """Mean difference a - b, its Welch 95% interval and two-sided p-value."""
    from scipy import stats

    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan"), float("nan")
    test = stats.ttest_ind(a, b, equal_var=False)
    low, high = test.confidence_interval(0.95)
    return diff, low, high, test.pvalue


def report(records: list[dict]) -> str:
    lines = ["# SQuAD and XSum cells", "", "Generated by `benchmarks/tasks.py --report` from "
             "`tasks_runs.jsonl`. Scores x100; difference = arm - dense of the same task and "
             "adapter, Welch 95% interval and two-sided p (not corrected for multiplicity). "
             "XSum: trained on the 1,000 XSum validation pairs of ../shared/data/xsum (one empty "
             "document skipped), scored on its two test files (1,910 distinct pairs); no XSum "
             "training text is used. Learning rates were not tuned for these cells (1e-3 for "
             "every arm): the comparison is fair between arms, not a best-score claim.", ""]  # fmt: skip
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        cells.setdefault(cell_key(r), []).append(r)
    for (task, adapter, _), rows in sorted(cells.items()):
        devices = {r["device"] for r in rows}
        if len(devices) > 1:
            raise SystemExit(f"{task}/{adapter} mixes devices {sorted(devices)}: rerun it on one")
        ok = [r for r in rows if "failed" not in r]
        metric = ok[0]["main_metric"] if ok else "?"
        s = recorded_settings(rows[0])
        lines += [f"## {task}, {adapter} ({metric}; {s['model']}, lr {s['lr']:g}, "
                  f"{s['epochs']} epochs, {s['train']:,} training examples; {devices.pop()}, "
                  f"transformers {rows[0]['transformers']}"
                  + (f"; `{s['options']}`" if s["options"] else "") + ")", "",
                  "| arm | seeds | failed | non-zero weights | " + " | ".join(sorted(ok[0]["metrics"]) if ok else []) + " | diff vs dense | 95% CI | p |",
                  "|---|---|---|---|" + "---|" * (len(ok[0]["metrics"]) if ok else 0) + "---|---|---|"]  # fmt: skip
        dense = [100 * r["score"] for r in ok if r["arm"] == "dense"]
        for arm in ARMS:
            arm_rows = [r for r in ok if r["arm"] == arm]
            if not arm_rows:
                continue
            failed = sum(1 for r in rows if r["arm"] == arm and "failed" in r)
            means = []
            for name in sorted(arm_rows[0]["metrics"]):
                if name == "collapsed":
                    means.append(str(sum(bool(r["metrics"][name]) for r in arm_rows)))
                    continue
                values = [100 * r["metrics"][name] for r in arm_rows]
                sd = (
                    sum((v - sum(values) / len(values)) ** 2 for v in values)
                    / max(len(values) - 1, 1)
                ) ** 0.5
                means.append(f"{sum(values) / len(values):.2f} ± {sd:.2f}")
            scores = [100 * r["score"] for r in arm_rows]
            if arm == "dense" or not dense:
                diff = ci = p = "-"
            else:
                d, low, high, pv = welch(scores, dense)
                diff, ci, p = f"{d:+.2f}", f"[{low:+.2f}, {high:+.2f}]", f"{pv:.3f}"
            nonzero = sorted({r["nonzero"] for r in arm_rows})
            lines.append(
                f"| {arm} | {len(arm_rows)} | {failed} | {nonzero[0]:,} | "
                + " | ".join(means)
                + f" | {diff} | {ci} | {p} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--task", choices=sorted(DEFAULTS))
    p.add_argument("--adapters", nargs="+", default=["lora"])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--train", type=int)
    p.add_argument("--eval", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--model")
    p.add_argument("--extra", default="", help="More `sparseadapter train` options for every run.")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/benchmark-tasks"))
    p.add_argument("--records", type=Path, default=RECORDS, help="The records file to append to.")
    p.add_argument("--report", action="store_true", help="Write tasks.md from the records.")
    args = p.parse_args()
    if args.task:
        run(args)
    if args.report or (args.task and args.records == RECORDS):
        common.write_text(REPORT, report(read_records()) + "\n")
        print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
