"""benchmarks/fusion.py on a few examples: task adapters trained once, fused for RTE, recorded,
and a recorded run read back instead of trained again."""

import json

import pytest
from helpers import run_benchmark


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
