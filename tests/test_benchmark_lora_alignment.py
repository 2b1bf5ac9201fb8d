"""benchmarks/lora_alignment.py --quick: aligned pair selection leaves no LoRA module dead."""

import re

import pytest
from helpers import run_benchmark


@pytest.mark.slow
def test_quick_run_counts_dead_modules_and_aligned_selection_has_none():
    done = run_benchmark("lora_alignment.py", "--quick")
    rows = re.findall(
        r"\| r (\d+) \| (\d+)% \| (per weight|aligned pairs) \| (\d+) of 12 \|", done.stdout
    )
    assert len(rows) == 16
    assert all(dead == "0" for *_, selection, dead in rows if selection == "aligned pairs")
    low = [dead for _, sparsity, selection, dead in rows if int(sparsity) <= 60]
    assert low and all(dead == "0" for dead in low)
