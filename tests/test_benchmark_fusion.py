"""benchmarks/fusion.py on a few examples: task adapters trained once, fused for RTE, recorded,
and a recorded run read back instead of trained again, but never for a grid of other caps."""

import json
import subprocess
import sys

import pytest
from helpers import BENCHMARKS, run_benchmark


@pytest.mark.slow
@pytest.mark.adapterhub  # AdapterFusion is AdapterHub's
def test_small_grid_records_fuses_and_resumes(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = [
        "--source-examples", "32", "--train-examples", "32", "--eval-examples", "32",
        "--source-epochs", "1", "--epochs", "1", "--seeds", "1",
        "--variants", "single-dense", "fusion-snip40/snip40",
        "--runs-dir", str(runs), "--results-dir", str(results),
    ]  # fmt: skip
    first = run_benchmark("fusion.py", *args)
    records = [json.loads(x) for x in (results / "fusion_runs.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in records) == sorted(
        ["rte-single-dense-s1", "rte-fusion-snip40/snip40-s1"]
        + [f"source-{t}-houlsby-snip40" for t in ("sst2", "mrpc", "cola", "stsb")]
    )
    fused = json.loads((runs / "rte-fusion-snip40_snip40-s1" / "final.json").read_text())
    assert fused["sparsity"]["achieved_sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert fused["parameters"]["frozen_adapters"] > 0
    by_key = {r["key"]: r for r in records}
    for key, label in [
        ("rte-single-dense-s1", "single-task Houlsby, dense"),
        ("rte-fusion-snip40/snip40-s1", "fusion of SNIP-40% task adapters, fusion SNIP 40%"),
    ]:
        row = f"| rte | {label} | 1 | {100 * by_key[key]['score']:.1f} |"
        assert row in first.stdout and row in (results / "fusion.md").read_text()
    stamp = (runs / "rte-single-dense-s1" / "final.json").stat().st_mtime_ns
    run_benchmark("fusion.py", *args)
    assert (runs / "rte-single-dense-s1" / "final.json").stat().st_mtime_ns == stamp
    assert len((results / "fusion_runs.jsonl").read_text().splitlines()) == len(records)


@pytest.mark.slow
@pytest.mark.adapterhub  # the Houlsby adapter is AdapterHub's
def test_a_grid_of_other_caps_stops_instead_of_joining_the_records(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = [
        "--train-examples", "16", "--eval-examples", "16", "--epochs", "1", "--seeds", "1",
        "--variants", "single-dense", "--runs-dir", str(runs), "--results-dir", str(results),
    ]  # fmt: skip
    run_benchmark("fusion.py", *args)
    [record] = [json.loads(x) for x in (results / "fusion_runs.jsonl").read_text().splitlines()]
    assert record["max_train_samples"] == 16
    final = runs / "rte-single-dense-s1" / "final.json"
    stamp = final.stat().st_mtime_ns
    # more examples: the recorded run is not this grid's, nor is the folder's run
    bigger = [*args, "--train-examples", "24"]
    stopped = subprocess.run([sys.executable, str(BENCHMARKS / "fusion.py"), *bigger],
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert stopped.returncode != 0 and "is recorded with" in stopped.stderr
    assert "'max_train_samples': 16" in stopped.stderr
    (results / "fusion_runs.jsonl").unlink()  # the record lost, the folder kept
    stopped = subprocess.run([sys.executable, str(BENCHMARKS / "fusion.py"), *bigger],
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert stopped.returncode != 0 and "holds a finished run of another config" in stopped.stderr
    assert final.stat().st_mtime_ns == stamp  # never overwritten
    # the same caps again: the folder's run is read back, not trained again
    run_benchmark("fusion.py", *args)
    assert final.stat().st_mtime_ns == stamp
    [again] = [json.loads(x) for x in (results / "fusion_runs.jsonl").read_text().splitlines()]
    assert again["score"] == record["score"] and again["seconds"] > 0
