"""The quality benchmark: --quick runs end to end, resumes from its records, and its verdicts
follow the stated rules. Tests that read the GLUE files (the report sizes its tables from them)
take the glue_dir fixture, which makes them slow."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import BENCHMARKS, benchmark_module

from sparseadapter.rundir import finished_result, interrupted

SCRIPT = BENCHMARKS / "quality.py"
EPOCHS = {"rte": 6, "cola": 5, "stsb": 3}  # the script's, checked below
quality = benchmark_module("quality")  # the command line
q_grid = benchmark_module("quality_grid")
q_records = benchmark_module("quality_records")
q_worker = benchmark_module("quality_worker")
q_plan = benchmark_module("quality_plan")
q_report = benchmark_module("quality_report")
common = benchmark_module("common")


@pytest.mark.slow
def test_quick_mode_runs_and_resumes(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--quick", "--runs-dir", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "quality_runs.jsonl").read_text().splitlines()]
    assert {(r["pruner"], r["sparsity"]) for r in records} == {("none", 0.0), ("snip", 0.4)}
    assert all(0.0 <= r["score"] <= 1.0 and {"device", "torch"} <= r.keys() for r in records)
    assert "| rte | lora | snip | 0.4 |" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0
    assert len((tmp_path / "quality_runs.jsonl").read_text().splitlines()) == len(records)


def _record(adapter, pruner, sparsity, seed, score, large_sparse=1, lr=1e-3, collapsed=False):
    tag = f"{pruner}{sparsity}" + (f"ls{large_sparse}" if large_sparse != 1 else "")
    return {
        "run": f"rte-{adapter}-{tag}-s{seed}",
        "protocol": "length-grouped",
        "task": "rte",
        "adapter": adapter,
        "pruner": pruner,
        "sparsity": sparsity,
        "large_sparse": large_sparse,
        "lr": lr,
        "seed": seed,
        "epochs": 6,  # RTE's
        "max_train_samples": None,
        "seconds": 100.0,
        "metric": "accuracy",
        "score": score,
        "collapsed": collapsed,
        "nonzero_trainable": 100,
    }


def _on(task, record):
    """``record`` moved to ``task``, with that task's epochs."""
    run = record["run"].replace("rte", task)
    return {**record, "task": task, "run": run, "epochs": EPOCHS[task]}


def test_report_verdicts_follow_the_rules(tmp_path, glue_dir):
    records = []
    for seed, noise in [(1, 0.0), (2, 0.01)]:
        records += [
            _record("houlsby", "none", 0.0, seed, 0.60 + noise),
            _record("houlsby", "snip", 0.4, seed, 0.62 + noise),  # beats dense: claim 1 holds
            _record("houlsby", "random", 0.4, seed, 0.58 + noise),
            _record("lora", "none", 0.0, seed, 0.60 + noise),
            _record("lora", "snip", 0.4, seed, 0.55 + noise),  # 5 points worse
            _record("mam", "none", 0.0, seed, 0.5 if seed == 2 else 0.7, collapsed=seed == 2),
            _record("mam", "snip", 0.4, seed, 0.66 + noise),  # "beats" a collapsed dense run
        ]
    legacy = {**_record("pfeiffer", "none", 0.0, 1, 0.9), "run": "rte-pfeiffer-old"}
    del legacy["protocol"]  # recorded before protocols were named
    shorter = {**_record("lora", "none", 0.0, 3, 0.7), "epochs": 2}  # another epoch count
    lines = [json.dumps(r) for r in [*records, legacy, shorter]]
    (tmp_path / "quality_runs.jsonl").write_text("\n".join(lines))
    args = quality.parse_args(["--report-only", "--results-dir", str(tmp_path)])
    text = q_report.report(args).read_text()
    progress = text.split("## Progress")[1].split("## Claim 1")[0]
    assert "| cola | 4 | 0 | 42 |" in progress and "| all | | 14 | " in progress
    claim1 = text.split("## Claim 1")[1].split("## Claim 2")[0]
    assert "**Verdict: mixed (on 2 of 4 cells measured).**" in claim1
    assert "| rte | houlsby | 60.50 ± 0.71 (n=2) | 62.50 ± 0.71 (n=2) |" in claim1
    assert "- rte houlsby snip 40%: +2.00 ± 0.71 points" in claim1
    assert "- rte lora snip 40%: -5.00 ± 0.71 points" in claim1
    assert "0 of 2 differences are within 2 standard errors of zero" in claim1
    assert "| rte | mam | 60.00 ± 14.14 (n=2) ⚠ 1 collapsed |" in claim1
    assert "Left out of the verdict, a run collapsed: rte mam snip 40%." in claim1
    claim2 = text.split("## Claim 2")[1].split("## Claim 3")[0]
    assert "**Verdict: mixed" in claim2  # houlsby within 1 point, lora 5 points below
    table = text.split("## Summary")[1].split("## Progress")[0]
    assert "| 1 | houlsby | snip 40% | **+2.00 ± 0.71** ✓ |" in table  # beyond 2 SE of 0
    assert "| 1 | lora | snip 40% | **−5.00 ± 0.71** ✗ |" in table
    assert "| 1 | mam | snip 40% | *collapsed* |" in table
    assert "| 1 | pfeiffer | snip 40% |  |" in table  # not measured
    # claim 2's rule is dense − 1 point: random 40% at −2.00 ± 0.71 is within 2 SE of it
    assert "| 2 | houlsby | random 40% | −2.00 ± 0.71 ✗ |" in table
    assert "claim 1: mixed (on 2 of 4 cells measured)" in table
    assert "not measured yet" in text.split("## Claim 3")[1].split("## Claim 4")[0]
    claim4 = text.split("## Claim 4")[1].split("## Every cell")[0]
    assert "rte" not in claim4  # not one of claim 4's tasks
    # runs of other settings (here an epoch count), and of the earlier protocol, are reported apart
    assert (
        "| rte | lora | none | 0 | 1 | 0.001 | 2 | 1 | accuracy 70.00"
        in text.split("## Superseded: other settings")[1].split("## Earlier protocol")[0]
    )
    assert "| rte | pfeiffer | none |" not in text.split("## Earlier protocol")[0]
    assert (
        "| rte | pfeiffer | none | 0 | 1 | 0.001 | 1 | accuracy 90.00"
        in text.split("## Earlier protocol")[1]
    )


def test_report_says_where_runs_trained_and_what_the_device_changes(tmp_path, glue_dir):
    gpu = {"device": "NVIDIA H100", "torch": "2.11.0"}
    dense = [_record("lora", "none", 0.0, seed, 0.60 + 0.02 * seed) for seed in (1, 2, 3)]

    def write(gpu_seconds):
        sparse = [
            {**_record("lora", "snip", 0.4, seed, 0.61), **gpu, "seconds": gpu_seconds}
            for seed in (1, 2, 3)
        ]
        lines = [json.dumps(r) for r in [*dense, *sparse]]
        (tmp_path / "quality_runs.jsonl").write_text("\n".join(lines))

    checked = [{**dense[1], **gpu, "score": 0.65}, {**dense[2], **gpu, "score": 0.65}]
    (tmp_path / "quality_device_check.jsonl").write_text("\n".join(map(json.dumps, checked)))
    args = quality.parse_args(["--report-only", "--results-dir", str(tmp_path)])
    write(gpu_seconds=1.0)
    fast = q_plan.plan(args)
    text = q_report.report(args).read_text()
    write(gpu_seconds=1000.0)
    assert q_plan.plan(args) == fast  # the pace left is the CPU's

    assert "- cpu, torch 2.13.0: 3 runs (rte 3)" in text
    assert "- NVIDIA H100, torch 2.11.0: 3 runs (rte 3)" in text
    check = text.split("## Device check")[1].split("## Every cell")[0]
    assert "Device difference: +0.00 ± 1.41 points" in check  # +1 and -1
    assert "1.00 points in absolute value" in check
    assert "the median seed std of these cells is 2.00 points" in check
    assert (
        "| rte-lora-none0.0-s2 | cpu, torch 2.13.0 | 64.00 | NVIDIA H100, torch 2.11.0 | 65.00 | +1.00 |"
        in check
    )


def test_lr_is_tuned_on_each_adapters_grid(tmp_path):
    args = quality.parse_args(["--runs-dir", str(tmp_path), "--adapters", "houlsby", "mam"])
    tuning = {(r.model.adapter, r.train.lr) for r in q_grid.planned_runs("rte", "1", {}, args)}
    assert tuning == {("houlsby", 1e-3), ("houlsby", 3e-3), ("mam", 3e-4), ("mam", 1e-3)}
    args = quality.parse_args(["--adapters", "mam", "--lr-grid", "1e-4"])
    assert {r.train.lr for r in q_grid.planned_runs("rte", "1", {}, args)} == {1e-4}


def test_tuning_goes_lower_while_every_rate_collapsed(tmp_path, glue_dir):
    args = quality.parse_args(["--runs-dir", str(tmp_path), "--adapters", "mam"])

    def planned(records, args=args):
        return {r.train.lr: r for r in q_grid.planned_runs("rte", "1", records, args)}

    def recorded(run, score, collapsed):
        record = _record("mam", "none", 0.0, 1, score, lr=run.train.lr, collapsed=collapsed)
        return {**record, "run": q_grid.record_key(run)}

    grid = planned({})
    assert set(grid) == {3e-4, 1e-3}
    records = {q_grid.record_key(r): recorded(r, 0.65, True) for r in grid.values()}
    assert set(planned(records)) == {3e-4, 1e-3, 1e-4}  # none works yet: one step lower, no more
    lower = planned(records)[1e-4]
    works = {**records, q_grid.record_key(lower): recorded(lower, 0.60, False)}
    runs = q_grid.planned_runs("rte", "1", works, args)
    assert {r.train.lr for r in runs} == {1e-4} and len(runs) == 6  # dense + SNIP 40%, 3 seeds
    assert q_records.tuned_lrs(list(works.values()), args) == {("rte", "mam"): 1e-4}
    assert q_records.without_working_lr(list(works.values()), args) == {}
    # the bottom of the ladder collapsed too: no working rate, nothing more to train
    dead = {**records, q_grid.record_key(lower): recorded(lower, 0.50, True)}
    assert set(planned(dead)) == {3e-4, 1e-3, 1e-4}
    assert len(q_grid.planned_runs("rte", "1", dead, args, assume_lr=True)) == 3  # counts, too
    assert q_records.without_working_lr(list(dead.values()), args) == {
        ("rte", "mam"): [1e-4, 3e-4, 1e-3]
    }
    (tmp_path / "quality_runs.jsonl").write_text("\n".join(json.dumps(r) for r in dead.values()))
    report = q_report.report(quality.parse_args(["--results-dir", str(tmp_path)])).read_text()
    assert "No working learning rate (every rate" in report
    assert "verdicts): rte mam (0.0001, 0.0003, 0.001)" in report
    assert "| rte | mam | 65.00 ± 0.00 (n=1) ⚠ 1 collapsed | no working learning rate |" in report
    # a grid with one working rate is not extended, and picks it over a collapsed higher score
    one_works = {**records, q_grid.record_key(grid[1e-3]): recorded(grid[1e-3], 0.60, False)}
    assert {r.train.lr for r in q_grid.planned_runs("rte", "1", one_works, args)} == {1e-3}
    args.lr_grid = [3e-4, 1e-3]  # given explicitly: used as given, never extended or skipped
    runs = q_grid.planned_runs("rte", "1", records, args)
    assert {r.train.lr for r in runs} == {3e-4} and len(runs) == 6  # sparse runs follow, too


def _without_timing(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in records), key=str)


def test_two_ray_workers_record_what_one_worker_records(tmp_path, tiny_bert, glue_dir, capsys):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # a Ray run's threads, 2 workers
    records = {}
    for workers in ("1", "2"):
        runs_dir = tmp_path / f"workers{workers}"
        argv = ["--quick", "--model", tiny_bert, "--runs-dir", str(runs_dir), "--workers", workers]
        assert quality.main(argv) == 0
        lines = (runs_dir / "quality_runs.jsonl").read_text().splitlines()
        records[workers] = [json.loads(line) for line in lines]
    out = capsys.readouterr().out
    assert "runs train one at a time" in out and "runs train on local Ray, 2 at once" in out
    assert len(records["1"]) == 2  # dense (the lr tuning), then SNIP 40% in the next round
    assert _without_timing(records["2"]) == _without_timing(records["1"])


def test_a_failed_run_is_reported_and_not_tried_again(tmp_path, glue_dir, capsys):
    argv = ["--quick", "--model", str(tmp_path / "no-model"), "--runs-dir", str(tmp_path)]
    assert quality.main(argv) == 1  # the dense tuning run fails: nothing else can be planned
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("failed: ")]
    assert "rte-lora-dense" in line and "no-model" in line
    assert not (tmp_path / "quality_runs.jsonl").exists()


def test_plan_counts_runs_left_and_their_hours(tmp_path, glue_dir):
    args = quality.parse_args(["--quick", "--runs-dir", str(tmp_path)])
    assert "| rte | 1 | 0 | 2 | 0.0 |" in q_plan.plan(args)  # dense (= tuning) + SNIP 40%
    (dense, sparse) = q_grid.planned_runs("rte", "1", {}, args, assume_lr=True)
    record = {"run": q_grid.record_key(dense), "protocol": q_grid.PROTOCOL, "score": 0.6}
    record.update(collapsed=False)
    record.update(task="rte", adapter="lora", large_sparse=1.0, seconds=7200.0)
    record.update(epochs=1, model="minilm", max_length=64, max_train_samples=64)
    record.update(max_eval_samples=64)
    q_records.append_record(args.records, record)
    assert q_grid.planned_runs("rte", "1", {}, args) == [dense]  # lr unknown: tuning only
    assert "| rte | 1 | 1 | 1 | 2.0 |" in q_plan.plan(args)
    resumed = {**record, "run": "rte-lora-other", "seconds": 60.0, "resumed": True}
    q_records.append_record(args.records, resumed)  # its seconds are only the rest of a run
    assert "| rte | 1 | 1 | 1 | 2.0 |" in q_plan.plan(args)
    # a task with no runs yet borrows the pace, scaled by its work (epochs x training words)
    words = {t: q_plan.training_words(args.data_dir, t, 64) for t in ("rte", "cola")}
    assert words["rte"] > 2 * words["cola"]  # RTE's sentence pairs are longer than CoLA's sentences
    args.tasks = ["cola"]
    cola_hours = 2 * 2.0 * words["cola"] / words["rte"]  # dense + SNIP 40%, both still to run
    assert f"| cola | 1 | 0 | 2 | {cola_hours:.1f} |" in q_plan.plan(args)


def test_claim_4_runs_on_its_own_tasks_only(tmp_path, glue_dir):
    args = quality.parse_args(["--runs-dir", str(tmp_path), "--claims", "1", "4"])
    assert q_grid.CLAIMS["4"]["tasks"] == ["sst2", "cola", "stsb"]
    assert q_grid.planned_runs("rte", "4", {}, args, assume_lr=True) == []
    pruners = {r.pruner for r in q_grid.planned_runs("cola", "4", {}, args, assume_lr=True)}
    assert pruners == {"none", "random", "magnitude", "snip", "grasp", "synflow"}
    table = q_plan.plan(args)
    assert "| rte | 1 |" in table and "| cola | 4 |" in table
    assert "| rte | 4 |" not in table and "| mrpc | 4 |" not in table
    records = []
    for seed, noise in [(1, 0.0), (2, 0.01)]:
        for task_of in (lambda r: r, lambda r: _on("cola", r), lambda r: _on("stsb", r)):
            records += [
                task_of(_record("houlsby", "none", 0.0, seed, 0.60 + noise)),
                task_of(_record("houlsby", "snip", 0.4, seed, 0.62 + noise)),
                task_of(_record("houlsby", "random", 0.4, seed, 0.58 + noise)),
            ]
    (tmp_path / "quality_runs.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    args = quality.parse_args(["--report-only", "--results-dir", str(tmp_path)])
    claim4 = q_report.report(args).read_text().split("## Claim 4")[1].split("## Every cell")[0]
    assert "- cola @40%: snip 62.50 > random 58.50; spread 4.00 ± 0.71 points (beyond 2 SE)" in (
        claim4
    )
    assert "rte" not in claim4 and (tmp_path / "quality_pruners_cola.png").is_file()
    assert "(beyond 2 SE)\n\n**cola**" in claim4  # STS-B's ranking list ends before CoLA's title


def test_epochs_are_set_per_task_unless_given():
    per_task = quality.parse_args([])
    assert {t: q_grid.base_config(t, per_task)["train"]["epochs"] for t in q_grid.TASKS} == (
        q_grid.EPOCHS
    )
    assert EPOCHS.items() <= q_grid.EPOCHS.items()
    fixed = quality.parse_args(["--epochs", "3"])
    assert {q_grid.base_config(t, fixed)["train"]["epochs"] for t in q_grid.TASKS} == {3}


def test_records_of_other_settings_are_not_the_grids_runs(tmp_path):
    """Run names do not say the model, epochs, max length or caps: a record trained with other
    ones must not pass for this grid's run (it would be skipped and mixed into its cells)."""
    args = quality.parse_args(["--runs-dir", str(tmp_path), "--results-dir", str(tmp_path)])
    old = {"run": "rte-lora-dense-s1", "protocol": q_grid.PROTOCOL, "task": "rte", "epochs": 6}
    old["max_train_samples"] = None  # written before model, max length and eval cap were
    other = {**old, "run": "rte-lora-snip40-s1", "model": "mpnet-base"}
    shorter = {**old, "run": "rte-lora-random40-s1", "max_length": 64}
    for record in (old, other, shorter):
        q_records.append_record(args.records, record)
    assert list(q_records.load_records(args.records, args=args)) == ["rte-lora-dense-s1"]
    mpnet = quality.parse_args(["--results-dir", str(tmp_path), "--model", "mpnet-base"])
    assert list(q_records.load_records(args.records, args=mpnet)) == ["rte-lora-snip40-s1"]
    assert len(q_records.load_records(args.records)) == 3  # every record stays in the file


def test_folders_of_another_config_are_set_aside_not_reused(tmp_path):
    from sparseadapter.runconfig import RunConfig, save_yaml

    args = quality.parse_args(["--quick", "--runs-dir", str(tmp_path)])
    (run, other, *_) = q_grid.planned_runs("rte", "1", {}, args, assume_lr=True)
    old = RunConfig.from_dict({**run.to_dict(), "train": {**run.to_dict()["train"], "epochs": 9}})
    output = run.output_dir()
    for folder in (output, output.with_name(output.name + ".partial")):
        folder.mkdir(parents=True)
        save_yaml(old, folder / "config.yaml")
    (output / "final.json").write_text('{"score": 0.9}')
    current = other.output_dir()
    current.mkdir(parents=True)
    save_yaml(other, current / "config.yaml")
    (current / "final.json").write_text('{"score": 0.7}')
    (output.parent / f"{output.name}.superseded").mkdir()  # set aside once before

    q_worker.set_aside_stale(run)
    q_worker.set_aside_stale(other)
    assert finished_result(run) is None and not interrupted(run)
    assert json.loads((output.parent / f"{output.name}.superseded2" / "final.json").read_text())
    assert (output.parent / f"{output.name}.partial.superseded" / "config.yaml").is_file()
    assert finished_result(other) == {"score": 0.7}  # same config: kept and read


def test_verdicts_are_given_per_task_once_two_tasks_are_measured(tmp_path, glue_dir):

    records = []
    for seed, noise in [(1, 0.0), (2, 0.01)]:
        records += [
            _record("houlsby", "none", 0.0, seed, 0.60 + noise),
            _record("houlsby", "snip", 0.4, seed, 0.62 + noise),  # holds on RTE
            _on("cola", _record("houlsby", "none", 0.0, seed, 0.30 + noise)),
            _on("cola", _record("houlsby", "snip", 0.4, seed, 0.20 + noise)),  # fails on CoLA
        ]
    (tmp_path / "quality_runs.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    args = quality.parse_args(["--report-only", "--results-dir", str(tmp_path)])
    claim1 = q_report.report(args).read_text().split("## Claim 1")[1].split("## Claim 2")[0]
    assert "**Verdict: mixed (on 2 of 8 cells measured).**" in claim1
    assert (
        "Per task: rte: holds (on 1 of 4 cells measured); "
        "cola: does not hold (on 1 of 4 cells measured)." in claim1
    )


def test_committed_report_and_readme_show_the_recorded_runs(tmp_path, glue_dir):
    """quality.md's summary is what the committed records give, and the README shows it."""
    records = common.RESULTS / "quality_runs.jsonl"
    args = quality.parse_args(
        ["--report-only", "--results-dir", str(tmp_path), "--records", str(records)]
    )
    fresh = q_report.report(args).read_text()
    committed = (common.RESULTS / "quality.md").read_text()

    def summary_table(text):
        section = text.split("## Summary")[1].split("## Progress")[0]
        return [line for line in section.splitlines() if line.startswith("|")]

    table = summary_table(fresh)
    assert len(table) == 2 + 4 + 12 + 2  # header, rule, claim 1, 2 and 3 rows
    assert summary_table(committed) == table
    readme = (common.ROOT / "README.md").read_text()
    assert "\n".join(table) in readme
