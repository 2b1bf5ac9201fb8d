"""Pruning time (in training steps of the dense adapter) and peak memory (a fresh process per
variant), and the machine the run measured on."""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import platform
import re
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import BENCHMARKS, ROOT
from cost_settings import (
    DENSE,
    M_MMAP_THRESHOLD,
    PRUNE_SPARSITY,
    CostSettings,
    VariantSpec,
    variant_specs,
)
from cost_variants import make_variant, quiet_libraries, training_step

from sparseadapter import (
    SparsityConfig,
    apply_masks,
    remove_sparsity,
    sparsify,
)
from sparseadapter.errors import ConfigError
from sparseadapter.scoring import available_scorers, get_scorer


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
    # The server imports this script (``__main__``) by its path, which puts no folder on its
    # sys.path: the script's sibling modules are found through PYTHONPATH, which it inherits.
    paths = [str(BENCHMARKS), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__"])
    pool = context.Pool(1, maxtasksperchild=1)
    pool.apply(os.getpid)  # wait for the server's imports now, not during a timing
    return pool


def machine_info(threads: int) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    models = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    git = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
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
