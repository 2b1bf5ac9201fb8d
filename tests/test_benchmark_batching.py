"""benchmarks/batching.py --quick: padding and speed of grouped vs shuffled batches, end to end."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "batching.py"


@pytest.mark.slow
def test_quick_run_reports_padding_and_speed():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = dict(re.findall(r"\| (rte|sst2) \| \d+ \| ([\d.]+ \| [\d.]+) \|", done.stdout))
    assert set(rows) == {"rte", "sst2"}
    for cells in rows.values():
        shuffled, grouped = (float(x) for x in cells.split(" | "))
        assert 1.0 <= grouped < shuffled
    speedup = float(re.search(r"\*\*([\d.]+)x\*\*", done.stdout).group(1))
    assert speedup > 0
