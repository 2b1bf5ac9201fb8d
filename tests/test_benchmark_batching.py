"""benchmarks/batching.py --quick: padding and speed of grouped vs shuffled batches, end to end."""

import re

import pytest
from helpers import run_benchmark


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_quick_run_reports_padding_and_speed():
    done = run_benchmark("batching.py", "--quick")
    rows = dict(re.findall(r"\| (rte|sst2) \| \d+ \| ([\d.]+ \| [\d.]+) \|", done.stdout))
    assert set(rows) == {"rte", "sst2"}
    for cells in rows.values():
        shuffled, grouped = (float(x) for x in cells.split(" | "))
        assert 1.0 <= grouped < shuffled
    speedup = float(re.search(r"\*\*([\d.]+)x\*\*", done.stdout).group(1))
    speeds = dict(re.findall(r"\| (grouped|shuffled) \| ([\d.]+) \|", done.stdout))
    assert speedup == pytest.approx(float(speeds["grouped"]) / float(speeds["shuffled"]), abs=0.02)
