"""Nothing of the user's is lost or mixed: a second process on the same output, folders that are
not runs, damaged resume state, a full disk, sweep runs that would share a folder."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparseadapter import files
from sparseadapter.cli import main
from sparseadapter.errors import CheckpointError, ConfigError
from sparseadapter.resume import RESUME_FILE, read_resume_state, write_resume_state
from sparseadapter.sweep import SweepSpec, load_sweep

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sparseadapter.files import exclusive
    with exclusive(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture
def holder():
    """Start a process that holds the lock of an output; yields a function taking the path."""
    children = []

    def hold(output: Path) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "locked"
        children.append(child)
        return child

    yield hold
    for child in children:
        child.kill()
        child.wait()


def tiny_run(tiny_bert: str, data: Path, output: Path, *extra: str) -> int:
    return main(
        [
            "train", "--model", tiny_bert, "--task", "rte", "--data-dir", str(data),
            "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--scoring-examples", "8",
            "--adapter", "lora", "--pruner", "magnitude", "--output", str(output), "--quiet",
            *extra,
        ]
    )  # fmt: skip


def test_a_second_process_on_one_output_is_refused(tiny_bert, tiny_glue, tmp_path, capsys, holder):
    run = tmp_path / "run"
    holder(run)
    assert tiny_run(tiny_bert, tiny_glue, run) == 2
    err = capsys.readouterr().err
    assert "another sparseadapter process is writing" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock"]  # the holder's own


def test_a_second_sweep_on_one_folder_is_refused(tmp_path, capsys, holder):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"output: {tmp_path / 'out'}\ngrid:\n  pruner: [snip]\n")
    holder(tmp_path / "out")
    assert main(["sweep", str(spec)]) == 2
    assert "another sparseadapter process is writing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    output = tmp_path / "run"
    child = holder(output)
    with pytest.raises(ConfigError, match="another sparseadapter process"), files.exclusive(output):
        pass
    child.send_signal(signal.SIGKILL)
    child.wait()
    with files.exclusive(output):  # the OS released the dead process's lock
        assert files.lock_path(output).exists()
    assert not files.lock_path(output).exists()


def test_overwrite_never_replaces_a_folder_that_only_looks_like_a_run(
    tiny_bert, tiny_glue, tmp_path, capsys
):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "final.json").write_text("{}")
    (mine / "config.yaml").write_text("{}")
    assert tiny_run(tiny_bert, tiny_glue, mine, "--overwrite") == 2
    assert "is not a sparseadapter run" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "final.json", "notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_users_partial_folder_is_never_cleared(tiny_bert, tiny_glue, tmp_path, capsys):
    partial = tmp_path / "run.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        assert tiny_run(tiny_bert, tiny_glue, tmp_path / "run", *extra) == 2
        assert "was not left by a sparseadapter run" in capsys.readouterr().err
    assert (partial / "notes.txt").read_text() == "keep me"


def test_a_partial_folder_a_failed_run_left_is_cleared(tiny_bert, tiny_glue, tmp_path):
    run = tmp_path / "run"
    partial = run.with_name("run.partial")
    partial.mkdir()
    (partial / ".sparseadapter-run").write_text("")
    (partial / "log.txt").write_text("an earlier attempt")
    assert tiny_run(tiny_bert, tiny_glue, run) == 0
    assert not partial.exists() and (run / "final.json").is_file()
    assert not (run / ".sparseadapter-run").exists()


def test_a_damaged_resume_checkpoint_is_refused(tmp_path):
    path = tmp_path / RESUME_FILE
    write_resume_state(path, {"trainable": {"w": torch.arange(4096, dtype=torch.float32)}})
    assert torch.equal(read_resume_state(path)["trainable"]["w"], torch.arange(4096.0))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its SHA-256 check"):
        read_resume_state(path)


def test_a_full_disk_during_training_is_one_line_and_leaves_no_temporary_file(
    tiny_bert, tiny_glue, tmp_path, capsys, monkeypatch
):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    run = tmp_path / "run"
    assert tiny_run(tiny_bert, tiny_glue, run, "--checkpoint-every", "1") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "No space left on device; free some disk space" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run, no temporary file, no lock


def test_a_one_epoch_run_logs_its_checkpoint_after_epoch_1(tiny_bert, tiny_glue, tmp_path):
    run = tmp_path / "run"
    assert tiny_run(tiny_bert, tiny_glue, run, "--checkpoint-every", "100") == 0
    log = (run / "log.txt").read_text()
    assert "checkpoint after epoch 1" in log and "epoch 2" not in log


def test_sweep_runs_that_would_share_a_folder_are_refused(tmp_path):
    spec = SweepSpec(tmp_path, {}, {"model.name": ["data/crlf", "data_crlf"]})
    with pytest.raises(ConfigError, match="both|give the run folder name"):
        spec.runs()


@pytest.mark.parametrize("grid", ["", "grid: {}\n", "grid:\n"])
def test_a_sweep_without_a_grid_is_refused(tmp_path, grid):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"output: {tmp_path / 'out'}\n{grid}")
    with pytest.raises(ConfigError, match="has no grid"):
        load_sweep(spec)


def test_a_decoder_without_pad_token_and_a_too_long_max_length_train(
    tiny_llama, tiny_glue, tmp_path, caplog
):
    long_rte = tmp_path / "data" / "RTE"
    long_rte.mkdir(parents=True)
    rows = "".join(f"{i}\t{'many words ' * 60}{i}\tshort\tentailment\n" for i in range(8))
    rows += "".join(f"{i}\tone {i}\ttwo\tnot_entailment\n" for i in range(8, 16))
    for split in ("train", "dev"):
        (long_rte / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + rows)
    run = tmp_path / "run"
    code = tiny_run(
        tiny_llama, tmp_path / "data", run, "--max-length", "100000", "--pruner", "snip"
    )
    assert code == 0
    assert (run / "final.json").is_file()
    assert "inputs are cut at 64 tokens" in caplog.text


def test_an_output_path_that_is_not_utf8_trains_and_logs(tiny_bert, tiny_glue, tmp_path, capsys):
    run = tmp_path / os.fsdecode(b"run-\xff\xfe")  # bytes a shell may pass, not valid UTF-8
    assert tiny_run(tiny_bert, tiny_glue, run) == 0
    assert "Logging error" not in capsys.readouterr().err
    assert "run-\\udcff\\udcfe" in (run / "log.txt").read_text(encoding="utf-8")


def test_a_refused_run_leaves_no_folder_made_for_it(tiny_bert, tmp_path, capsys):
    run = tmp_path / "new" / "deeper" / "run"
    assert tiny_run(tiny_bert, tmp_path / "no-data-here", run) == 2  # the data is missing
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
