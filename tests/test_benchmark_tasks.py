"""benchmarks/tasks.py: the Welch comparison on a hand-worked case, the refusal to compare runs
of two devices, cells kept apart by their settings, and a one-run SQuAD cell recorded and then
read back instead of trained again, but never for a run of other settings."""

import json
import math
import subprocess
import sys

import pytest
from helpers import BENCHMARKS, benchmark_module, run_benchmark


def record(arm: str, seed: int, score: float, device: str = "cpu") -> dict:
    return {
        "task": "squad", "adapter": "lora", "arm": arm, "seed": seed, "device": device,
        "transformers": "4", "metrics": {"f1": score}, "score": score, "main_metric": "f1",
        "nonzero": 10,
    }  # fmt: skip


def test_welch_on_a_hand_worked_case():
    tasks = benchmark_module("tasks")
    # a = 1, 2, 3 and b = 0, 0, 0: difference 2, standard error sqrt(1/3), 2 degrees of freedom;
    # Student's t with 2 df: two-sided p = 1 - t / sqrt(2 + t^2), t(0.975, 2) = 4.3027
    diff, low, high, p = tasks.welch([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    t = 2 / math.sqrt(1 / 3)
    assert diff == pytest.approx(2.0)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert (low, high) == pytest.approx(
        (2 - 4.3027 * math.sqrt(1 / 3), 2 + 4.3027 * math.sqrt(1 / 3)), abs=1e-3
    )


def test_report_refuses_a_comparison_across_devices():
    tasks = benchmark_module("tasks")
    rows = [record("dense", s, 0.5) for s in (1, 2)] + [record("snip40", 1, 0.4, "NVIDIA H200")]
    with pytest.raises(SystemExit, match="squad/lora mixes devices"):
        tasks.report(rows)
    rows[-1]["device"] = "cpu"
    assert "| snip40 | 1 | 0 | 10 |" in tasks.report(rows)


@pytest.mark.slow
def test_one_run_cell_records_and_resumes(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "runs.jsonl"
    args = [
        "--task", "squad", "--adapters", "lora", "--arms", "dense", "--seeds", "1",
        "--train", "16", "--eval", "8", "--epochs", "1", "--runs-dir", str(runs),
        "--records", str(records), "--extra", "--select last",
    ]  # fmt: skip
    run_benchmark("tasks.py", *args)
    [first] = [json.loads(x) for x in records.read_text().splitlines()]
    assert first["options"] == "--select last" and first["examples"]["validation"] == 8
    assert set(first["metrics"]) >= {"exact_match", "f1"}
    final = runs / "squad-lora-dense-s1" / "final.json"
    assert first["score"] == json.loads(final.read_text())["score"]
    stamp = final.stat().st_mtime_ns
    run_benchmark("tasks.py", *args)
    assert final.stat().st_mtime_ns == stamp
    assert len(records.read_text().splitlines()) == 1
    # another rate is another run: not found among the records, and its folder (a run of the
    # first rate) is refused instead of read as its result
    other = [*args, "--lr", "3e-3"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "tasks.py"), *other], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "holds a finished run of another config" in done.stderr and "train.lr" in done.stderr
    assert final.stat().st_mtime_ns == stamp
    assert len(records.read_text().splitlines()) == 1
    run_benchmark("tasks.py", *other, "--runs-dir", str(tmp_path / "other"))  # the last wins
    second = json.loads(records.read_text().splitlines()[1])
    assert (first["lr"], second["lr"]) == (1e-3, 3e-3) and first["model"] == "minilm"


def test_cells_are_kept_apart_by_their_settings():
    tasks = benchmark_module("tasks")
    old = [record("dense", s, 0.5) for s in (1, 2)]  # written before settings were recorded
    assert tasks.recorded_settings(old[0])["model"] == "minilm"  # SQuAD's default model
    assert tasks.recorded_settings(old[0])["lr"] == tasks.DEFAULTS["squad"]["lr"]
    mpnet = [{**record("dense", s, 0.9), "model": "mpnet-base"} for s in (1, 2)]
    text = tasks.report(old + mpnet)
    assert text.count("## squad, lora") == 2
    assert "50.00 ± 0.00" in text and "90.00 ± 0.00" in text  # each cell its own dense mean
    assert tasks.run_key(old[0]) != tasks.run_key(mpnet[0])
