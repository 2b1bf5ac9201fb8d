"""AdapterFusion benchmark: does fusing trained task adapters help a new task on this model?

    python benchmarks/fusion.py                        # run (resumable), then report
    python benchmarks/fusion.py --report-only          # rebuild fusion.md from the records
    python benchmarks/fusion.py --targets rte mrpc --seeds 1 2 3

For each target task (RTE by default; MRPC with ``--targets``), the Houlsby task adapters of the
other tasks of SST-2, MRPC/RTE, CoLA and STS-B are trained once (seed 1), dense and SNIP-40%,
then fused for the target: fusion over the dense task adapters or over the SNIP-40% ones, the
fusion layer dense or SNIP-pruned to 40%, against the single-task Houlsby adapter on the target
(dense and SNIP-40%), every target run over ``--seeds``. Training sets are capped for CPU
(``--source-examples``, ``--train-examples``: 2,000 each); everything else is the CLI's defaults (lr 1e-3, batch 32,
max length 128, best epoch on dev), with length-grouped batches for speed.

Every finished run is appended to ``benchmarks/results/fusion_runs.jsonl`` with its caps
(examples, epochs, dev examples) and never trained again (the grid can be completed a part at
a time); a recorded run of other caps, or a run folder of another config, stops the grid
instead of joining it. Run folders go to ``--runs-dir``.
``fusion.json`` and ``fusion.md`` hold the cells: mean and standard deviation over seeds, and
the difference to the single-task dense adapter.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import common
from common import RESULTS

from sparseadapter.cli import main, train_config
from sparseadapter.errors import SparseAdapterError
from sparseadapter.rundir import finished_result

SOURCE_TASKS = ("sst2", "mrpc", "rte", "cola", "stsb")  # each target fuses the other four
SOURCE_SEED = 1
SPARSITY = "0.4"
RECORDS_FILE = "fusion_runs.jsonl"
# variant -> (description, is fusion, task adapters pruned, own weights pruned)
VARIANTS = {
    "single-dense": ("single-task Houlsby, dense", False, False, False),
    "single-snip40": ("single-task Houlsby, SNIP 40%", False, False, True),
    "fusion-dense/dense": ("fusion of dense task adapters, fusion dense", True, False, False),
    "fusion-dense/snip40": ("fusion of dense task adapters, fusion SNIP 40%", True, False, True),
    "fusion-snip40/dense": ("fusion of SNIP-40% task adapters, fusion dense", True, True, False),
    "fusion-snip40/snip40": ("fusion of SNIP-40% task adapters, fusion SNIP 40%", True, True, True),
}


def parse_args(argv: list[str] | None = None):
    p = common.parser(__doc__)
    common.add_data_dir(p)
    p.add_argument("--targets", nargs="+", default=["rte"], choices=["rte", "mrpc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--source-examples", type=int, default=2000, help="task adapters' training cap")
    p.add_argument("--train-examples", type=int, default=2000, help="target runs' training cap")
    p.add_argument("--eval-examples", type=int, help="dev examples per run (default: all)")
    p.add_argument("--source-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/fusion-benchmark"))
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where records and tables go")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def load_records(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    return {r["key"]: r for r in map(json.loads, filter(None, lines))}


def common_flags(args, task: str, examples: int, epochs: int, seed: int, output: Path) -> list[str]:
    return [
        "train", "--task", task, "--data-dir", str(args.data_dir), "--model", "minilm",
        "--max-train-samples", str(examples), "--epochs", str(epochs),
        "--seed", str(seed), "--checkpoint-every", "0", "--output", str(output), "--quiet",
        "--lr-density-exponent", "0",
        "--set", "data.group_by_length=true",
        *(["--max-eval-samples", str(args.eval_examples)] if args.eval_examples else []),
    ]  # fmt: skip


def caps(examples: int, epochs: int, args) -> dict[str, Any]:
    return {
        "max_train_samples": examples,
        "max_epochs": epochs,
        "max_eval_samples": args.eval_examples,
    }


def pruning(pruned: bool) -> list[str]:
    return ["--pruner", "snip", "--sparsity", SPARSITY] if pruned else []


def recorded_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The caps a recorded run was trained with. Records from before they were written down
    give what the run did: every cap then was below its task's training set, and every run
    trained all its epochs on the full dev set."""
    return {
        "max_train_samples": record.get("max_train_samples", record["train_examples"]),
        "max_epochs": record.get("max_epochs", record["epochs"]),
        "max_eval_samples": record.get("max_eval_samples"),
    }


def train(
    args, key: str, argv: list[str], records: dict[str, dict], extra: dict, settings: dict
) -> dict:
    """Train one run unless it is recorded with the same ``settings``; its record. A record of
    other settings, or a run folder holding a run of another config, stops the benchmark: its
    results must not join this grid's cells."""
    if key in records:
        recorded = recorded_settings(records[key])
        if recorded != settings:
            raise SystemExit(
                f"{key} is recorded with {recorded}, not {settings}: pass the options it was "
                "trained with, or another --results-dir and --runs-dir for a grid of its own"
            )
        return records[key]
    output = Path(argv[argv.index("--output") + 1])
    started = time.perf_counter()
    try:
        final = finished_result(train_config(argv[1:]))
    except SparseAdapterError as err:
        raise SystemExit(f"{err} (or pass another --runs-dir)") from None
    if final is None:
        code = main(argv)
        if code != 0:
            raise SystemExit(f"run {key} failed (exit {code})")
        final = json.loads((output / "final.json").read_text(encoding="utf-8"))
        seconds = time.perf_counter() - started
    else:  # trained before its record was written: the time it took then
        seconds = sum(v for k, v in final["timing"].items() if k.endswith("_seconds"))
    record = {
        "key": key,
        **extra,
        **settings,
        "main_metric": final["main_metric"],
        "score": final["score"],
        "collapsed": any(m.get("collapsed") for m in final["dev"].values()),
        "trainable": final["parameters"]["trainable"],
        "nonzero_trainable": final["parameters"]["nonzero_trainable"],
        "frozen_adapters": final["parameters"].get("frozen_adapters", 0),
        "nonzero_frozen_adapters": final["parameters"].get("nonzero_frozen_adapters", 0),
        "seconds": round(seconds, 1),
        "train_examples": final["examples"]["train"],
        "epochs": len((output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()),
    }
    path = args.results_dir / RECORDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    records[key] = record
    return record


def source_run(args, task: str, pruned: bool, records: dict) -> Path:
    name = f"source-{task}-houlsby-{'snip40' if pruned else 'dense'}"
    output = args.runs_dir / name
    flags = common_flags(args, task, args.source_examples, args.source_epochs, SOURCE_SEED, output)
    argv = [*flags, "--adapter"]
    extra = {"role": "source", "task": task, "task_adapters_pruned": pruned}
    settings = caps(args.source_examples, args.source_epochs, args)
    train(args, name, [*argv, "houlsby", *pruning(pruned)], records, extra, settings)
    if not (output / "final.json").is_file():
        raise SystemExit(f"{name} is recorded but its run folder {output} is gone: move the "
                         f"record out of {args.results_dir / RECORDS_FILE} or pass the --runs-dir it was trained in")  # fmt: skip
    return output


def target_run(args, target: str, variant: str, seed: int, records: dict) -> dict:
    _, is_fusion, sources_pruned, pruned = VARIANTS[variant]
    key = f"{target}-{variant}-s{seed}"
    output = args.runs_dir / key.replace("/", "_")
    argv = common_flags(args, target, args.train_examples, args.epochs, seed, output)
    if is_fusion:
        sources = [t for t in SOURCE_TASKS if t != target]
        fused = [str(source_run(args, t, sources_pruned, records)) for t in sources]
        argv += ["--adapter", "fusion", "--fuse", *fused]
    else:
        argv += ["--adapter", "houlsby"]
    extra = {"role": "target", "task": target, "variant": variant, "seed": seed}
    settings = caps(args.train_examples, args.epochs, args)
    return train(args, key, [*argv, *pruning(pruned)], records, extra, settings)


def cells(records: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    targets = sorted({r["task"] for r in records.values() if r["role"] == "target"})
    for target in targets:
        runs = [r for r in records.values() if r["role"] == "target" and r["task"] == target]
        base = [r["score"] for r in runs if r["variant"] == "single-dense"]
        for variant, (description, *_) in VARIANTS.items():
            scores = [r["score"] for r in runs if r["variant"] == variant]
            if not scores:
                continue
            mean = statistics.mean(scores)
            rows.append(
                {
                    "target": target,
                    "variant": variant,
                    "description": description,
                    "seeds": len(scores),
                    "mean": mean,
                    "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                    "vs_single_dense": mean - statistics.mean(base) if base else None,
                    "collapsed": sum(r["collapsed"] for r in runs if r["variant"] == variant),
                    "trainable": max(r["trainable"] for r in runs if r["variant"] == variant),
                    "nonzero_trainable": max(
                        r["nonzero_trainable"] for r in runs if r["variant"] == variant
                    ),
                    "seconds": statistics.mean(
                        r["seconds"] for r in runs if r["variant"] == variant
                    ),
                }
            )
    return rows


def report(records: dict[str, dict]) -> str:
    rows = cells(records)
    sources = sorted(
        (r for r in records.values() if r["role"] == "source"),
        key=lambda r: (r["task"], r["task_adapters_pruned"]),
    )
    lines = [
        "# AdapterFusion on MiniLM-L6 (CPU)",
        "",
        "Written by `python benchmarks/fusion.py` from `fusion_runs.jsonl`. Scores are dev "
        "metrics x100 (RTE accuracy, MRPC F1); mean (± standard deviation where there are several seeds); Δ = "
        "difference to the single-task dense Houlsby adapter on the same task.",
        "",
        "| target | variant | seeds | score | Δ vs single dense | collapsed | trainable "
        "(non-zero) | s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        delta = "" if c["vs_single_dense"] is None else f"{100 * c['vs_single_dense']:+.1f}"
        spread = f" ± {100 * c['std']:.1f}" if c["seeds"] > 1 else ""
        lines.append(
            f"| {c['target']} | {c['description']} | {c['seeds']} | "
            f"{100 * c['mean']:.1f}{spread} | {delta} | {c['collapsed']} | "
            f"{c['trainable']:,} ({c['nonzero_trainable']:,}) | {c['seconds']:.0f} |"
        )
    targets = [r for r in records.values() if r["role"] == "target"]
    lines += [
        "",
        "Target runs: "
        + ", ".join(
            sorted(
                {
                    f"{r['train_examples']:,} training examples x {r['epochs']} epochs"
                    for r in targets
                }
            )
        )
        + ". Task adapters (seed 1): "
        + "; ".join(
            f"{r['task']} {'SNIP 40%' if r['task_adapters_pruned'] else 'dense'} "
            f"{r['main_metric']} {100 * r['score']:.1f}"
            for r in sources
        )
        + "; "
        + ", ".join(
            sorted(
                {
                    f"{r['train_examples']:,} training examples x {r['epochs']} epochs"
                    for r in sources
                }
            )
        )
        + " each.",
        "",
    ]
    return "\n".join(lines)


def main_(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    records = load_records(args.results_dir / RECORDS_FILE)
    if not args.report_only:
        for seed in args.seeds:  # every variant of a seed before the next seed
            for target in args.targets:
                for variant in args.variants:
                    target_run(args, target, variant, seed, records)
    common.write_json(args.results_dir / "fusion.json", {"cells": cells(records)}, newline=True)
    text = report(records)
    common.write_text(args.results_dir / "fusion.md", text)
    print(text)


if __name__ == "__main__":
    main_()
