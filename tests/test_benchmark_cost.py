"""benchmarks/cost.py: the --quick run end to end, and the ratio statistics it reports."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from helpers import benchmark_module, run_benchmark

BUILT_IN_METHODS = {"random", "magnitude", "snip", "grasp", "synflow"}


@pytest.fixture(scope="module")
def cost():
    return benchmark_module("cost")


def is_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, Path, float]:
    """The results, the report, their folder, and the run's wall-clock seconds."""
    output = tmp_path_factory.mktemp("cost")
    start = time.monotonic()
    run_benchmark("cost.py", "--quick", "--output", str(output))
    wall = time.monotonic() - start
    results = json.loads((output / "cost.json").read_text())
    return results, (output / "cost.md").read_text(), output, wall


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_quick_run_reports_step_time_ratios(quick_run):
    results, *_ = quick_run
    settings = results["settings"]
    assert results["mode"] == "quick"
    assert results["machine"]["torch_threads"] == settings["threads"]
    assert {"cpu", "torch", "logical_cpus"} <= set(results["machine"])
    assert len(results["load_average"]["start"]) == len(results["load_average"]["end"]) == 3
    assert set(results["step_time"]) == set(settings["families"])
    for family in results["step_time"].values():
        variants = family["variants"]
        assert set(variants) == {"dense", "sparse-40", "sparse-90", "large-sparse-4x"}
        assert all(len(v["steps_s"]) == settings["rounds"] for v in variants.values())
        for key, v in variants.items():
            if key == "dense":
                continue
            for ratio, (low, high) in (
                (v["ratio"], v["ci95"]),
                (v["paired_ratio"], v["paired_ci95"]),
            ):
                assert is_positive(ratio) and is_positive(low) and low <= high
            assert math.isfinite(v["enforcement_ms"])
            # the masks are real: the kept fraction matches the variant's sparsity
            assert v["kept"] / v["prunable"] == pytest.approx(1 - v["sparsity"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_quick_run_reports_pruning_and_memory(quick_run):
    results, _, _, wall = quick_run
    for name, family in results["pruning"].items():
        # the benchmark runs in its own process: every built-in method, none registered here
        assert set(family["methods"]) == BUILT_IN_METHODS
        pruning = sum(s for entry in family["methods"].values() for s in entry["runs_s"])
        assert 0 < pruning < wall  # the runs took part of the run's wall-clock time
        # in units of the dense training step timed by the step-time section (another clock):
        # within a factor of 10 of the measured seconds
        dense_step = results["step_time"][name]["variants"]["dense"]["median_s"]
        for method, entry in family["methods"].items():
            assert is_positive(entry["seconds"]) and is_positive(entry["step_s"])
            assert 0.1 < entry["steps"] * dense_step / entry["seconds"] < 10
            assert ("steps_per_batch" in entry) == (method in ("snip", "grasp"))
    for family in results["memory"].values():
        for key, probe in family["variants"].items():
            assert probe["peak_mib"] >= probe["setup_mib"] > 0
            if key != "dense":
                assert is_positive(probe["ratio"]) and is_positive(probe["training_ratio"])


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_quick_run_writes_the_markdown_report(quick_run):
    results, markdown, *_ = quick_run
    for section in ("## Goals", "## Training step time", "## Pruning time", "## Peak memory"):
        assert section in markdown
    assert "## Checkpoint bytes" in markdown
    for family, data in results["step_time"].items():
        for key, v in data["variants"].items():
            if key != "dense":
                assert f"| {family} | {key} | " in markdown
                assert f"{v['ratio']:.3f}" in markdown


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_render_rewrites_the_report_from_the_json(quick_run, cost):
    _, markdown, output, _ = quick_run
    (output / "cost.md").unlink()
    assert cost.main(["--render", "--output", str(output)]) == 0
    rendered = (output / "cost.md").read_text()
    assert "re-rendered with `--render`" in rendered
    assert rendered.split("\n", 3)[3] == markdown.split("\n", 3)[3]  # same body


def test_ratio_with_ci_of_paired_rounds():
    cost_steps = benchmark_module("cost_steps")
    dense = [1.0, 1.2, 0.9, 3.0, 1.1]
    stats = cost_steps.ratio_with_ci([2 * t for t in dense], dense, resamples=200)
    assert stats["ratio"] == stats["paired_ratio"] == pytest.approx(2.0)
    assert stats["ci95"] == stats["paired_ci95"] == pytest.approx([2.0, 2.0])
    # a slow first round: the ratio of medians mixes rounds, the paired ratio does not
    mixed = cost_steps.ratio_with_ci([3.0, 2.2, 4.4], [1.0, 2.0, 4.0], resamples=200)
    assert mixed["ratio"] == pytest.approx(1.5)
    assert mixed["paired_ratio"] == pytest.approx(1.1)
    noisy = cost_steps.ratio_with_ci([1.0, 1.5, 1.1, 1.2, 1.3], dense, resamples=500)
    assert noisy["ci95"][0] < noisy["ratio"] < noisy["ci95"][1]


def test_verdict_flags_a_confidence_interval_that_spans_the_goal():
    cost_report = benchmark_module("cost_report")
    assert cost_report.verdict(1.01, 1.02, [1.00, 1.015]) == "PASS"
    assert cost_report.verdict(1.01, 1.02, [0.98, 1.05]) == "PASS (CI spans goal)"
    assert cost_report.verdict(1.10, 1.02, [1.05, 1.15]) == "FAIL"
    assert cost_report.verdict(1.03, 1.02) == "FAIL"


def test_quick_run_leaves_the_committed_results_alone(cost):
    assert cost.parse_args(["--quick"]).output == cost.QUICK_OUTPUT != cost.RESULTS
    assert cost.parse_args([]).output == cost.RESULTS
    assert cost.parse_args(["--quick", "--output", "x"]).output == Path("x")
