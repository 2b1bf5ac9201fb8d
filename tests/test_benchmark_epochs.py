"""benchmarks/epochs.py --quick: a dev score per epoch, and a finished run is read, not retrained."""

import json
import re

import pytest
from helpers import run_benchmark


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_quick_run_scores_every_epoch_and_reuses_finished_runs(tmp_path):
    first = run_benchmark("epochs.py", "--quick", "--runs-dir", str(tmp_path))
    (row,) = re.findall(r"\| rte \| accuracy \| 1 \| ([\d.]+) \| ([\d.]+) \| 6 \|", first.stdout)
    run = tmp_path / "rte-houlsby-dense-e2-s1"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [f"{100 * e['score']:.1f}" for e in epochs] == list(row)  # the run's own epochs
    stamp = (run / "final.json").stat().st_mtime_ns
    again = run_benchmark("epochs.py", "--quick", "--runs-dir", str(tmp_path))
    assert "| rte | accuracy | 1 | {} | {} | 6 |".format(*row) in again.stdout
    assert (run / "final.json").stat().st_mtime_ns == stamp  # read, not trained again
