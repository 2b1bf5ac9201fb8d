"""benchmarks/cost.py: the --quick run end to end, and the ratio statistics it reports."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from helpers import run_benchmark

from sparseadapter import available_scorers

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cost.py"


@pytest.fixture(scope="module")
def cost():
    spec = importlib.util.spec_from_file_location("cost_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations there
    spec.loader.exec_module(module)
    return module


def is_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, Path]:
    output = tmp_path_factory.mktemp("cost")
    run_benchmark("cost.py", "--quick", "--output", str(output))
    return json.loads((output / "cost.json").read_text()), (output / "cost.md").read_text(), output


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_quick_run_reports_step_time_ratios(quick_run):
    results, _, _ = quick_run
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
    results, _, _ = quick_run
    for family in results["pruning"].values():
        assert list(family["methods"]) == available_scorers()
        for method, entry in family["methods"].items():
            assert is_positive(entry["seconds"]) and is_positive(entry["step_s"])
            assert entry["steps"] == pytest.approx(entry["seconds"] / entry["step_s"])
            assert ("steps_per_batch" in entry) == (method in ("snip", "grasp"))
    for family in results["memory"].values():
        for key, probe in family["variants"].items():
            assert probe["peak_mib"] >= probe["setup_mib"] > 0
            if key != "dense":
                assert is_positive(probe["ratio"]) and is_positive(probe["training_ratio"])


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_quick_run_writes_the_markdown_report(quick_run):
    results, markdown, _ = quick_run
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
    _, markdown, output = quick_run
    (output / "cost.md").unlink()
    assert cost.main(["--render", "--output", str(output)]) == 0
    rendered = (output / "cost.md").read_text()
    assert "re-rendered with `--render`" in rendered
    assert rendered.split("\n", 3)[3] == markdown.split("\n", 3)[3]  # same body


def test_ratio_with_ci_of_paired_rounds(cost):
    dense = [1.0, 1.2, 0.9, 3.0, 1.1]
    stats = cost.ratio_with_ci([2 * t for t in dense], dense, resamples=200)
    assert stats["ratio"] == stats["paired_ratio"] == pytest.approx(2.0)
    assert stats["ci95"] == stats["paired_ci95"] == pytest.approx([2.0, 2.0])
    # a slow first round: the ratio of medians mixes rounds, the paired ratio does not
    mixed = cost.ratio_with_ci([3.0, 2.2, 4.4], [1.0, 2.0, 4.0], resamples=200)
    assert mixed["ratio"] == pytest.approx(1.5)
    assert mixed["paired_ratio"] == pytest.approx(1.1)
    noisy = cost.ratio_with_ci([1.0, 1.5, 1.1, 1.2, 1.3], dense, resamples=500)
    assert noisy["ci95"][0] < noisy["ratio"] < noisy["ci95"][1]


def test_verdict_flags_a_confidence_interval_that_spans_the_goal(cost):
    assert cost.verdict(1.01, 1.02, [1.00, 1.015]) == "PASS"
    assert cost.verdict(1.01, 1.02, [0.98, 1.05]) == "PASS (CI spans goal)"
    assert cost.verdict(1.10, 1.02, [1.05, 1.15]) == "FAIL"
    assert cost.verdict(1.03, 1.02) == "FAIL"


def test_quick_run_leaves_the_committed_results_alone(cost):
    assert cost.parse_args(["--quick"]).output == cost.QUICK_OUTPUT != cost.RESULTS
    assert cost.parse_args([]).output == cost.RESULTS
    assert cost.parse_args(["--quick", "--output", "x"]).output == Path("x")
