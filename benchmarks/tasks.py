"""SQuAD and XSum cells: dense vs SNIP 40% vs Large-Sparse 4x, per adapter, over seeds.

Each run is one `sparseadapter train` process (several at once with --parallel, e.g. on one GPU);
a finished run (its final.json exists) is never trained again, so an interrupted benchmark
resumes. Records go to benchmarks/results/tasks_runs.jsonl (one line per run, with the device
and library versions); the report (tasks.md) compares each arm with the dense adapter of the
same task and adapter: mean difference, Welch 95% interval and p-value, seeds and failures.
All runs of one comparison must come from one device: the report refuses to mix them.

    python benchmarks/tasks.py --task squad --adapters houlsby lora --parallel 6 --runs-dir /tmp/r
    python benchmarks/tasks.py --report
"""

from __future__ import annotations

import contextlib
import json
import platform
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common

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


def run_one(job: tuple, args, env: dict[str, str]) -> dict:
    task, adapter, arm, seed = job
    output = args.runs_dir / f"{task}-{adapter}-{arm}-s{seed}"
    final = output / "final.json"
    record = {"task": task, "adapter": adapter, "arm": arm, "seed": seed, **env}
    if args.extra:
        record["options"] = args.extra
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
    done = {
        (r["task"], r["adapter"], r["arm"], r["seed"])
        for r in read_records(args.records)
        if "failed" not in r
    }
    jobs = [(args.task, a, arm, s) for a in args.adapters for arm in args.arms for s in args.seeds]
    jobs = [j for j in jobs if j not in done]
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
    cells = sorted({(r["task"], r["adapter"]) for r in records})
    for task, adapter in cells:
        rows = [r for r in records if (r["task"], r["adapter"]) == (task, adapter)]
        devices = {r["device"] for r in rows}
        if len(devices) > 1:
            raise SystemExit(f"{task}/{adapter} mixes devices {sorted(devices)}: rerun it on one")
        ok = [r for r in rows if "failed" not in r]
        metric = ok[0]["main_metric"] if ok else "?"
        options = sorted({r.get("options", "") for r in rows})
        lines += [f"## {task}, {adapter} ({metric}; {devices.pop()}, "
                  f"transformers {rows[0]['transformers']}"
                  + "".join(f"; `{o}`" for o in options if o) + ")", "",
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
