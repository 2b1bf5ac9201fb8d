"""Sweeps: grid expansion, resuming (finished runs skipped), results tables and plot."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparseadapter import ConfigError
from sparseadapter.cli import main
from sparseadapter.runconfig import DEFAULT_ADAPTER
from sparseadapter.sweep import aggregate, load_sweep, plot, run_sweep


def write_sweep(tmp_path: Path, grid: dict, base: dict | None = None) -> Path:
    path = tmp_path / "sweep.yaml"
    spec = {"output": str(tmp_path / "sweep"), "base": base or {}, "grid": grid}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_merges_points_that_are_the_same_run(tmp_path):
    grid = {
        "adapter": ["houlsby", "full"],
        "pruner": ["none", "snip"],
        "sparsity": [0.4, 0.8],
        "large_sparse": [1, 2],
        "seed": [1, 2],
    }
    names = [Path(c.output).name for c in load_sweep(write_sweep(tmp_path, grid)).runs()]
    per_seed = [
        "rte-houlsby-dense",  # pruner none: sparsity ignored; Large-Sparse without pruner skipped
        "rte-houlsby-snip40",
        "rte-houlsby-ls2-snip50",  # Large-Sparse 2 fixes the sparsity at 0.5
        "rte-houlsby-snip80",
        "rte-full",  # full fine-tuning: no pruner, no width
    ]
    assert sorted(names) == sorted(f"{n}-s{s}" for n in per_seed for s in (1, 2))


def test_an_option_a_run_does_not_have_leaves_its_name(tmp_path):
    grid = {"adapter": ["houlsby", "full"], "pruner": ["none", "snip"]}
    grid |= {"prune.scope": ["global", "layer"], "model.width": [16]}
    names = [Path(c.output).name for c in load_sweep(write_sweep(tmp_path, grid)).runs()]
    assert sorted(names) == [
        "rte-full-s0",  # no pruner, no width
        "rte-houlsby-dense-s0-width16",  # no prune.scope
        "rte-houlsby-snip40-s0-width16-scopeglobal",
        "rte-houlsby-snip40-s0-width16-scopelayer",
    ]


@pytest.mark.parametrize("assignments", [["train.epochs=2"], "train.epochs=2"])
def test_sweep_base_file_set_and_extra_grid_keys(assignments, tmp_path):
    (tmp_path / "base.yaml").write_text("data:\n  task: mrpc\nprune:\n")  # an empty section
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": "base.yaml",
                "set": assignments,  # one assignment may be a plain string
                "grid": {"pruner": ["random"], "train.lr": [1e-3, 1e-4]},
            }
        )
    )
    runs = load_sweep(path).runs()
    assert [Path(c.output).name for c in runs] == [
        f"mrpc-{DEFAULT_ADAPTER}-random40-s0-lr0.001",
        f"mrpc-{DEFAULT_ADAPTER}-random40-s0-lr0.0001",
    ]
    assert all(c.train.epochs == 2 for c in runs)
    assert Path(runs[0].output).parent == Path("runs/sweep")  # default: runs/<file stem>


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"grid": {"pruner": []}}, "non-empty lists"),
        ({"grid": {"pruner": ["snip"]}, "seeds": [1]}, "unknown sweep key(s) seeds"),
        ({"grid": {"train.epoch": [1]}}, "valid train keys"),
    ],
)
def test_bad_sweep_files(tmp_path, spec, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_sweep(path).runs()
    assert fragment in str(err.value)


def test_aggregate_mean_and_sample_std_over_seeds():
    rows = [
        {"task": "rte", "adapter": "lora", "pruner": "snip", "sparsity": 0.4, "large_sparse": 1.0,
         "seed": seed, "metric": "accuracy", "score": score, "collapsed": seed == 2,
         "nonzero_trainable": 100}
        for seed, score in ((0, 0.5), (1, 0.7), (2, 0.6))
    ]  # fmt: skip
    (cell,) = aggregate(rows)
    assert cell["seeds"] == 3 and cell["collapsed"] == 1
    assert math.isclose(cell["mean"], 0.6)
    assert math.isclose(cell["std"], 0.1)  # sqrt(((-0.1)^2 + 0.1^2 + 0) / 2)


def test_sweep_runs_resumes_and_writes_results(tmp_path, tiny_bert, glue_dir, capsys):
    torch.set_num_threads(1)
    base = {
        "model": {"name": tiny_bert},
        "data": {"task": "stsb", "data_dir": str(glue_dir), "max_train_samples": 16,
                 "max_eval_samples": 16, "max_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.01},
    }  # fmt: skip
    grid = {"pruner": ["none", "random", "magnitude"], "sparsity": [0.5], "seed": [0, 1]}
    path = write_sweep(tmp_path, grid, base)
    first = run_sweep(path, quiet=True)
    assert len(first.ran) == 6 and not first.skipped and not first.failed
    out = tmp_path / "sweep"
    finals = sorted(out.glob("*/final.json"))
    assert len(finals) == 6
    stamps = {p: p.stat().st_mtime_ns for p in finals}

    # resuming through the CLI: every run is finished, none is trained again
    assert main(["sweep", str(path), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in finals} == stamps
    assert capsys.readouterr().out.count("finished before, skipped") == 6

    # a missing run is the only one trained
    lost = out / f"stsb-{DEFAULT_ADAPTER}-random50-s1"
    for f in sorted(lost.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    lost.rmdir()
    again = run_sweep(path, quiet=True)
    assert again.ran == [lost.name] and len(again.skipped) == 5

    with (out / "runs.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 6 and {r["pruner"] for r in runs} == {"none", "random", "magnitude"}
    with (out / "results.csv").open() as f:
        cells = {r["pruner"]: r for r in csv.DictReader(f)}
    for pruner, cell in cells.items():
        scores = [float(r["score"]) for r in runs if r["pruner"] == pruner]
        assert cell["seeds"] == "2"
        assert math.isclose(float(cell["mean"]), sum(scores) / 2)
        assert math.isclose(float(cell["std"]), abs(scores[0] - scores[1]) / math.sqrt(2))
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + 3 and "±" in table
    assert (out / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the sweep file changed since: the old runs are reported, never taken for the new ones
    base["train"]["epochs"] = 2
    changed = run_sweep(write_sweep(tmp_path, grid, base), quiet=True)
    assert not changed.ran and not changed.skipped and not changed.rows
    assert len(changed.failed) == 6
    assert all("train.epochs: 1 -> 2" in err for err in changed.failed.values())
    assert sorted(out.glob("*/final.json")) == finals  # nothing moved or lost


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path, tiny_bert, glue_dir, capsys):
    torch.set_num_threads(1)
    base = {
        "data": {"task": "rte", "data_dir": str(glue_dir), "max_train_samples": 8,
                 "max_eval_samples": 8, "max_length": 16},
        "train": {"epochs": 1, "batch_size": 8},
    }  # fmt: skip
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    path = write_sweep(tmp_path, {"model.name": [str(empty), tiny_bert]}, base)
    assert main(["sweep", str(path), "--quiet"]) == 1
    captured = capsys.readouterr()
    (failed,) = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    assert "not-a-model" in failed and "cannot load a model" in failed
    # a model path in the grid gives a flat folder name, not nested folders
    (finished,) = (tmp_path / "sweep").rglob("final.json")
    assert finished.parent.parent == tmp_path / "sweep" and "tiny-bert" in finished.parent.name


def test_plot_without_matplotlib_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    cell = {"task": "rte", "adapter": "lora", "pruner": "snip", "sparsity": 0.4,
            "large_sparse": 1.0, "metric": "accuracy", "mean": 0.6, "std": 0.0}  # fmt: skip
    with pytest.raises(ConfigError, match=r"pip install 'sparseadapter\[plot\]'"):
        plot([cell], tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
