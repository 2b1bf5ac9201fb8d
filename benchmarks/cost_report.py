"""``cost.md``: the cost benchmark's results as a report, from ``cost.json`` alone."""

from __future__ import annotations

from typing import Any

from cost_settings import DENSE, ENFORCEMENT_OPS, GOALS, PHASES, is_large_sparse


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


MODEL_NAMES = {"minilm": "MiniLM-L6", "smollm2": "SmolLM2-135M, 4-bit GGUF dequantized"}


def header_lines(results: dict[str, Any]) -> list[str]:
    s, m, load = results["settings"], results["machine"], results["load_average"]
    model = results.get("model", "minilm")  # results from before the key existed: MiniLM
    return [
        f"# Cost benchmark: sparse vs dense adapters ({MODEL_NAMES.get(model, model)}, CPU)",
        "",
        *(f"> {line}".rstrip() for note in results.get("notes", []) for line in note.splitlines()),
        *([""] if results.get("notes") else []),
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
            r["pruner"],
            r["sparsity"],
            r["precision"],
            f"{r['dense_bytes']:,}",
            f"{r['sparse_bytes']:,}",
            f"{r['ratio']:.3f}",
            "yes" if r["within_bound"] else "no",
        ]
        for r in data["sizes"]
        if r["precision"] in ("fp32", "fp16")
    ]
    return [
        "Read from `benchmarks/results/checkpoint_size.json` (written by "
        "`benchmarks/checkpoint_size.py`; not re-measured here). The format's size bound and "
        "how it is measured are in `checkpoint_size.md`.",
        "",
        *table(
            [
                "adapter",
                "pruner",
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
