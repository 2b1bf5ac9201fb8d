"""Sweeps on Ray: two local workers give the sequential sweep's results, failed runs are retried
once then reported, and without Ray installed more workers train one at a time."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparseadapter import ConfigError
from sparseadapter.cli import main
from sparseadapter.parallel import RayExecutor, SequentialExecutor, make_executor
from sparseadapter.sweep import run_sweep

TIMING = {"prune_seconds", "train_seconds"}


def write_sweep(tmp_path: Path, name: str, base: dict, grid: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"output": str(tmp_path / name), "base": base, "grid": grid}))
    return path


def tiny_base(tiny_bert: str, tiny_glue: Path) -> dict:
    return {
        "model": {"name": tiny_bert, "adapter": "lora"},
        "data": {"task": "stsb", "data_dir": str(tiny_glue), "max_length": 16},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01},
    }


def rows_without_timing(folder: Path) -> list[dict]:
    with (folder / "runs.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def finals_without_timing(folder: Path) -> dict[str, dict]:
    finals = {}
    for path in sorted(folder.glob("*/final.json")):
        final = json.loads(path.read_text())
        final.pop("timing")
        if final["sparsity"]:  # None for a dense run
            final["sparsity"].pop("seconds")
        finals[path.parent.name] = final
    return finals


def test_two_ray_workers_give_the_sequential_results(tmp_path, tiny_bert, tiny_glue, capsys):
    import ray

    # a Ray run trains with (CPUs / workers) torch threads: the sequential sweep uses as many
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    grid = {"pruner": ["none", "snip", "random"], "sparsity": [0.5], "seed": [0, 1]}
    base = tiny_base(tiny_bert, tiny_glue)
    sequential = run_sweep(write_sweep(tmp_path, "seq", base, grid), quiet=True)
    assert len(sequential.ran) == 6 and not sequential.failed

    path = write_sweep(tmp_path, "ray", base, grid)
    assert main(["sweep", str(path), "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "training 6 runs on local Ray, 2 at once" in out
    assert "done: 6 trained, 0 skipped, 0 failed" in out
    assert not ray.is_initialized()  # the Ray it started is shut down

    seq, par = tmp_path / "seq", tmp_path / "ray"
    assert finals_without_timing(par) == finals_without_timing(seq)
    assert len(finals_without_timing(par)) == 6
    assert rows_without_timing(par) == rows_without_timing(seq)
    assert (par / "results.csv").read_text() == (seq / "results.csv").read_text()
    assert (par / "results.md").read_text() == (seq / "results.md").read_text()

    # resumable as a sequential sweep: every run is finished, so none trains and Ray never starts
    stamps = {p: p.stat().st_mtime_ns for p in par.glob("*/final.json")}
    assert main(["sweep", str(path), "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished before, skipped") == 6 and "training" not in out
    assert {p: p.stat().st_mtime_ns for p in par.glob("*/final.json")} == stamps


def flaky(item: tuple[str, str]) -> str:
    """Fails as ``kind`` says: ``once`` raises on its first call only, ``dies`` ends its process
    on its first call only, ``always`` raises every time, ``user`` is bad input."""
    kind, marker = item
    first = not Path(marker).exists()
    Path(marker).touch()
    if kind == "user":
        raise ConfigError("bad value; fix it")
    if kind == "always" or (kind == "once" and first):
        raise RuntimeError(f"{kind} broke")
    if kind == "dies" and first:
        os._exit(1)
    return kind


@pytest.mark.parametrize("executor", ["sequential", "ray"])
def test_a_failed_run_is_retried_once_then_reported(executor, tmp_path):
    import ray

    kinds = ["fine", "once", "always", "user"] + (["dies"] if executor == "ray" else [])
    items = [(kind, str(tmp_path / kind)) for kind in kinds]
    if executor == "ray":
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # `flaky` travels by value
        runner = RayExecutor(workers=2, threads=1)
    else:
        runner = SequentialExecutor()
    started = []
    try:
        outcomes = {o.item[0]: o for o in runner.map(flaky, items, started=started.append)}
    finally:
        runner.close()
    assert sorted(started) == sorted(items)  # each started once, retries not counted as starts
    assert {k: (o.value, o.attempts) for k, o in outcomes.items() if o.ok} == {
        "fine": ("fine", 1),
        "once": ("once", 2),
        **({"dies": ("dies", 2)} if executor == "ray" else {}),
    }
    always, user = outcomes["always"], outcomes["user"]
    assert always.attempts == 2 and always.error.startswith("RuntimeError: always broke")
    assert user.attempts == 1 and user.error == "bad value; fix it"  # bad input: no retry
    assert not ray.is_initialized()


def test_stop_starts_no_further_run():
    outcomes = list(SequentialExecutor().map(str, [1, 2, 3], stop=lambda: True))
    assert outcomes == []


def test_without_ray_more_workers_train_one_at_a_time(tmp_path, tiny_bert, tiny_glue, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    hints = []
    assert isinstance(make_executor(2, echo=hints.append), SequentialExecutor)
    (hint,) = hints
    assert "Ray is not installed" in hint and "pip install 'sparseadapter[ray]'" in hint
    with pytest.raises(ConfigError, match=r"--address auto needs Ray.*sparseadapter\[ray\]"):
        make_executor(2, address="auto")

    path = write_sweep(tmp_path, "sweep", tiny_base(tiny_bert, tiny_glue), {"seed": [0]})
    lines = []
    result = run_sweep(path, quiet=True, echo=lines.append, workers=2)
    assert len(result.ran) == 1 and not result.failed
    assert sum("Ray is not installed" in line for line in lines) == 1


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_workers_below_one_are_refused(workers, tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "grid": {"seed": [0]}}))
    assert main(["sweep", str(path), "--workers", workers]) == 2
    assert f"--workers must be a whole number >= 1, got {workers}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ray_address_in_the_environment_joins_that_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")  # as Ray's own tools read it
    executor = make_executor(2)
    assert isinstance(executor, RayExecutor) and executor.address == "head:6379"
    assert executor.description == "on the Ray cluster at head:6379, 2 at once"
    monkeypatch.delenv("RAY_ADDRESS")
    assert make_executor(2).description == "on local Ray, 2 at once"


def test_a_run_that_crashes_twice_is_counted_and_fails_the_sweep(
    tmp_path, tiny_bert, tiny_glue, monkeypatch, capsys
):
    import sparseadapter.sweep as sweep

    real_train, calls = sweep.train, []

    def crashing_train(config, **kwargs):  # a fault in the seed-1 run, as a bug would be
        calls.append(config.train.seed)
        if config.train.seed == 1:
            raise RuntimeError("out of memory")
        return real_train(config, **kwargs)

    monkeypatch.setattr(sweep, "train", crashing_train)
    path = write_sweep(tmp_path, "sweep", tiny_base(tiny_bert, tiny_glue), {"seed": [0, 1]})
    assert main(["sweep", str(path), "--quiet"]) == 1
    assert calls == [0, 1, 1]  # tried once more, then reported
    captured = capsys.readouterr()
    assert "done: 1 trained, 0 skipped, 1 failed" in captured.out
    (failed,) = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    assert failed.startswith("failed: stsb-lora-dense-s1: RuntimeError: out of memory")
    assert failed.endswith("(after 2 attempts)")
    assert [p.parent.name for p in (tmp_path / "sweep").glob("*/final.json")] == [
        "stsb-lora-dense-s0"
    ]
