"""An interrupted run resumed with ``--resume`` ends exactly like a run that was never interrupted.

The run is killed with SIGKILL in a child process, once between two checkpoints (the batches
trained since the last checkpoint are lost and trained again) and once in the middle of
writing a checkpoint. The child kills itself at a fixed checkpoint, so the kill always lands
mid-epoch whatever the machine's load. The tiny BERT keeps its dropout, so the resumed run only
matches if the RNG states are restored too. Everything runs on one thread (bitwise comparison).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparseadapter.cli import main
from sparseadapter.resume import RESUME_FILE, read_resume_state

# 48 examples in batches of 8: 6 steps per epoch; checkpoints after steps 2, 4, epoch 1, 8, 10,
# epoch 2. The 5th checkpoint is the one after step 10 (epoch 2, batch 4).
STEPS_PER_EPOCH = 6
KILL_AT_CHECKPOINT = 5

# Runs the CLI in a child that SIGKILLs itself at checkpoint KILL_AT: "before" it is written,
# or "during" the write (after half of its bytes reached the temporary file).
CHILD = """
import io, os, signal, sys
import torch
import sparseadapter.files as files
import sparseadapter.train as train
mode, kill_at = sys.argv[1], int(sys.argv[2])
calls = 0
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
real_write, real_write_file = train.write_resume_state, files.write_file
def write(path, payload):
    global calls
    calls += 1
    if mode == "before" and calls == kill_at:
        kill()
    real_write(path, payload)
def write_file(path, write_data):
    if mode != "during" or calls != kill_at:
        return real_write_file(path, write_data)
    def half(f):
        data = io.BytesIO()
        write_data(data)
        f.write(data.getvalue()[: len(data.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        kill()
    real_write_file(path, half)
train.write_resume_state, files.write_file = write, write_file
from sparseadapter.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_args(tiny_bert: str, glue_dir: Path, output: Path) -> list[str]:
    return [
        "train", "--model", tiny_bert, "--task", "stsb", "--data-dir", str(glue_dir),
        "--max-train-samples", "48", "--max-eval-samples", "32", "--max-length", "32",
        "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--pruner", "snip",
        "--scoring-examples", "16", "--checkpoint-every", "2", "--output", str(output), "--quiet",
    ]  # fmt: skip


def outcome(run: Path) -> dict:
    """What must not depend on an interruption: scores, epoch records, the saved weights' bytes."""
    [weights] = run.glob("*/*.safetensors")  # adapter/adapter.safetensors or model/ (full)
    final = json.loads((run / "final.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "score": final["score"],
        "dev": final["dev"],
        "selected_epoch": final["selected_epoch"],
        "sparsity": {k: v for k, v in (final["sparsity"] or {}).items() if k != "seconds"},
        "parameters": final["parameters"],
        "epochs": epochs,
        "weights": weights.read_bytes(),
    }


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, glue_dir, tmp_path_factory) -> dict:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(run_args(tiny_bert, glue_dir, run)) == 0
    return outcome(run)


def killed_run(mode: str, args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", CHILD, mode, str(KILL_AT_CHECKPOINT), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.parametrize("mode", ["before", "during"])
def test_sigkill_then_resume_gives_the_same_run(
    mode,
    uninterrupted,
    tiny_bert,
    glue_dir,
    tmp_path,
):
    run = tmp_path / "run"
    killed_run(mode, run_args(tiny_bert, glue_dir, run))
    assert not run.exists()
    partial = run.with_name("run.partial")
    # the last complete checkpoint is the 4th (after step 8: epoch 2, batch 2), even when the
    # process died while writing the 5th
    progress = read_resume_state(partial / RESUME_FILE)["progress"]
    assert (progress["epoch"], progress["batches_done"], progress["steps"]) == (2, 2, 8)
    assert 0 < progress["batches_done"] < STEPS_PER_EPOCH
    assert len(progress["history"]) == 1
    leftover = list(partial.glob(f".{RESUME_FILE}.tmp-*"))
    assert bool(leftover) == (mode == "during")

    torch.set_num_threads(1)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert outcome(run) == uninterrupted
    assert not partial.exists()
    assert not [p.name for p in run.iterdir() if RESUME_FILE in p.name]
    assert "resumed at epoch 2, batch 2" in (run / "log.txt").read_text()


def assert_killed_run_resumes_to_reference(args: list[str], tmp_path: Path) -> None:
    """``args`` (output: tmp_path/reference) run once uninterrupted, once killed and resumed."""
    torch.set_num_threads(1)
    assert main(args) == 0
    reference = outcome(tmp_path / "reference")
    run = tmp_path / "run"
    killed_run("before", [str(run) if a == str(tmp_path / "reference") else a for a in args])
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert outcome(run) == reference
    assert "resumed at epoch 2, batch 2" in (run / "log.txt").read_text()


def test_resume_with_length_grouped_batches(tiny_bert, glue_dir, tmp_path):
    args = run_args(tiny_bert, glue_dir, tmp_path / "reference")
    assert_killed_run_resumes_to_reference([*args, "--set", "data.group_by_length=true"], tmp_path)


def test_resume_full_finetuning(tiny_bert, glue_dir, tmp_path):
    # full fine-tuning trains the embeddings, which the checkpoint's base-model identity hashes
    args = run_args(tiny_bert, glue_dir, tmp_path / "reference")
    for flag in ("--pruner", "--scoring-examples"):
        del args[args.index(flag) : args.index(flag) + 2]
    args += ["--adapter", "full", "--lr", "0.001"]  # the last --lr counts
    assert_killed_run_resumes_to_reference(args, tmp_path)
