"""benchmarks/lora_alignment.py --quick: aligned pair selection leaves no LoRA module dead."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lora_alignment.py"


@pytest.mark.slow
def test_quick_run_counts_dead_modules_and_aligned_selection_has_none():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(
        r"\| r (\d+) \| (\d+)% \| (per weight|aligned pairs) \| (\d+) of 12 \|", done.stdout
    )
    assert len(rows) == 16
    assert all(dead == "0" for *_, selection, dead in rows if selection == "aligned pairs")
    low = [dead for _, sparsity, selection, dead in rows if int(sparsity) <= 60]
    assert low and all(dead == "0" for dead in low)
