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
import ctypes
import datetime
import gc
import json
import logging
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed machine spinning
# threads made every step 5-10x slower (they burn the time slices their partners need).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sparseadapter import (  # noqa: E402
    SparsityConfig,
    apply_masks,
    get_masks,
    remove_sparsity,
    sparsify,
)
from sparseadapter.adapters import build_model, resolve_model  # noqa: E402
from sparseadapter.batching import PadCollator  # noqa: E402
from sparseadapter.data import encode, load_tokenizer  # noqa: E402
from sparseadapter.errors import ConfigError  # noqa: E402
from sparseadapter.scoring import available_scorers, get_scorer  # noqa: E402
from sparseadapter.tasks.glue import get_task, load_glue  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"
CHECKPOINT_JSON = RESULTS / "checkpoint_size.json"
QUICK_OUTPUT = REPO / "runs" / "cost-quick"

# family -> (adapter, library) for sparseadapter.adapters.build_model
FAMILIES: dict[str, tuple[str, str]] = {
    "houlsby": ("houlsby", "adapterhub"),
    "pfeiffer": ("pfeiffer", "adapterhub"),
    "parallel": ("parallel", "adapterhub"),
    "mam": ("mam", "adapterhub"),
    "prefix": ("prefix", "adapterhub"),
    "lora": ("lora", "adapterhub"),
    "lora-peft": ("lora", "peft"),
}
GOALS = {"step_time": 1.02, "large_sparse": 1.10, "memory": 1.05, "enforcement_share": 0.02}
PHASES = ("forward", "backward", "optimizer")
# Operators the mask engine adds to a step: masked_fill in the gradient hooks (and bitwise_not
# where a hook inverts its mask), _foreach_mul_ in the optimizer post-hook. Inclusive times, so
# their copies and allocations count.
ENFORCEMENT_OPS = ("aten::bitwise_not", "aten::masked_fill", "aten::_foreach_mul_")
DENSE = "dense"
# Any method gives the same step cost (masks are dense tensors); SNIP gives realistic masks.
MASK_METHOD = "snip"
PRUNE_SPARSITY = 0.4
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclass
class CostSettings:
    """What cost.py measures and for how long (``--quick`` shrinks the defaults)."""

    families: list[str] = field(
        default_factory=lambda: list(FAMILIES), metadata={"help": "Adapter families to measure."}
    )
    prune_families: list[str] = field(
        default_factory=lambda: ["houlsby", "lora-peft"],
        metadata={"help": "Families (among --families) whose pruning time is measured."},
    )
    sparsities: list[float] = field(
        default_factory=lambda: [0.4, 0.9], metadata={"help": "Sparsities compared with dense."}
    )
    large_sparse: float = field(default=4.0, metadata={"help": "Large-Sparse widening factor."})
    task: str = field(default="sst2", metadata={"help": "GLUE task the batches come from."})
    batch_size: int = field(default=32, metadata={"help": "Examples per batch."})
    max_length: int = field(default=128, metadata={"help": "Truncation length (padded per batch)."})
    batches: int = field(
        default=10,
        metadata={"help": "Fixed batches: training cycles through them, pruning scores on all."},
    )
    warmup: int = field(default=2, metadata={"help": "Untimed rounds before timing."})
    rounds: int = field(default=20, metadata={"help": "Timed rounds (one step per variant each)."})
    profile_steps: int = field(
        default=2, metadata={"help": "Profiled steps per variant (enforcement cost, hot spots)."}
    )
    prune_repeats: int = field(default=1, metadata={"help": "Pruning runs per method (median)."})
    memory_steps: int = field(default=2, metadata={"help": "Training steps per memory probe."})
    threads: int = field(default=2, metadata={"help": "torch.set_num_threads."})
    bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples for ratio CIs."})


QUICK = {
    "families": ["houlsby"],
    "prune_families": ["houlsby"],
    "batch_size": 8,
    "max_length": 32,
    "batches": 2,
    "warmup": 1,
    "rounds": 3,
    "profile_steps": 1,
    "memory_steps": 1,
    "bootstrap": 200,
}


@dataclass
class VariantSpec:
    key: str
    large_sparse: float
    sparsity: float | None


@dataclass
class Variant:
    key: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    masks: dict[str, torch.Tensor]
    config: SparsityConfig | None
    info: dict[str, Any]


# ----------------------------------------------------------------------------- variants


def quiet_libraries() -> None:
    transformers.logging.set_verbosity_error()
    logging.getLogger("adapters").setLevel(logging.ERROR)


def load_batches(settings: CostSettings, model_path: str, data_dir: str | None) -> list[dict]:
    """``settings.batches`` fixed training batches, each padded to its own longest example."""
    task = get_task(settings.task)
    examples = load_glue(task.name, "train", data_dir, settings.batch_size * settings.batches)
    tokenizer = load_tokenizer(model_path)
    features = encode(tokenizer, examples, settings.max_length, task.is_regression)
    collate = PadCollator(tokenizer.pad_token_id)
    size = settings.batch_size
    return [collate(features[i : i + size]) for i in range(0, len(features), size)]


def is_large_sparse(key: str) -> bool:
    return key.startswith("large-sparse")


def variant_specs(settings: CostSettings) -> list[VariantSpec]:
    return [
        VariantSpec(DENSE, 1.0, None),
        *(VariantSpec(f"sparse-{round(s * 100)}", 1.0, s) for s in settings.sparsities),
        VariantSpec(f"large-sparse-{settings.large_sparse:g}x", settings.large_sparse, None),
    ]


def make_variant(
    family: str, spec: VariantSpec, model_path: str, batches: list[dict], num_labels: int
) -> Variant:
    """Build a variant, prune it (SNIP on the first batch) and keep its masks, detached.

    Raises ConfigError when the family cannot be widened for Large-Sparse.
    """
    adapter, library = FAMILIES[family]
    torch.manual_seed(0)
    model, large_sparsity = build_model(
        model_path, num_labels, adapter, library, large_sparse=spec.large_sparse
    )
    model.train()
    sparsity = spec.sparsity if large_sparsity is None else large_sparsity
    config, masks = None, {}
    if sparsity:
        config = SparsityConfig(MASK_METHOD, sparsity, num_examples=len(batches[0]["labels"]))
        sparsify(model, config, batches=batches[:1])
        masks = get_masks(model)
        remove_sparsity(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.1)
    info = {
        "sparsity": sparsity or 0.0,
        "trainable": sum(p.numel() for p in trainable),
        "prunable": sum(m.numel() for m in masks.values()),
        "kept": sum(int(m.sum()) for m in masks.values()),
    }
    return Variant(spec.key, model, optimizer, masks, config, info)


@contextmanager
def enforced(variant: Variant) -> Iterator[None]:
    """Attach the variant's masks (if any) for the steps inside, then detach them.

    The engine's optimizer post-hook looks at every live mask set after any optimizer's step
    (to re-mask the parameters that optimizer holds). Attaching a variant's masks only around
    its own steps (untimed) keeps the other variants' mask sets out of its timings, so each
    variant costs what it costs when trained alone.
    """
    if variant.masks:
        apply_masks(variant.model, variant.masks, variant.config)
    try:
        yield
    finally:
        remove_sparsity(variant.model)


def training_step(variant: Variant, batch: dict) -> dict[str, float]:
    """One forward + backward + AdamW step + zero_grad; seconds per phase and in total."""
    start = time.perf_counter()
    loss = variant.model(**batch).loss
    forward = time.perf_counter()
    loss.backward()
    backward = time.perf_counter()
    variant.optimizer.step()
    variant.optimizer.zero_grad()
    end = time.perf_counter()
    return {
        "forward": forward - start,
        "backward": backward - forward,
        "optimizer": end - backward,
        "total": end - start,
    }


# ----------------------------------------------------------------------------- step time


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


# ----------------------------------------------------------------------------- pruning time


def measure_pruning(
    family: str, settings: CostSettings, model_path: str, batches: list[dict], num_labels: int
) -> dict[str, Any]:
    """Seconds per method to prune the dense adapter, scoring on all ``batches``.

    The unit, one training step of the same dense adapter, is timed right before and right
    after each pruning run (cycling through the batches), so both see the same machine load.
    """
    dense = make_variant(family, variant_specs(settings)[0], model_path, batches, num_labels)
    initial = {n: p.detach().clone() for n, p in dense.model.named_parameters() if p.requires_grad}
    examples = sum(len(b["labels"]) for b in batches)
    unit_steps = 0

    def unit_step() -> float:
        nonlocal unit_steps
        unit_steps += 1
        return training_step(dense, batches[unit_steps % len(batches)])["total"]

    methods = {}
    for method in available_scorers():
        runs, units = [], []
        for _ in range(settings.prune_repeats):
            units.append(unit_step())
            with torch.no_grad():
                for name, param in dense.model.named_parameters():
                    if name in initial:
                        param.copy_(initial[name])
            config = SparsityConfig(method, PRUNE_SPARSITY, num_examples=examples)
            runs.append(sparsify(dense.model, config, batches).seconds)
            remove_sparsity(dense.model)
            units.append(unit_step())
        seconds, step = float(np.median(runs)), float(np.median(units))
        entry = {"seconds": seconds, "runs_s": runs, "step_s": step, "steps": seconds / step}
        if get_scorer(method).needs_data:
            entry["steps_per_batch"] = entry["steps"] / len(batches)
        methods[method] = entry
    return {
        "sparsity": PRUNE_SPARSITY,
        "scoring_examples": examples,
        "scoring_batches": len(batches),
        "methods": methods,
    }


# ----------------------------------------------------------------------------- peak memory


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1))


def memory_probe(
    family: str,
    spec: VariantSpec,
    model_path: str,
    batch_lists: list[dict],
    num_labels: int,
    steps: int,
    threads: int,
) -> dict[str, float]:
    """Run in a fresh process: RSS after setup, and peak RSS over ``steps`` training steps (MiB).

    Allocations of 64 KiB and more are mmap-ed, so freed tensors go back to the OS (glibc would
    otherwise keep memory freed during setup, and training could reuse it unseen); the peak mark
    (VmHWM) is reset to the current RSS once the model is built, pruned and run once.
    """
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    quiet_libraries()
    torch.set_num_threads(threads)
    batches = [{k: torch.tensor(v) for k, v in b.items()} for b in batch_lists]
    variant = make_variant(family, spec, model_path, batches, num_labels)
    if variant.masks:
        apply_masks(variant.model, variant.masks, variant.config)
    # One forward + backward first, as SNIP did for the sparse variants: the kernels' one-time
    # buffers then count as setup for every variant.
    variant.model(**batches[0]).loss.backward()
    variant.model.zero_grad(set_to_none=True)
    gc.collect()
    setup = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for i in range(steps):
        training_step(variant, batches[i % len(batches)])
    peak = _status_kib("VmHWM")
    return {
        "setup_mib": setup / 1024,
        "peak_mib": peak / 1024,
        "training_mib": (peak - setup) / 1024,
    }


def measure_memory(
    family: str,
    settings: CostSettings,
    model_path: str,
    batches: list[dict],
    num_labels: int,
    pool: Any,
) -> dict[str, Any]:
    batch_lists = [{k: v.tolist() for k, v in b.items()} for b in batches]
    variants: dict[str, dict[str, float]] = {}
    for spec in variant_specs(settings):
        args = (family, spec, model_path, batch_lists, num_labels, settings.memory_steps)
        try:
            variants[spec.key] = pool.apply(memory_probe, (*args, settings.threads))
        except ConfigError:
            continue  # no Large-Sparse for this family; measure_steps records why
    dense = variants[DENSE]
    for key, probe in variants.items():
        if key != DENSE:
            probe["ratio"] = probe["peak_mib"] / dense["peak_mib"]
            probe["training_ratio"] = probe["training_mib"] / dense["training_mib"]
    return {"variants": variants}


def probe_pool() -> Any:
    """A pool whose every task runs in a new process, forked from a server that ran no kernel.

    Forking this process itself once it has used OpenMP threads can hang the child.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__"])
    pool = context.Pool(1, maxtasksperchild=1)
    pool.apply(os.getpid)  # wait for the server's imports now, not during a timing
    return pool


# ----------------------------------------------------------------------------- report


def machine_info(threads: int) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    models = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    git = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    try:
        commit = subprocess.run(git, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu": models[0] if models else platform.processor(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        **{p: version(p) for p in ("torch", "transformers", "peft", "adapters", "sparseadapter")},
    }


def verdict(ratio: float, goal: float, ci: list[float] | None = None) -> str:
    text = "PASS" if ratio <= goal else "FAIL"
    if ci is not None and ci[0] <= goal < ci[1]:
        text += " (CI spans goal)"
    return text


def rows_of(results: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The non-dense variants of a section, each with its family and key."""
    return [
        {"family": family, "variant": key, **v}
        for family, fam in results[section].items()
        for key, v in fam["variants"].items()
        if key != DENSE
    ]


def goal_rows(results: dict[str, Any]) -> list[list[str]]:
    """The worst case of each measurement that has a goal."""
    steps = rows_of(results, "step_time")
    memory = [r for r in rows_of(results, "memory") if not is_large_sparse(r["variant"])]
    checks = [
        (
            "Training step, sparse / dense",
            [r for r in steps if not is_large_sparse(r["variant"])],
            "ratio",
            "step_time",
        ),
        (
            "Training step, Large-Sparse / dense",
            [r for r in steps if is_large_sparse(r["variant"])],
            "ratio",
            "large_sparse",
        ),
        (
            "Mask enforcement per step / dense step (profiled)",
            [r for r in steps if not is_large_sparse(r["variant"])],
            "enforcement_share",
            "enforcement_share",
        ),
        ("Peak memory, sparse / dense", memory, "ratio", "memory"),
    ]
    out = []
    for name, rows, key, goal in checks:
        if rows:
            worst = max(rows, key=lambda r: r[key])
            out.append(
                [
                    name,
                    f"{worst['family']} {worst['variant']}",
                    f"{worst[key]:.4f}",
                    f"<= {GOALS[goal]}",
                    verdict(worst[key], GOALS[goal], worst.get("ci95")),
                ]
            )
    return out


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(str(c) for c in row) + " |" for row in rows],
    ]


def header_lines(results: dict[str, Any]) -> list[str]:
    s, m, load = results["settings"], results["machine"], results["load_average"]
    return [
        "# Cost benchmark: sparse vs dense adapters (MiniLM-L6, CPU)",
        "",
        f"Produced by `{results['command']}` ({results['mode']} mode) on {results['date']} "
        f"in {results.get('seconds', 0):.0f} s"
        + (
            f"; report re-rendered with `--render` on {results['rendered']}."
            if "rendered" in results
            else "."
        ),
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; torch {m['torch']} with "
        f"{m['torch_threads']} threads (OMP_WAIT_POLICY={m['omp_wait_policy']}), transformers "
        f"{m['transformers']}, peft {m['peft']}, adapters {m['adapters']}, sparseadapter "
        f"{m['sparseadapter']} (commit {m['git_commit']}), Python {m['python']}, {m['platform']}.",
        f"Load average (1/5/15 min): {load['start']} at the start, {load.get('end')} at the end. "
        "The machine is shared with other processes; that is why steps are interleaved, "
        "ratios carry bootstrap confidence intervals, and the enforcement cost is also measured "
        "directly with the profiler.",
        "",
        f"Data: {s['batches']} fixed GLUE {s['task']} training batches of {s['batch_size']} "
        f"examples, each padded to its longest example (max length {s['max_length']}). A step is "
        "forward + backward + AdamW step + zero_grad, the same for every variant. Sparse variants "
        "are pruned with SNIP on one batch; the engine's gradient hooks and optimizer post-hook "
        "keep them sparse.",
    ]


def step_lines(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    dense = {f: fam["variants"][DENSE] for f, fam in results["step_time"].items()}
    rows = [
        [
            r["family"],
            r["variant"],
            f"{r['sparsity']:.2f}",
            f"{r['trainable']:,}",
            f"{r['median_s'] * 1e3:.1f}",
            f"{r['q1_s'] * 1e3:.1f}-{r['q3_s'] * 1e3:.1f}",
            f"{r['ratio']:.3f}",
            f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}",
            f"{r['paired_ratio']:.3f} ({r['paired_ci95'][0]:.3f}-{r['paired_ci95'][1]:.3f})",
            f"{r['enforcement_ms']:.2f} ({r['enforcement_share']:.2%})",
            verdict(
                r["ratio"],
                GOALS["large_sparse" if is_large_sparse(r["variant"]) else "step_time"],
                r["ci95"],
            ),
        ]
        for r in rows_of(results, "step_time")
    ]
    lines = [
        f"{s['warmup']} untimed warm-up rounds, then {s['rounds']} timed rounds; a round runs one "
        "step of every variant of a family on the same batch, starting from a different variant "
        "each round. Ratio = median step / median dense step (the verdict's measure); paired "
        "ratio = median over rounds of step / dense step in the same round (it cancels the "
        "round's batch length and load); 95% CIs from "
        f"{s['bootstrap']} bootstrap resamples of the rounds. *Enforcement* = CPU ms per "
        f"step in the engine's operators ({', '.join(f'`{o}`' for o in ENFORCEMENT_OPS)}, "
        f"inclusive, minus the dense step's), from {s['profile_steps']} profiled steps per "
        "variant, and its share of the dense step. Goals: sparse <= "
        f"{GOALS['step_time']}, Large-Sparse <= {GOALS['large_sparse']}.",
        "",
        *table(
            [
                "family",
                "variant",
                "sparsity",
                "trainable",
                "median ms",
                "IQR ms",
                "ratio",
                "95% CI",
                "paired ratio (95% CI)",
                "enforcement ms (share)",
                "verdict",
            ],
            rows,
        ),
        "",
        "Dense adapters: "
        + "; ".join(
            f"{f} {d['median_s'] * 1e3:.1f} ms per step, {d['trainable']:,} trainable"
            for f, d in dense.items()
        )
        + ".",
    ]
    skipped = [
        f"- {f} {key}: {reason}"
        for f, fam in results["step_time"].items()
        for key, reason in fam["skipped"].items()
    ]
    if skipped:
        lines += ["", "Skipped:", *skipped]
    phases = [
        [f, key, *(f"{v['phase_median_s'][p] * 1e3:.1f}" for p in PHASES)]
        for f, fam in results["step_time"].items()
        for key, v in fam["variants"].items()
    ]
    lines += ["", "### Where the time goes", "", "Median ms per phase:", ""]
    lines += table(
        ["family", "variant", "forward", "backward", "optimizer step + zero_grad"], phases
    )
    lines += ["", *large_sparse_lines(results)]
    for family, fam in results["step_time"].items():
        if "large_sparse_profile" in fam:
            lines += [
                "",
                f"Large-Sparse {family} misses its goal. Self CPU ms per step (torch.profiler, "
                f"{s['profile_steps']} steps each) of the operators that grow most:",
                "",
                *table(
                    ["operator", "dense ms", "Large-Sparse ms", "extra ms"],
                    [
                        [
                            f"`{r['op']}`",
                            f"{r['dense_ms']:.1f}",
                            f"{r['ms']:.1f}",
                            f"{r['extra_ms']:+.1f}",
                        ]
                        for r in fam["large_sparse_profile"]
                    ],
                ),
            ]
    return lines


def large_sparse_lines(results: dict[str, Any]) -> list[str]:
    """Where a Large-Sparse step spends its extra time: per phase, and how much is enforcement."""
    rows = []
    for family, fam in results["step_time"].items():
        dense = fam["variants"][DENSE]
        for key, v in fam["variants"].items():
            if is_large_sparse(key):
                extra = {p: v["phase_median_s"][p] - dense["phase_median_s"][p] for p in PHASES}
                rows.append(
                    [
                        family,
                        f"{dense['trainable']:,} -> {v['trainable']:,}",
                        f"{(v['median_s'] - dense['median_s']) * 1e3:+.0f}",
                        *(f"{extra[p] * 1e3:+.0f}" for p in PHASES),
                        f"{v['enforcement_ms']:+.1f}",
                    ]
                )
    return [
        "Large-Sparse vs dense, extra ms per step (differences of medians, so the phases need "
        "not add up to the total; enforcement is the profiled part of it). Masks are dense "
        "tensors and pruned weights still enter dense matrix products, so a 4x wider adapter "
        "does about 4x the adapter's arithmetic: the extra time is roughly three times the dense "
        "adapter's own share of the step, whatever the sparsity (per-family reasons in "
        "docs/benchmarks.md, 'Why Large-Sparse can cost more than 10%').",
        "",
        *table(
            ["family", "trainable", "total", "forward", "backward", "optimizer", "enforcement"],
            rows,
        ),
    ]


def pruning_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for family, fam in results["pruning"].items():
        rows = [
            [
                method,
                f"{e['seconds']:.2f}",
                f"{e['step_s'] * 1e3:.0f}",
                f"{e['steps']:.1f}",
                f"{e['steps_per_batch']:.2f}" if "steps_per_batch" in e else "- (data-free)",
            ]
            for method, e in fam["methods"].items()
        ]
        lines += [
            f"{family}: `sparsify` to {fam['sparsity']:.0%} (scoring + mask selection), scoring on "
            f"{fam['scoring_examples']} examples in {fam['scoring_batches']} batches; median of "
            f"{results['settings']['prune_repeats']} run(s). Unit: a training step of the same "
            "dense adapter, timed right before and after each pruning run (median).",
            "",
            *table(
                ["method", "seconds", "step ms", "training steps", "steps per scoring batch"],
                rows,
            ),
            "",
        ]
    return lines


def memory_lines(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    rows = []
    for family, fam in results["memory"].items():
        for key, v in fam["variants"].items():
            has_goal = key != DENSE and not is_large_sparse(key)
            rows.append(
                [
                    family,
                    key,
                    f"{v['setup_mib']:.0f}",
                    f"{v['peak_mib']:.0f}",
                    f"{v['training_mib']:.1f}",
                    f"{v['ratio']:.3f}" if key != DENSE else "-",
                    f"{v['training_ratio']:.3f}" if key != DENSE else "-",
                    verdict(v["ratio"], GOALS["memory"]) if has_goal else "-",
                ]
            )
    return [
        "Each variant runs in its own new process, forked from a server that imported the "
        "libraries and ran nothing. The process builds and prunes the model, runs one forward + "
        "backward, and makes its optimizer; then the peak-RSS mark (VmHWM) is reset to the "
        f"current RSS (`/proc/self/clear_refs`), {s['memory_steps']} training step(s) run, and "
        "VmHWM is read. Allocations of 64 KiB and more are mmap-ed in the probe, so memory freed "
        "during setup returns to the OS and cannot hide growth during training. *Peak* is the "
        "whole process's peak RSS while training (the goal's measure, <= "
        f"{GOALS['memory']} for sparse / dense); *training* is peak minus the RSS before training "
        "(activations, gradients, optimizer state, mask factors). Masks are dense tensors, so "
        "memory does not depend on the sparsity level. Large-Sparse trains a 4x wider adapter and "
        "has no memory goal.",
        "",
        *table(
            [
                "family",
                "variant",
                "setup MiB",
                "peak MiB",
                "training MiB",
                "peak ratio",
                "training ratio",
                "verdict",
            ],
            rows,
        ),
    ]


def checkpoint_lines(data: dict[str, Any] | None) -> list[str]:
    if data is None:
        return [
            "Not measured yet: run `python benchmarks/checkpoint_size.py` (it writes "
            "`benchmarks/results/checkpoint_size.json`), then this script again."
        ]
    rows = [
        [
            r["adapter"],
            r["library"],
            r["sparsity"],
            r["values_dtype"],
            f"{r['dense_bytes']:,}",
            f"{r['sparse_bytes']:,}",
            f"{r['ratio']:.3f}",
            "yes" if r["within_bound"] else "no",
        ]
        for r in data["rows"]
    ]
    return [
        "Read from `benchmarks/results/checkpoint_size.json` (written by "
        "`benchmarks/checkpoint_size.py`; not re-measured here). The format's size bound and "
        "how it is measured are in `checkpoint_size.md`.",
        "",
        *table(
            [
                "adapter",
                "library",
                "sparsity",
                "values",
                "dense bytes",
                "sparse bytes",
                "sparse/dense",
                "within bound",
            ],
            rows,
        ),
    ]


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        *header_lines(results),
        "",
        "## Goals",
        "",
        *table(["measurement", "worst case", "value", "goal", "verdict"], goal_rows(results)),
        "",
        "## Training step time",
        "",
        *step_lines(results),
        "",
        "## Pruning time",
        "",
        *pruning_lines(results),
        "## Peak memory",
        "",
        *memory_lines(results),
        "",
        "## Checkpoint bytes",
        "",
        *checkpoint_lines(results.get("checkpoint_size")),
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

ARGUMENT_TYPES = {"int": int, "float": float, "str": str, "list[str]": str, "list[float]": float}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one family, tiny batches")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"folder for cost.json/.md (default {RESULTS.relative_to(REPO)}; with --quick "
        f"{QUICK_OUTPUT.relative_to(REPO)}, so a smoke run leaves the committed results alone)",
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
        default=str(GLUE_DIR) if GLUE_DIR.is_dir() else None,
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
    output.mkdir(parents=True, exist_ok=True)
    (output / "cost.json").write_text(json.dumps(results, indent=1) + "\n")
    (output / "cost.md").write_text(render_markdown(results))


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
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
        "step_time": {},
        "pruning": {},
        "memory": {},
    }
    results["machine"] = machine_info(settings.threads)
    model_path = resolve_model(args.model)
    num_labels = get_task(settings.task).num_labels
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
