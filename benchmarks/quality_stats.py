"""The quality benchmark's statistics: cells over seeds, differences from dense with their
standard errors, and the claims' rules and verdicts."""

from __future__ import annotations

import math
from collections.abc import Callable

from quality_grid import CLAIMS

from sparseadapter.sweep import aggregate


def cells_of(records: list[dict], extra_keys: tuple[str, ...] = ()) -> list[dict]:
    rows = [{**r, "train.lr": r["lr"]} for r in records]
    return aggregate(rows, ["train.lr", *extra_keys])


def find_cell(cells, **match) -> dict | None:
    for c in cells:
        if all(c.get(k) == v for k, v in match.items()):
            return c
    return None


def fmt_cell(cell: dict | None) -> str:
    if cell is None:
        return "–"
    text = f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f} (n={cell['seeds']})"
    return text + (f" ⚠ {cell['collapsed']} collapsed" if cell["collapsed"] else "")


def _difference(cell: dict | None, dense: dict | None, label: str) -> dict | None:
    """cell − dense in points, with the standard error of that difference over seeds; a cell
    with a collapsed run (``tasks.glue.is_collapsed``: chance level) is left out of the verdict."""
    if cell is None or dense is None or cell["seeds"] < 2 or dense["seeds"] < 2:
        return None
    if cell["collapsed"] or dense["collapsed"]:
        return {"label": label, "collapsed": True}
    se = math.sqrt(cell["std"] ** 2 / cell["seeds"] + dense["std"] ** 2 / dense["seeds"])
    return {"label": label, "diff": 100 * (cell["mean"] - dense["mean"]), "se": 100 * se}


def differences_lines(diffs: list[dict | None]) -> list[str]:
    """One line per measured cell, and how many differences are within 2 standard errors of 0."""
    known = [d for d in diffs if d is not None and "diff" in d]
    collapsed = [d["label"] for d in diffs if d is not None and "diff" not in d]
    left_out = (
        [f"Left out of the verdict, a run collapsed: {', '.join(collapsed)}.", ""]
        if collapsed
        else []
    )
    if not known:
        return left_out
    lines = [f"- {d['label']}: {d['diff']:+.2f} ± {d['se']:.2f} points" for d in known]
    ties = sum(abs(d["diff"]) <= 2 * d["se"] for d in known)
    return [
        "Differences from dense (± standard error over seeds):",
        "",
        *lines,
        "",
        f"{ties} of {len(known)} differences are within 2 standard errors of zero: at this "
        "number of seeds those cells cannot tell the two apart.",
        "",
        *left_out,
    ]


def spread_text(best: dict, worst: dict) -> str:
    d = _difference(best, worst, "spread")
    if best is worst or d is None or "diff" not in d:
        return ""
    within = "within" if d["diff"] <= 2 * d["se"] else "beyond"
    return f"; spread {d['diff']:.2f} ± {d['se']:.2f} points ({within} 2 SE)"


def holds(claim: str, diff: float) -> bool:
    """The claim's rule (``CLAIMS[claim]["rule"]``) on one cell's difference from dense."""
    op, threshold = CLAIMS[claim]["rule"]
    return diff > threshold if op == ">" else diff >= threshold


def rule_sign(claim: str) -> str:
    return ">" if CLAIMS[claim]["rule"][0] == ">" else "≥"


def rule_text(claim: str) -> str:
    threshold = CLAIMS[claim]["rule"][1]
    subject = "Large-Sparse" if claim == "3" else "sparse"
    margin = f" − {-threshold:g} point" if threshold else ""
    return f"{subject} mean {rule_sign(claim)} dense mean{margin}"


def settled(claim: str, diff: dict) -> bool:
    """Whether the cell's difference is more than 2 standard errors from the rule's threshold:
    its verdict would not flip with the noise of these seeds."""
    return abs(diff["diff"] - CLAIMS[claim]["rule"][1]) > 2 * diff["se"]


def compare_with_dense(claim: str, cells: list[dict], tuned: dict, tasks: list[str]) -> list[dict]:
    """Claims 1–3: every sparse setting next to the dense adapter of its task, adapter and
    tuned lr, in table order (task, adapter, setting); ``diff`` is ``_difference``'s."""
    spec = CLAIMS[claim]
    grid = spec["grid"]
    if claim == "3":
        settings = [
            (
                f"Large-Sparse {w}x @{int(s * 100)}% ({p})",
                {"pruner": p, "sparsity": s, "large_sparse": w},
            )
            for p in grid["pruner"]
            for w in grid["large_sparse"]
            for s in grid["sparsity"]
        ]
    else:
        settings = [
            (f"{p} {int(s * 100)}%", {"pruner": p, "sparsity": s, "large_sparse": 1})
            for p in grid["pruner"]
            if p != "none"
            for s in grid["sparsity"]
        ]
    found = []
    for task in tasks:
        for adapter in spec["adapters"]:
            mine = main_cells(cells, tuned, task, adapter)
            dense = find_cell(mine, pruner="none")
            for setting, match in settings:
                cell = find_cell(mine, **match)
                label = f"{task} {adapter} {setting}"
                found.append(
                    {
                        "task": task,
                        "adapter": adapter,
                        "setting": setting,
                        "cell": cell,
                        "dense": dense,
                        "diff": _difference(cell, dense, label),
                    }
                )
    return found


def verdict_of(diffs: list[dict | None], rule: Callable[[float], bool]) -> str:
    known = [d["diff"] for d in diffs if d is not None and "diff" in d]
    if not known:
        return "not measured yet"
    results = [rule(d) for d in known]
    suffix = (
        "" if len(known) == len(diffs) else f" (on {len(known)} of {len(diffs)} cells measured)"
    )
    if all(results):
        return "holds" + suffix
    if not any(results):
        return "does not hold" + suffix
    return "mixed" + suffix


def main_cells(cells: list[dict], tuned: dict, task: str, adapter: str) -> list[dict]:
    """The cells of the adapter's tuned learning rate (the other tuning runs are left out)."""
    lr = tuned.get((task, adapter))
    return [
        c for c in cells if c["task"] == task and c["adapter"] == adapter and c["train.lr"] == lr
    ]
