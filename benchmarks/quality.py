"""Quality benchmark: the SparseAdapter paper's claims, tested on real GLUE dev sets.

    python benchmarks/quality.py --tasks sst2 --claims 1 2          # run (resumable), then report
    python benchmarks/quality.py --report-only                      # rebuild quality.md from records
    python benchmarks/quality.py --quick --runs-dir /tmp/q          # a minutes-long smoke run

Claims (paper: He et al., Findings of EMNLP 2022), at our scale (MiniLM-L6; CPU, or a GPU where
one is lent):
  1. SNIP at 40% sparsity scores at least as well as the same dense adapter
     (Houlsby, Pfeiffer, LoRA, MAM).
  2. Up to 80% sparsity stays within about 1 point of dense, with SNIP and with random pruning.
  3. Large-Sparse (4x width at 75%, same non-zero budget) beats the dense adapter; compared with
     full fine-tuning.
  4. The five pruners at 40/60/80/90% sparsity on one adapter (Houlsby), as a plot; on SST-2,
     CoLA and STS-B only (``CLAIMS["4"]["tasks"]``), claims 1-3 on all five tasks.

Protocol ``length-grouped``: the learning rate is tuned on the dense adapter only (seed 1, grid
``LR_GRIDS`` or ``--lr-grid``, best dev score per task and adapter; a grid whose every rate
collapsed goes one ``LR_LADDER`` step lower) and then used unchanged for
every sparse and Large-Sparse run of that adapter; full fine-tuning uses 5e-5. Training batches
are grouped by length (``data.group_by_length``: 2.5x more SST-2 examples per second than random
batches, far fewer padded tokens; see ``benchmarks/batching.py``). Each task trains until the dense
adapter's dev score levels off (``EPOCHS``, from ``benchmarks/epochs.py``). Everything else is
the CLI's defaults (AdamW, weight decay 0.1, linear schedule with 6% warm-up, batch 32, max length
128, best epoch on dev). Records of the earlier protocol (``random-batches``, plain shuffling)
stay in the records file and are reported apart.

Every finished run is appended to ``benchmarks/results/quality_runs.jsonl`` (committed) with
the settings its name does not say (``quality_grid.run_settings``: epochs, model, max length,
caps), and a run found there with the grid's settings is never trained again: the grid can be completed a part at a time, across
sessions and machines (each record names its device and torch version; ``DEVICE_CHECK`` holds
runs trained again on another device, to measure what the device changes). Run folders
(checkpoints) go to ``--runs-dir`` and are not committed.
``--workers N`` trains N runs at once on Ray, each on its share of the CPU threads (or one GPU
each), the way ``sparseadapter sweep --workers N`` does (``--address``: a running Ray cluster);
without Ray installed, one at a time. A failed run is tried once more (bad input: not), then
reported, and the script exits 1. Runs are taken claim by claim in ``--claims`` order, each on
every task of ``--tasks`` in that order: a grid stopped part-way has tested its first claims
on as many tasks as it could.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common
from common import RESULTS, ROOT
from quality_grid import CLAIMS, DEFAULT_LR_GRID, EPOCHS, LR_GRIDS, TASKS
from quality_plan import plan
from quality_records import load_records
from quality_report import report
from quality_stats import cells_of
from quality_worker import run_all

from sparseadapter.parallel import make_executor
from sparseadapter.sweep import markdown_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--claims", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    p.add_argument("--adapters", nargs="+", default=None, help="only these adapters of each claim")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument(
        "--lr-grid",
        nargs="+",
        type=float,
        default=None,
        help=f"for every adapter (default: {DEFAULT_LR_GRID}, MAM {LR_GRIDS['mam']})",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help=f"for every task (default: per task, {EPOCHS})"
    )
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument(
        "--max-train-samples", type=int, default=None, help="cap every task's training set"
    )
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--model", default="minilm")
    common.add_data_dir(p)
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument(
        "--records", type=Path, default=None, help="default: <results-dir>/quality_runs.jsonl"
    )
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop starting new runs after this"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="train this many runs at once, on Ray (as sweep)"
    )
    p.add_argument("--address", default=None, help="a running Ray cluster (as sweep --address)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the runs recorded and left per task and claim, and the time left; run nothing",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: claim 1 with LoRA on RTE, 64 examples, 1 epoch, 1 lr, 1 seed; "
        "records in --runs-dir",
    )
    args = p.parse_args(argv)
    args.records = args.records or args.results_dir / "quality_runs.jsonl"
    if args.quick:
        args.tasks, args.claims, args.seeds, args.lr_grid = ["rte"], ["1"], [1], [1e-3]
        args.adapters = ["lora"]
        args.epochs, args.max_length, args.max_train_samples, args.max_eval_samples = 1, 64, 64, 64
        args.records = args.runs_dir / "quality_runs.jsonl"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan:
        print(plan(args))
        return 0
    failed: dict[str, str] = {}
    if not args.report_only:
        executor = make_executor(args.workers, args.address)
        print(f"runs train {executor.description}", flush=True)
        try:
            failed = run_all(args, executor)
        finally:
            executor.close()
    if args.quick:
        records = list(load_records(args.records, args=args).values())
        print(markdown_table(cells_of(records), ["train.lr"]))
    else:
        print(f"wrote {report(args)}")
    for key, error in failed.items():
        print(f"failed: {key}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
