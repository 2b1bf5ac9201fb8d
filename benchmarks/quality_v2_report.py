"""The quality benchmark v2's report (``quality_v2.md``), rebuilt from its records alone: each
arm's learning rate chosen on validation, the claims' tests with intervals and adjusted p-values,
failure counts, seed plans, rank intervals, and plots of the difference from dense.

Comparisons are made within one device and model: records of another device or model form
groups of their own."""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from common import ROOT, write_text
from quality_v2_data import trivial_dev_score
from quality_v2_grid import ARMS, CLAIMS, MAX_SEEDS, recorded_settings, seeds_for
from quality_v2_stats import (
    ALPHA,
    TARGET_SE,
    benjamini_hochberg,
    bootstrap_rank_intervals,
    density_exponent,
    detectable_difference,
    difference_se,
    failed,
    holm,
    non_inferiority,
    plan_seeds,
    seed_sds,
    seeds_for_se,
    superiority,
)


class Group(NamedTuple):
    """What a comparison holds fixed; a run's key in ``choose_lrs`` is ``(*group, arm)``."""

    device: str
    model: str
    task: str
    adapter: str


def group_of(key: tuple) -> Group:
    return Group(*key[:-1])


def _groups(chosen: dict) -> list[Group]:
    return sorted({group_of(k) for k in chosen})


def _where(group: Group) -> str:
    return f"{group.task} {group.adapter} ({group.model}, {group.device})"


README = ROOT / "README.md"
README_BEGIN = (
    "<!-- quality v2 verdicts: python benchmarks/quality_v2.py --report-only --readme -->"
)
README_END = "<!-- end of quality v2 verdicts -->"


def choose_lrs(records: list[dict]) -> dict[tuple, dict]:
    """Per (device, model, task, adapter, arm): the runs at the rate with the best mean validation
    score (ties: the smaller rate). The rates compared are those run with two seeds or more (all
    of them while none has two), each scored on the seeds they all share, so neither a rate tried
    on one seed nor a seed still under way narrows or skews the choice; the chosen rate keeps
    every run it has."""
    by_lr: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_lr[tuple(r[field] for field in (*Group._fields, "arm"))][r["lr"]].append(r)
    chosen = {}
    for key, lrs in by_lr.items():
        seeds = {lr: {r["seed"] for r in runs} for lr, runs in lrs.items()}
        compared = [lr for lr in lrs if len(seeds[lr]) >= 2] or list(lrs)
        shared = set.intersection(*(seeds[lr] for lr in compared))
        validation = {
            lr: statistics.mean(
                r["validation"] for r in [r for r in lrs[lr] if r["seed"] in shared] or lrs[lr]
            )
            for lr in compared
        }
        lr = max(compared, key=lambda x: (validation[x], -x))
        chosen[key] = {
            "lr": lr,
            "runs": sorted(lrs[lr], key=lambda r: r["seed"]),
            "all": lrs,
            "compared": sorted(compared),
        }
    return chosen


def run_points(runs: list[dict]) -> list[float]:
    """The runs' dev scores in points."""
    return [100 * r["score"] for r in runs]


def dev_points(arm: dict) -> list[float]:
    return run_points(arm["runs"])


def _test(claim: dict, a: list[float], b: list[float], margin: float):
    if claim["test"] == "superior":
        return superiority(a, b)
    return non_inferiority(a, b, margin)


def claim_rows(chosen: dict[tuple, dict]) -> dict[str, list[dict]]:
    """Per claim: one row per (group, pair, margin) measured with >= 2 seeds a side; p-values
    adjusted (Holm and Benjamini–Hochberg) over the claim's rows."""
    groups = _groups(chosen)
    out = {}
    for name, claim in CLAIMS.items():
        rows = []
        for group in groups:
            for a_name, b_name in claim["pairs"]:
                a, b = chosen.get((*group, a_name)), chosen.get((*group, b_name))
                if a is None or b is None or len(a["runs"]) < 2 or len(b["runs"]) < 2:
                    continue
                for margin in claim["margins"]:
                    t = _test(claim, dev_points(a), dev_points(b), margin)
                    rows.append(
                        {
                            "claim": name,
                            "group": group,
                            "a": a_name,
                            "b": b_name,
                            "test": t,
                            "arms": (a, b),
                        }
                    )
        for key, adjust in (("holm", holm), ("bh", benjamini_hochberg)):
            for row, p in zip(rows, adjust([r["test"].p for r in rows])):
                row[key] = p
        out[name] = rows
    return out


def verdict(row: dict) -> str:
    t = row["test"]
    if row["holm"] < ALPHA:
        return "holds"
    if t.high < -t.margin:
        return "fails"  # the whole interval lies on the wrong side
    return "not settled"


def _comparison(row: dict) -> str:
    t = row["test"]
    if CLAIMS[row["claim"]]["test"] == "superior":
        return f"{row['a']} > {row['b']}"
    return f"{row['a']} ≥ {row['b']}" + (f" − {t.margin:g}" if t.margin else "")


def verdict_lines(rows: dict[str, list[dict]]) -> list[str]:
    """Every test of every claim with its verdict, and per claim how many tests hold, fail and
    are not settled: the summary the README shows."""
    measured = [r for name in rows for r in rows[name]]
    if not measured:
        return ["No claim is measured yet.", ""]
    counts = []
    for name, claim_rows_ in rows.items():
        tally = defaultdict(int)
        for r in claim_rows_:
            tally[verdict(r)] += 1
        if claim_rows_:
            parts = ", ".join(f"{tally[v]} {v}" for v in ("holds", "fails", "not settled"))
            n = len(claim_rows_)
            counts.append(f"- Claim {name}: {n} test{'s' * (n > 1)}: {parts}.")
    lines = [
        *counts,
        "",
        "| claim | device | model | task | adapter | test | a − b | 90% interval | p Holm "
        "| verdict | seeds a/b |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in measured:
        t, (a, b) = r["test"], r["arms"]
        cells = " | ".join(r["group"])
        lines.append(
            f"| {r['claim']} | {cells} | {_comparison(r)} | {t.diff:+.2f} "
            f"| [{t.lower:+.2f}, {t.high:+.2f}] | {r['holm']:.3f} | {verdict(r)} | "
            f"{len(a['runs'])}/{len(b['runs'])} |"
        )
    return [*lines, ""]


def update_readme(readme: Path, verdicts: list[str]) -> None:
    """Replace what lies between the README's two verdict markers with ``verdicts``."""
    text = readme.read_text(encoding="utf-8")
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise SystemExit(
            f"{readme}: no single verdict block; put the lines {README_BEGIN!r} and "
            f"{README_END!r} where the verdicts belong"
        )
    head, rest = text.split(README_BEGIN)
    tail = rest.split(README_END)[1]
    block = "\n".join(["", "", *verdicts, ""])
    write_text(readme, head + README_BEGIN + block + README_END + tail)


def readme_verdicts(readme: Path) -> str:
    """The verdicts the README shows (between its markers)."""
    text = readme.read_text(encoding="utf-8")
    return text.split(README_BEGIN)[1].split(README_END)[0].strip()


def _claim_table(name: str, rows: list[dict], failures) -> list[str]:
    claim = CLAIMS[name]
    test = (
        "one-sided Welch superiority (H0: a − b ≤ 0)"
        if claim["test"] == "superior"
        else "one-sided Welch non-inferiority (H0: a − b ≤ −margin)"
    )
    lines = [
        f"### Claim {name}: {claim['title']}",
        "",
        f"Test: {test}; a − b in points with its 90% interval (its lower end is the 95% "
        "one-sided bound); p adjusted over this claim's rows (Holm decides the verdict; "
        "Benjamini–Hochberg beside it); failures: runs at the chosen rate that scored no better "
        "than the failure threshold.",
        "",
    ]
    if not rows:
        return [*lines, "Not measured yet.", ""]
    lines += [
        "| device | model | task | adapter | a | b | margin | a − b | 90% interval | p | p Holm "
        "| p BH | verdict | seeds a/b | lr a/b | failures a/b |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, (a, b) = r["test"], r["arms"]
        fa, fb = failures(r["group"], a), failures(r["group"], b)
        lines.append(
            f"| {' | '.join(r['group'])} | {r['a']} | {r['b']} | {t.margin:g} | "
            f"{t.diff:+.2f} | [{t.lower:+.2f}, {t.high:+.2f}] | {t.p:.3f} | {r['holm']:.3f} | "
            f"{r['bh']:.3f} | {verdict(r)} | {len(a['runs'])}/{len(b['runs'])} | "
            f"{a['lr']:g}/{b['lr']:g} | {fa}/{fb} |"
        )
    return [*lines, ""]


def _failure_counter(chosen: dict, data_dir: Path, limit: int | None):
    trivial: dict[str, float] = {}

    def count(group: Group, arm: dict, every_lr: bool = False) -> int:
        """Failed runs of the arm at its chosen rate (``every_lr``: at every rate tried)."""
        task = group.task
        if task not in trivial:
            trivial[task] = trivial_dev_score(task, data_dir, limit)
        dense = chosen.get((*group, "dense"))
        reference = statistics.median(dev_points(dense)) if dense else trivial[task]
        runs = [r for v in arm["all"].values() for r in v] if every_lr else arm["runs"]
        return sum(failed(100 * r["score"], trivial[task], reference) for r in runs)

    return count, trivial


def arms_table(chosen: dict, failures, trivial: dict[str, float]) -> list[str]:
    lines = [
        "| device | model | task | adapter | arm | lr (validation) | dev mean ± sd | seeds "
        "| failures (chosen lr) | failures (every lr) | runs per lr | non-zero trainable |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(chosen):
        arm = chosen[key]
        x = dev_points(arm)
        spread = f" ± {statistics.stdev(x):.2f}" if len(x) > 1 else ""
        per_lr = ", ".join(f"{lr:g}: {len(v)}" for lr, v in sorted(arm["all"].items()))
        nonzero = arm["runs"][0]["nonzero_trainable"]
        group = group_of(key)
        lines.append(
            f"| {' | '.join(key)} | {arm['lr']:g}{_edge(arm)} | "
            f"{statistics.mean(x):.2f}{spread} | {len(x)} | {failures(group, arm)} | "
            f"{failures(group, arm, every_lr=True)} | "
            f"{per_lr} | {nonzero:,} |"
        )
    thresholds = [f"{task} {score:.1f}" for task, score in sorted(trivial.items())]
    return [
        *lines,
        "",
        f"Trivial predictor on dev (points): {', '.join(thresholds)}. (edge): the chosen rate is "
        "the highest or lowest the arm tried, so a rate beyond the grid may do better.",
        "",
    ]


def _edge(arm: dict) -> str:
    tried = arm["compared"]
    return " (edge)" if len(tried) > 1 and arm["lr"] in (tried[0], tried[-1]) else ""


def seed_plan_lines(chosen: dict, v1: list[dict]) -> list[str]:
    lines = [
        "| task | adapter | v1 seed sd dense / sparse | seeds per arm | SE of a difference "
        "| target reached | smallest difference detected (80% power) |",
        "|---|---|---|---|---|---|---|",
    ]
    sds = seed_sds(
        [{**r, "dense": r["pruner"] == "none"} for r in v1], ["task", "adapter", "dense"]
    )
    for task, adapter in sorted({(g.task, g.adapter) for g in _groups(chosen)}):
        dense, sparse = sds.get((task, adapter, True)), sds.get((task, adapter, False))
        if dense is None or sparse is None:
            lines.append(f"| {task} | {adapter} | – | {seeds_for(task, adapter, v1)} | – | – | – |")
            continue
        plan = plan_seeds(sparse, dense, MAX_SEEDS)
        n = seeds_for(task, adapter, v1)  # the plan's, at least MIN_SEEDS
        se = difference_se(sparse, dense, n)
        lines.append(
            f"| {task} | {adapter} | {dense:.2f} / {sparse:.2f} | {n} | {se:.2f} | "
            f"{'yes' if plan.affordable else 'no'} | "
            f"{detectable_difference(sparse, dense, n):.2f} |"
        )
    return [*lines, ""]


def _plain(spec) -> bool:
    """An arm that differs from dense only in its mask or width: not Large-Sparse, no trained
    pooler, no MAM scope (those are compared in claims of their own)."""
    return spec.large_sparse == 1 and not spec.modules_to_save and not spec.exclude


def measured_seed_lines(chosen: dict) -> list[str]:
    """Per group with >= 2 seeds: the seed sds v2 measured (dense; pruned arms pooled), what
    the seeds run so far detect, and the seeds those sds ask for (the same target as the plan)."""
    lines = []
    for group in _groups(chosen):
        variances: dict[bool, list[float]] = {True: [], False: []}
        seeds = []
        for key, arm in chosen.items():
            dense = key[-1] == "dense"
            if group_of(key) != group or len(arm["runs"]) < 2:
                continue
            if dense or ARMS[key[-1]].pruner != "none":  # narrow and pooler arms: neither
                variances[dense].append(statistics.variance(dev_points(arm)))
                seeds.append(len(arm["runs"]))
        if not variances[True] or not variances[False]:
            continue
        dense, sparse = (statistics.mean(variances[d]) ** 0.5 for d in (True, False))
        n = min(seeds)
        lines.append(
            f"| {' | '.join(group)} | {dense:.2f} / {sparse:.2f} | {n} | "
            f"{difference_se(sparse, dense, n):.2f} | "
            f"{detectable_difference(sparse, dense, n):.2f} | {seeds_for_se(sparse, dense)} |"
        )
    if not lines:
        return ["Not measured yet.", ""]
    head = [
        "| device | model | task | adapter | v2 seed sd dense / pruned arms | seeds run | SE of a "
        f"difference | smallest difference detected (80% power) | seeds for SE <= {TARGET_SE:g} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return [*head, *lines, ""]


def ranking_lines(chosen: dict) -> list[str]:
    lines = []
    by_group: dict[tuple, dict[str, list[float]]] = defaultdict(dict)
    for key, arm in chosen.items():
        spec = ARMS[key[-1]]
        s = spec.narrow_to if spec.narrow_to is not None else spec.sparsity
        if s and _plain(spec) and len(arm["runs"]) >= 2:
            by_group[group_of(key), s][key[-1]] = dev_points(arm)
    for (group, s), scores in sorted(by_group.items()):
        if len(scores) < 2:
            continue
        ranks = bootstrap_rank_intervals(scores)
        order = sorted(ranks, key=lambda n: ranks[n][0])
        text = "; ".join(f"{n} {ranks[n][0]:g} [{ranks[n][1]:g}, {ranks[n][2]:g}]" for n in order)
        lines.append(f"- {_where(group)} at {100 * s:g}%: {text}")
    if not lines:
        return ["Not measured yet.", ""]
    head = "Rank (1 = best) with its 95% bootstrap interval (seeds resampled, 2,000 rounds):"
    return [head, "", *lines, ""]


def _mean_dev(runs: list[dict]) -> float:
    return statistics.mean(run_points(runs))


def _own_lr_gain(arm: dict, at_dense_lr: list[dict] | None) -> str:
    """The arm at its own rate against itself at the dense adapter's rate: one-sided Welch
    superiority, unadjusted (a check of the rule, not a claim)."""
    if not at_dense_lr or len(at_dense_lr) < 2 or at_dense_lr == arm["runs"]:
        return "-"
    t = superiority(dev_points(arm), run_points(at_dense_lr))
    return f"{t.diff:+.2f} [{t.lower:+.2f}, {t.high:+.2f}], {t.p:.3f}"


def density_lr_lines(chosen: dict) -> list[str]:
    """Per group: the learning rate each pruned arm chose on validation against its density,
    the fitted exponent of lr ~ density^-alpha, and each arm's gap to dense at the dense
    adapter's rate and at its own: whether tuning the rate to the density closes the gap. An
    arm joins once it and dense have two seeds at their rates and it was tuned over every rate
    dense was."""
    lines = []
    for group in _groups(chosen):
        dense = chosen.get((*group, "dense"))
        if dense is None or len(dense["runs"]) < 2:
            continue
        points, rows = [(1.0, dense["lr"])], []
        for key, arm in sorted(chosen.items()):
            spec = ARMS[key[-1]]
            if group_of(key) != group or not spec.sparsity or not _plain(spec):
                continue
            if len(arm["runs"]) < 2 or not set(arm["compared"]) >= set(dense["compared"]):
                continue  # not yet tuned over dense's rates: its choice says nothing yet
            points.append((1 - spec.sparsity, arm["lr"]))
            at_dense_lr = arm["all"].get(dense["lr"])
            gap_dense_lr = (
                f"{_mean_dev(at_dense_lr) - _mean_dev(dense['runs']):+.2f}" if at_dense_lr else "-"
            )
            rows.append(
                f"| {key[-1]} | {1 - spec.sparsity:g} | {arm['lr']:g} | {gap_dense_lr} | "
                f"{_mean_dev(arm['runs']) - _mean_dev(dense['runs']):+.2f} | "
                f"{_own_lr_gain(arm, at_dense_lr)} |"
            )
        if not rows:
            continue
        try:
            alpha = f"{density_exponent(points):.2f}"
        except ValueError:
            alpha = "-"
        lines += [
            f"{_where(group)}: dense chose lr {dense['lr']:g}; fitted "
            f"alpha = {alpha} (lr ~ density^-alpha over the pruned arms' chosen rates)",
            "",
            "| arm | density | lr chosen | dev gap at dense's lr | dev gap at own lr "
            "| own lr − dense's lr, same arm: diff [90% interval], p |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    return lines or ["Not measured yet.", ""]


def plot(chosen: dict, out_dir: Path) -> list[Path]:
    """Per device, model, task and adapter: each pruner's difference from dense vs sparsity, with
    the 90% interval as a band."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for group in _groups(chosen):
        dense = chosen.get((*group, "dense"))
        if dense is None or len(dense["runs"]) < 2:
            continue
        lines: dict[str, list[tuple]] = defaultdict(list)
        for key, arm in chosen.items():
            spec = ARMS[key[-1]]
            if group_of(key) != group or not spec.sparsity or len(arm["runs"]) < 2:
                continue
            t = non_inferiority(dev_points(arm), dev_points(dense), 0.0)
            label = (
                spec.pruner if spec.large_sparse == 1 else f"{spec.pruner} ls{spec.large_sparse:g}"
            )
            lines[label].append((100 * spec.sparsity, t.diff, t.lower, t.high))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, points in sorted(lines.items()):
            points.sort()
            xs, ds, lo, hi = zip(*points)
            ax.plot(xs, ds, marker="o", label=label)
            ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(-1, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("dev score − dense (points)")
        ax.set_title(_where(group), fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = "_".join((group.task, group.adapter, group.model, group.device))
        path = out_dir / f"quality_v2_{name.replace(' ', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def check_one_setting(records: list[dict]) -> None:
    """SystemExit if a group's runs were trained with different settings (epochs, caps, ...):
    their comparison would mix them."""
    settings: dict[Group, set[str]] = defaultdict(set)
    for r in records:
        group = Group(*(r[field] for field in Group._fields))
        settings[group].add(json.dumps(recorded_settings(r), sort_keys=True))
    for group, found in settings.items():
        if len(found) > 1:
            raise SystemExit(
                f"{_where(group)} mixes runs of settings {sorted(found)}: keep one grid's "
                "records per file (--records)"
            )


def report(args: argparse.Namespace) -> Path:
    from quality_v2 import load_records, v1_records

    records = list(load_records(args.records).values())
    check_one_setting(records)
    out_dir = args.records.parent
    chosen = choose_lrs(records)
    failures, trivial = _failure_counter(chosen, args.data_dir, args.max_eval_samples)
    rows = claim_rows(chosen)
    arms = arms_table(chosen, failures, trivial) if chosen else ["Nothing recorded yet.", ""]
    verdicts = [
        f"A test holds when its Holm-adjusted p is below {ALPHA:g}, fails when its whole 90% "
        "interval lies below the margin, and is not settled otherwise.",
        "",
        *verdict_lines(rows),
    ]
    lines = [
        "# Quality benchmark v2",
        "",
        f"Rebuilt from `{args.records.name}` ({len(records)} runs) by "
        "`python benchmarks/quality_v2.py --report-only`. Protocol: see the script's docstring.",
        "Each arm's learning rate is chosen by its mean score on the validation split carved "
        "from train (over the seeds all its rates share; a rate run on one seed joins only "
        "when none has two); the dev scores below are of that rate, each dev set scored once "
        "per run. "
        "Every run counts in its arm's mean; a run fails when it recovers less than half of the "
        "dense adapter's gain over the trivial predictor "
        "(`quality_v2_stats.failure_threshold`), and failures are counted, never dropped.",
        "",
        "## Verdicts",
        "",
        *verdicts,
        "## Claims",
        "",
    ]
    for name, claim_table in rows.items():
        lines += _claim_table(name, claim_table, failures)
    lines += ["## Arms", "", *arms, "## Seeds (from the v1 seed variances)", ""]
    lines += seed_plan_lines(chosen, v1_records())
    lines += [
        "Measured in v2 (each arm's seeds at its chosen rate; pruned arms pooled):",
        "",
        *measured_seed_lines(chosen),
    ]
    lines += [
        "## Ranking of the pruners and baselines at each sparsity",
        "",
        *ranking_lines(chosen),
    ]
    lines += [
        "## Learning rate and density",
        "",
        "Does a sparse adapter want a higher learning rate than the dense one? Each arm's "
        "rate is chosen on validation from the same grid; gaps are mean dev points against "
        "dense at its chosen rate.",
        "",
        *density_lr_lines(chosen),
    ]
    plots = plot(chosen, out_dir)
    if plots:
        lines += ["## Difference from dense vs sparsity (90% interval as a band)", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    path = out_dir / "quality_v2.md"
    write_text(path, "\n".join(lines))
    if getattr(args, "readme", False):
        update_readme(README, verdicts)
    return path
