"""The README's Python example runs as written (on the real MiniLM-L6 and GLUE files)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "the README has exactly one Python example"
    return blocks[0]


def test_readme_starts_with_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```\n(.*?)```", text, flags=re.S).group(1)
    commands = [line for line in first_block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert (
        commands[0].startswith("pip install torch==2.13.0 ")
        and "sparseadapter train" in commands[0]
    )
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci.splitlines(), "CI must run the README's test command"


@pytest.mark.slow
def test_readme_python_example_runs():
    shutil.rmtree(ROOT / "runs" / "readme-lora", ignore_errors=True)  # the example writes it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-c", _python_block()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "32 0.75" in result.stdout
    total = re.search(r"^total\s+(\d+)\s+(\d+)\s+(\d+)\s+0\.4000$", result.stdout, flags=re.M)
    assert total and int(total.group(2)) == round(0.6 * int(total.group(1)))
    assert (ROOT / "runs" / "readme-lora" / "adapter.safetensors").is_file()
