"""What sparsity costs: training step time, pruning time, peak memory and checkpoint bytes.

Every adapter family is trained on MiniLM-L6 (CPU) as a dense adapter, pruned to 40% and 90%,
and as the Large-Sparse adapter (4x wider, 75% sparse). Step times are measured side by side in
one process, round-robin on the same batch; peak memory in a fresh process per variant.

    python benchmarks/cost.py            # full run: ~15 min on 2 free cores, longer on a busy machine
    python benchmarks/cost.py --quick    # one family, tiny batches: a smoke run

Writes cost.json (rewritten after each family; ``--resume`` continues an interrupted run) and
cost.md to ``--output`` (default benchmarks/results; runs/cost-quick with ``--quick``).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import common
import torch
from common import DEFAULT_DATA, RESULTS, ROOT
from cost_probes import machine_info, measure_memory, measure_pruning, probe_pool
from cost_report import render_markdown
from cost_settings import FAMILIES, QUICK, CostSettings
from cost_steps import measure_steps
from cost_variants import load_batches, quiet_libraries

from sparseadapter.adapters import resolve_model
from sparseadapter.tasks.glue import glue_spec

CHECKPOINT_JSON = RESULTS / "checkpoint_size.json"
QUICK_OUTPUT = ROOT / "runs" / "cost-quick"
ARGUMENT_TYPES = {"int": int, "float": float, "str": str, "list[str]": str, "list[float]": float}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one family, tiny batches")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"folder for cost.json/.md (default {RESULTS.relative_to(ROOT)}; with --quick "
        f"{QUICK_OUTPUT.relative_to(ROOT)}, so a smoke run leaves the committed results alone)",
    )
    parser.add_argument("--resume", action="store_true", help="keep the families in cost.json")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite cost.md from the cost.json in --output, with the "
        "current checkpoint_size.json",
    )
    parser.add_argument("--model", default="minilm", help="'minilm' or a model directory")
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None,
        help="GLUE TSV folder (default ../shared/data/glue if present, else the dataset hub)",
    )
    for f in CostSettings.__dataclass_fields__.values():
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=ARGUMENT_TYPES[f.type],
            nargs="+" if f.type.startswith("list") else None,
            help=f.metadata["help"],
        )
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = QUICK_OUTPUT if args.quick else RESULTS
    return args


def resolve_settings(args: argparse.Namespace) -> CostSettings:
    given = {
        name: getattr(args, name)
        for name in CostSettings.__dataclass_fields__
        if getattr(args, name) is not None
    }
    settings = CostSettings(**{**(QUICK if args.quick else {}), **given})
    unknown = [f for f in settings.families + settings.prune_families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; choose from: {', '.join(FAMILIES)}")
    if not set(settings.prune_families) <= set(settings.families):
        raise SystemExit(
            "--prune-families must be among --families: pruning is timed in each family's turn"
        )
    return settings


def write(results: dict[str, Any], output: Path) -> None:
    common.write_json(output / "cost.json", results, newline=True)
    common.write_text(output / "cost.md", render_markdown(results))


def checkpoint_sizes() -> dict[str, Any] | None:
    return json.loads(CHECKPOINT_JSON.read_text()) if CHECKPOINT_JSON.exists() else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.output / "cost.json"
    if args.render:
        results = json.loads(path.read_text())
        results["checkpoint_size"] = checkpoint_sizes()
        results["rendered"] = datetime.datetime.now().isoformat(timespec="seconds")
        write(results, args.output)
        return 0
    settings = resolve_settings(args)
    torch.set_num_threads(settings.threads)
    quiet_libraries()
    started = time.perf_counter()
    results = json.loads(path.read_text()) if args.resume and path.exists() else None
    if results is not None and results["settings"] != asdict(settings):
        raise SystemExit(f"--resume: {path} was made with other settings; drop --resume")
    results = results or {
        "command": " ".join(["python", "benchmarks/cost.py", *(argv or sys.argv[1:])]),
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "model": args.model,
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
        "step_time": {},
        "pruning": {},
        "memory": {},
    }
    results["machine"] = machine_info(settings.threads)
    model_path = resolve_model(args.model)
    num_labels = glue_spec(settings.task).num_labels
    batches = load_batches(settings, model_path, args.data_dir)
    with probe_pool() as pool:
        for family in settings.families:
            if family in results["memory"]:  # finished before --resume
                continue
            print(f"[cost] {family}: step time", flush=True)
            steps = measure_steps(family, settings, model_path, batches, num_labels)
            results["step_time"][family] = steps
            if family in settings.prune_families:
                print(f"[cost] {family}: pruning time", flush=True)
                results["pruning"][family] = measure_pruning(
                    family, settings, model_path, batches, num_labels
                )
            print(f"[cost] {family}: peak memory", flush=True)
            results["memory"][family] = measure_memory(
                family, settings, model_path, batches, num_labels, pool
            )
            write(results, args.output)
    results["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = results.get("seconds", 0) + time.perf_counter() - started
    results["checkpoint_size"] = checkpoint_sizes()
    write(results, args.output)
    print(f"[cost] wrote {args.output / 'cost.md'} and cost.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
