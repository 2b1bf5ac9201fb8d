"""Training step time: variants timed side by side, ratios with bootstrap CIs, and the
profiled cost of mask enforcement."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
from cost_settings import (
    DENSE,
    ENFORCEMENT_OPS,
    GOALS,
    PHASES,
    CostSettings,
    Variant,
    is_large_sparse,
    variant_specs,
)
from cost_variants import enforced, make_variant, training_step
from torch.profiler import ProfilerActivity, profile

from sparseadapter.errors import ConfigError


def interleaved_times(
    variants: list[Variant], batches: list[dict], warmup: int, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Per variant and phase, the step times of ``rounds`` round-robin rounds after warm-up.

    Every round runs one step of each variant on the same batch; the first variant of a round
    rotates, so that no variant always runs right after the same other one.
    """
    times = {v.key: {p: [] for p in (*PHASES, "total")} for v in variants}
    for r in range(warmup + rounds):
        batch = batches[r % len(batches)]
        first = r % len(variants)
        for variant in variants[first:] + variants[:first]:
            with enforced(variant):
                phases = training_step(variant, batch)
            if r >= warmup:
                for phase, seconds in phases.items():
                    times[variant.key][phase].append(seconds)
        gc.collect()
    return times


def ratio_with_ci(
    numerator: list[float], denominator: list[float], resamples: int, seed: int = 0
) -> dict[str, Any]:
    """Ratio of medians and median of per-round ratios, each with a 95% bootstrap CI.

    The bootstrap resamples rounds, keeping each round's two steps together. The per-round
    (paired) ratio cancels what a round's batch length and machine load do to both steps.
    """
    num, den = np.asarray(numerator), np.asarray(denominator)
    idx = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    of_medians = np.median(num[idx], axis=1) / np.median(den[idx], axis=1)
    paired = np.median((num / den)[idx], axis=1)
    return {
        "ratio": float(np.median(num) / np.median(den)),
        "ci95": [float(x) for x in np.percentile(of_medians, [2.5, 97.5])],
        "paired_ratio": float(np.median(num / den)),
        "paired_ci95": [float(x) for x in np.percentile(paired, [2.5, 97.5])],
    }


def profile_ops(
    variants: list[Variant], batches: list[dict], steps: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and operator: self and inclusive CPU ms per step (``steps`` steps, interleaved)."""
    ops: dict[str, dict[str, dict[str, float]]] = {v.key: {} for v in variants}
    for i in range(steps):
        for variant in variants:
            with enforced(variant), profile(activities=[ProfilerActivity.CPU]) as prof:
                training_step(variant, batches[i % len(batches)])
            for event in prof.key_averages():
                op = ops[variant.key].setdefault(event.key, {"self_ms": 0.0, "total_ms": 0.0})
                op["self_ms"] += event.self_cpu_time_total / 1e3 / steps
                op["total_ms"] += event.cpu_time_total / 1e3 / steps
    return ops


def enforcement_ms(ops: dict[str, dict[str, dict[str, float]]], key: str) -> float:
    """CPU ms per step in the enforcement operators, beyond what the dense step spends in them."""

    def spent(variant: str) -> float:
        return sum(ops[variant].get(op, {}).get("total_ms", 0.0) for op in ENFORCEMENT_OPS)

    return spent(key) - spent(DENSE)


def top_extra_ops(
    ops: dict[str, dict[str, dict[str, float]]], key: str, count: int = 10
) -> list[dict[str, Any]]:
    """All operators together, then the ``count`` whose self CPU ms grow most from dense to ``key``."""

    def row(name: str, dense_ms: float, sparse_ms: float) -> dict[str, Any]:
        return {"op": name, "dense_ms": dense_ms, "ms": sparse_ms, "extra_ms": sparse_ms - dense_ms}

    def self_ms(variant: str, name: str) -> float:
        return ops[variant].get(name, {}).get("self_ms", 0.0)

    rows = [row(n, self_ms(DENSE, n), self_ms(key, n)) for n in set(ops[DENSE]) | set(ops[key])]
    rows.sort(key=lambda r: -r["extra_ms"])
    total = row(
        "(all operators)",
        sum(o["self_ms"] for o in ops[DENSE].values()),
        sum(o["self_ms"] for o in ops[key].values()),
    )
    return [total, *rows[:count]]


def measure_steps(
    family: str, settings: CostSettings, model_path: str, batches: list[dict], num_labels: int
) -> dict[str, Any]:
    variants, skipped = [], {}
    for spec in variant_specs(settings):
        try:
            variants.append(make_variant(family, spec, model_path, batches, num_labels))
        except ConfigError as err:
            skipped[spec.key] = str(err)
    times = interleaved_times(variants, batches, settings.warmup, settings.rounds)
    ops = profile_ops(variants, batches, settings.profile_steps)
    dense = times[DENSE]["total"]
    result: dict[str, Any] = {"variants": {}, "skipped": skipped}
    for variant in variants:
        t = times[variant.key]
        q1, median, q3 = np.percentile(t["total"], [25, 50, 75])
        entry = {**variant.info, "median_s": float(median), "q1_s": float(q1), "q3_s": float(q3)}
        entry["phase_median_s"] = {p: float(np.median(t[p])) for p in PHASES}
        entry["steps_s"] = t["total"]
        if variant.key != DENSE:
            entry.update(ratio_with_ci(t["total"], dense, settings.bootstrap))
            entry["enforcement_ms"] = enforcement_ms(ops, variant.key)
            entry["enforcement_share"] = entry["enforcement_ms"] / float(np.median(dense) * 1e3)
        result["variants"][variant.key] = entry
    for key, entry in result["variants"].items():
        if is_large_sparse(key) and entry["ratio"] > GOALS["large_sparse"]:
            result["large_sparse_profile"] = top_extra_ops(ops, key)
    return result
