"""benchmarks/batching.py --quick: padding and speed of grouped vs shuffled batches, end to end."""

import math
import re

import pytest
from helpers import run_benchmark


@pytest.mark.slow
@pytest.mark.adapterhub  # the benchmark measures AdapterHub adapters
def test_quick_run_reports_padding_and_speed(glue_dir):
    done = run_benchmark("batching.py", "--quick")
    rows = re.findall(r"\| (rte|sst2) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", done.stdout)
    assert {task for task, *_ in rows} == {"rte", "sst2"}
    examples = {task: int(n) for task, n, *_ in rows}
    rte_lines = (glue_dir / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    assert examples == {"rte": len(rte_lines) - 1, "sst2": 8000}  # header; SST-2's 8k subset
    for _, _, shuffled, grouped in rows:
        assert 1.0 <= float(grouped) < float(shuffled)
    speeds = dict(re.findall(r"\| (grouped|shuffled) \| ([\d.]+) \| (?:\d+) \|", done.stdout))
    assert set(speeds) == {"grouped", "shuffled"}
    speedup = float(re.search(r"\*\*([\d.]+)x\*\*", done.stdout).group(1))
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in [*speeds.values(), speedup])
