"""`export --format sparse --precision P`, `eval RUN --checkpoint FILE` and `inspect` on a tiny run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_cli import tiny_train

from sparseadapter.checkpoint import load_sparse, read_metadata, save_sparse
from sparseadapter.cli import main
from sparseadapter.rundir import ADAPTER_DIR, build_run_model, finished_run
from sparseadapter.tasks import get_task


@pytest.fixture(scope="module")
def run(tiny_bert, glue_dir, tmp_path_factory):
    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("runs") / "run"
    assert (
        tiny_train(tiny_bert, glue_dir, output, "--pruner", "magnitude", "--sparsity", "0.8") == 0
    )
    return output


def test_export_with_a_precision_and_eval_with_its_checkpoint(run, tmp_path, capsys):
    target = tmp_path / "int4"
    argv = [
        "export",
        str(run),
        "--format",
        "sparse",
        "--precision",
        "int4",
        "--output",
        str(target),
    ]
    assert main(argv) == 0
    assert read_metadata(target)["precision"] == "int4"
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", str(target)]) == 0
    assert "final.json" in capsys.readouterr().out


def test_eval_scores_the_weights_of_the_given_checkpoint(run, tmp_path, capsys):
    config = finished_run(run)
    model, _ = build_run_model(config, get_task(config.data.task, config.data))
    model = load_sparse(model, run / ADAPTER_DIR)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(-3)
    save_sparse(model, tmp_path / "changed")
    assert main(["eval", str(run)]) == 0
    assert "(same as final.json" in capsys.readouterr().out
    assert main(["eval", str(run), "--checkpoint", str(tmp_path / "changed")]) == 0
    assert "(DIFFERS from final.json" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--format", "sparse", "--precision", "int2"], "unknown precision 'int2': choose one of"),
        (["--format", "peft", "--precision", "int4"], "drop --precision or use --format sparse"),
    ],
)
def test_bad_precision_is_a_one_line_error(run, argv, fragment, tmp_path, capsys):
    assert main(["export", str(run), *argv, "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_inspect_prints_the_verified_metadata_of_a_run_or_checkpoint(run, tmp_path, capsys):
    assert main(["inspect", str(run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sparsity_config"]["method"] == "magnitude"
    assert printed["sparsity_config"]["sparsity"] == 0.8
    assert printed == read_metadata(run / "adapter")
    damaged = tmp_path / "damaged"
    shutil.copytree(run / "adapter", damaged)
    data = bytearray((damaged / "adapter.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (damaged / "adapter.safetensors").write_bytes(bytes(data))
    assert main(["inspect", str(damaged)]) == 2
    assert "fails its SHA-256 check" in capsys.readouterr().err
