"""The quality benchmark v2's runner and report: learning rates chosen on validation, the claims'
tests over the chosen runs, failure counts, and a --quick run end to end (resumable, its dev
score the one `sparseadapter eval RUN --data-dir` gives)."""

import argparse
import json
import subprocess
import sys

import pytest
from helpers import BENCHMARKS, benchmark_module

report = benchmark_module("quality_v2_report")
grid = benchmark_module("quality_v2_grid")


def _rec(arm, lr, seed, validation, score, task="rte"):
    return {
        "run": f"{task}-houlsby-{arm}-lr{lr:g}-s{seed}",
        "protocol": grid.PROTOCOL,
        "device": "cpu",
        "model": "minilm",
        "task": task,
        "adapter": "houlsby",
        "arm": arm,
        "lr": lr,
        "seed": seed,
        "validation": validation,
        "score": score,
        "nonzero_trainable": 1000,
    }


def test_lr_is_chosen_on_validation_not_dev():
    records = [
        # 1e-3: better on validation, worse on dev; 3e-3 the other way round
        _rec("dense", 1e-3, 1, 0.70, 0.55),
        _rec("dense", 1e-3, 2, 0.72, 0.56),
        _rec("dense", 3e-3, 1, 0.60, 0.65),
        _rec("dense", 3e-3, 2, 0.61, 0.66),
        _rec("dense", 3e-4, 1, 0.99, 0.99),  # one seed only: not comparable yet
    ]
    chosen = report.choose_lrs(records)[("cpu", "minilm", "rte", "houlsby", "dense")]
    assert chosen["lr"] == 1e-3
    assert report.dev_points(chosen) == pytest.approx([55.0, 56.0])


def _group(arm, scores, lr=1e-3):
    return [_rec(arm, lr, s + 1, 0.5, x / 100) for s, x in enumerate(scores)]


def test_claim_rows_test_and_adjust_over_each_claim():
    records = (
        _group("dense", [60.0, 61.0, 62.0])
        + _group("snip40", [62.0, 63.0, 64.0])  # +2 points, sd 1: clearly non-inferior
        + _group("random80", [50.0, 51.0, 52.0])  # −10: clearly worse
    )
    rows = report.claim_rows(report.choose_lrs(records))
    claim1 = rows["1"]
    assert [(r["a"], r["test"].margin) for r in claim1] == [("snip40", 0.0), ("snip40", 1.0)]
    assert all(report.verdict(r) == "holds" for r in claim1)
    # Holm over claim 1's two rows: the smaller p doubled, the larger kept (monotone)
    ps = sorted(r["test"].p for r in claim1)
    assert sorted(r["holm"] for r in claim1) == pytest.approx([2 * ps[0], max(2 * ps[0], ps[1])])
    claim2 = {(r["a"], r["test"].margin): r for r in rows["2"]}
    assert set(claim2) == {("snip40", 0.0), ("snip40", 1.0), ("random80", 0.0), ("random80", 1.0)}
    assert report.verdict(claim2["random80", 1.0]) == "fails"
    assert rows["3"] == [] and rows["4"] == [] and rows["budget"] == []


def test_claim_4_tests_snip_against_each_pruner_at_its_sparsity():
    records = (
        _group("snip40", [62.0, 63.0, 64.0])
        + _group("magnitude40", [52.0, 53.0, 54.0])  # 10 points below SNIP: SNIP wins
        + _group("synflow40", [61.0, 64.0, 67.0])  # level with SNIP: not settled
        + _group("grasp80", [70.0, 71.0, 72.0])  # no SNIP at 80%: no test
    )
    rows = report.claim_rows(report.choose_lrs(records))["4"]
    assert [(r["a"], r["b"]) for r in rows] == [("snip40", "magnitude40"), ("snip40", "synflow40")]
    assert [report.verdict(r) for r in rows] == ["holds", "not settled"]


def test_verdicts_count_each_claims_tests():
    records = (
        _group("dense", [60.9, 61.0, 61.1])
        + _group("snip40", [62.9, 63.0, 63.1])  # +2 with sd 0.1: holds at both margins
        + _group("random80", [50.9, 51.0, 51.1])  # -10: fails at both
        + _group("snip60", [58.0, 61.0, 64.0])  # 0 with sd 3: settled at neither
    )
    lines = report.verdict_lines(report.claim_rows(report.choose_lrs(records)))
    assert "- Claim 1: 2 tests: 2 holds, 0 fails, 0 not settled." in lines
    assert "- Claim 2: 6 tests: 2 holds, 2 fails, 2 not settled." in lines
    assert not any(line.startswith("- Claim 3") for line in lines)
    rows = [line for line in lines if line.startswith("| 2 |")]
    assert len(rows) == 6
    assert any("| random80 ≥ dense − 1 | -10.00 |" in r and "| fails |" in r for r in rows)
    assert any("| snip60 ≥ dense | +0.00 |" in r and "| not settled |" in r for r in rows)
    assert report.verdict_lines({"1": []}) == ["No claim is measured yet.", ""]


def test_measured_seed_table_pools_pruned_arms_and_leaves_out_the_rest():
    records = (
        _group("dense", [60.0, 62.0])  # variance 2
        + _group("snip40", [60.0, 62.0])  # variance 2
        + _group("random80", [60.0, 64.0])  # variance 8: pruned arms pool to sqrt(5)
        + _group("narrow40", [40.0, 80.0])  # a dense baseline: in neither pool
    )
    (row,) = [x for x in report.measured_seed_lines(report.choose_lrs(records)) if "| cpu |" in x]
    # sd 1.41 / 2.24; SE sqrt((2 + 5) / 2) = 1.87; SE <= 0.5 takes ceil(7 / 0.25) = 28 seeds
    assert row.startswith("| cpu | minilm | rte | houlsby | 1.41 / 2.24 | 2 | 1.87 |")
    assert row.endswith("| 28 |")


def test_arms_table_flags_a_rate_at_the_grid_edge():
    def arm(name, validations):
        return [_rec(name, lr, seed, v, 0.6) for lr, v in validations.items() for seed in (1, 2)]

    records = arm("dense", {1e-3: 0.5, 3e-3: 0.7, 1e-2: 0.6}) + arm(
        "snip80", {1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7}
    )
    lines = report.arms_table(report.choose_lrs(records), lambda *a, **k: 0, {"rte": 52.7})
    dense, snip80 = (next(x for x in lines if f"| {n} |" in x) for n in ("dense", "snip80"))
    assert "| 0.003 |" in dense
    assert "| 0.01 (edge) |" in snip80


def test_committed_report_and_readme_show_the_recorded_verdicts(tmp_path, glue_dir):
    """quality_v2.md's verdicts are what the committed records give, and the README shows them."""
    q2 = benchmark_module("quality_v2")
    records = BENCHMARKS / "results" / "quality_v2_runs.jsonl"
    out = tmp_path / "quality_v2_runs.jsonl"
    out.write_bytes(records.read_bytes())
    args = q2.parse_args(["--report-only", "--records", str(out), "--data-dir", str(glue_dir)])
    fresh = report.report(args).read_text()
    committed = (records.parent / "quality_v2.md").read_text()

    def verdicts(text):
        return text.split("## Verdicts")[1].split("## Claims")[0].strip()

    assert verdicts(fresh) == verdicts(committed)
    assert report.readme_verdicts(report.README) == verdicts(fresh)


def test_readme_verdict_block_is_replaced_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"intro\n\n{report.README_BEGIN}\nstale verdicts\n{report.README_END}\n\nrest\n"
    )
    report.update_readme(readme, ["- Claim 1: 2 tests: 2 holds, 0 fails, 0 not settled.", ""])
    text = readme.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\nrest\n")
    assert "stale verdicts" not in text
    assert report.readme_verdicts(readme) == "- Claim 1: 2 tests: 2 holds, 0 fails, 0 not settled."
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no single verdict block"):
        report.update_readme(readme, ["x"])
    assert readme.read_text() == "no markers\n"


def test_density_and_learning_rate_table():
    # dense is best at 1e-3 on validation; snip80 (density 0.2) at 3e-3, where it closes the gap
    records = [
        *(_rec("dense", 1e-3, s, 0.80, x / 100) for s, x in ((1, 70.0), (2, 72.0))),
        *(_rec("dense", 3e-3, s, 0.70, 0.60) for s in (1, 2)),
        *(_rec("snip80", 1e-3, s, 0.60, x / 100) for s, x in ((1, 62.0), (2, 64.0))),
        *(_rec("snip80", 3e-3, s, 0.75, x / 100) for s, x in ((1, 70.0), (2, 72.0))),
    ]
    lines = report.density_lr_lines(report.choose_lrs(records))
    # lr x 3 over a density / 5: alpha = ln 3 / ln 5 = 0.6826
    assert "dense chose lr 0.001; fitted alpha = 0.68" in lines[0]
    # at dense's rate snip80 is 63 vs 71 (-8.00); at its own 71 (+0.00). Own rate vs dense's:
    # +8 with SE sqrt(2/2 + 2/2) = 1.414, t = 5.657 on 2 df: one-sided p = 1/2 - t/(2 sqrt(2 +
    # t^2)) = 0.0149; 90% interval 8 -/+ t.95(2 df) 2.9200 x 1.414 = [3.87, 12.13]
    assert "| snip80 | 0.2 | 0.003 | -8.00 | +0.00 | +8.00 [+3.87, +12.13], 0.015 |" in lines


def test_failures_are_counted_not_dropped(tiny_glue):
    # tiny RTE dev: trivial accuracy 50; dense median 70 → threshold 60: one snip run fails
    records = _group("dense", [68.0, 70.0, 72.0]) + _group("snip40", [50.0, 69.0, 71.0])
    chosen = report.choose_lrs(records)
    count, trivial = report._failure_counter(chosen, tiny_glue, None)
    group = report.Group("cpu", "minilm", "rte", "houlsby")
    assert count(group, chosen[(*group, "snip40")]) == 1
    assert count(group, chosen[(*group, "dense")]) == 0
    # a run at a rate not chosen counts among the failures at every rate only
    chosen = report.choose_lrs([*records, *_group("snip40", [40.0, 45.0, 75.0], lr=3e-3)])
    assert count(group, chosen[(*group, "snip40")]) == 1
    assert count(group, chosen[(*group, "snip40")], every_lr=True) == 3
    assert trivial == {"rte": 50.0}
    # the failed run stays in the test: the mean difference is (50 + 69 + 71)/3 − 70
    (row, _) = report.claim_rows(chosen)["1"]
    assert row["test"].diff == pytest.approx(190 / 3 - 70)


def test_planned_runs_go_seed_by_seed():
    args = argparse.Namespace(
        tasks=["rte"], adapters=["houlsby"], arms=["dense", "snip40"], lrs=[1e-3, 3e-3], seeds=2
    )
    plan = grid.planned(args, [])
    assert [(arm.name, lr, seed) for _, _, arm, lr, seed in plan] == [
        ("dense", 1e-3, 1),
        ("dense", 3e-3, 1),
        ("snip40", 1e-3, 1),
        ("snip40", 3e-3, 1),
        ("dense", 1e-3, 2),
        ("dense", 3e-3, 2),
        ("snip40", 1e-3, 2),
        ("snip40", 3e-3, 2),
    ]


def test_seeds_follow_v1_variances():
    def v1(pruner, seed, score):
        return {
            "task": "mrpc",
            "adapter": "houlsby",
            "pruner": pruner,
            "sparsity": 0.4 if pruner == "snip" else 0.0,
            "large_sparse": 1.0,
            "lr": 3e-3,
            "seed": seed,
            "score": score,
        }

    # sd 1 point in both arms: (1 + 1) / 0.5² = 8 seeds
    records = [v1("none", 1, 0.86), v1("none", 2, 0.87), v1("none", 3, 0.88)]
    records += [v1("snip", 1, 0.86), v1("snip", 2, 0.87), v1("snip", 3, 0.88)]
    assert grid.seeds_for("mrpc", "houlsby", records) == 8
    assert grid.seeds_for("rte", "houlsby", records) == grid.DEFAULT_SEEDS  # nothing known


@pytest.mark.slow
def test_quick_run_resumes_and_matches_the_cli_eval(tmp_path, glue_dir):
    cmd = [
        sys.executable,
        str(BENCHMARKS / "quality_v2.py"),
        "--quick",
        "--runs-dir",
        str(tmp_path),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    path = tmp_path / "quality_v2_runs.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 8  # 2 arms × 2 lrs × 2 seeds
    assert all({"device", "torch", "versions"} <= r.keys() for r in records)
    assert all(r["versions"]["transformers"] and r["versions"]["torch"] for r in records)
    assert "### Claim 1" in (tmp_path / "quality_v2.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and len(path.read_text().splitlines()) == 8
    # the carved split: validation came from train, the real dev set was scored afterwards
    run = records[-1]
    eval_cmd = [sys.executable, "-m", "sparseadapter", "eval"]
    eval_cmd += [str(tmp_path / grid.PROTOCOL / run["run"]), "--data-dir", str(glue_dir)]
    scored = subprocess.run(eval_cmd, capture_output=True, text=True, timeout=600)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert f"dev {run['metric']} = {run['score']:.4f}" in scored.stdout
    assert f"final.json: {run['validation']:.4f}" in scored.stdout


def test_seed_plan_has_a_floor():
    def v1(pruner, seed, score):
        return {
            "task": "mrpc",
            "adapter": "houlsby",
            "pruner": pruner,
            "sparsity": 0.4 if pruner == "snip" else 0.0,
            "large_sparse": 1.0,
            "lr": 3e-3,
            "seed": seed,
            "score": score,
        }

    # sd 0.1 point: the power calculation asks for 2 seeds, the floor for 3
    records = [v1(p, s, 0.870 + 0.001 * s) for p in ("none", "snip") for s in (1, 2, 3)]
    assert grid.seeds_for("mrpc", "houlsby", records) == grid.MIN_SEEDS == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--seeds", "1"], "at least 2 seeds"), (["--lrs", "0"], "positive learning rates")],
)
def test_bad_options_get_one_line(argv, message, capsys):
    runner = benchmark_module("quality_v2")
    with pytest.raises(SystemExit):
        runner.parse_args(argv)
    assert message in capsys.readouterr().err


def test_records_of_one_run_on_two_devices_both_stay(tmp_path):
    q2 = benchmark_module("quality_v2")
    path = tmp_path / "records.jsonl"
    cpu, gpu = (
        _rec("dense", 1e-3, 1, 0.7, 0.6),
        {**_rec("dense", 1e-3, 1, 0.8, 0.7), "device": "H200"},
    )
    path.write_text(json.dumps(cpu) + "\n" + json.dumps(gpu) + "\n")
    records = q2.load_records(path)
    assert {k[0] for k in records} == {"cpu", "H200"}
    chosen = report.choose_lrs(list(records.values()))
    assert {k[0] for k in chosen} == {"cpu", "H200"}  # compared within each device only


def test_a_seed_under_way_neither_narrows_nor_skews_the_rate_choice():
    # seed 3 has finished at 1e-3 only (a grid stopped mid-seed): 3e-3 is better on the seeds
    # both rates share, and stays in the choice
    records = [
        _rec("dense", 1e-3, 1, 0.60, 0.60),
        _rec("dense", 1e-3, 2, 0.60, 0.60),
        _rec("dense", 1e-3, 3, 0.99, 0.61),
        _rec("dense", 3e-3, 1, 0.70, 0.70),
        _rec("dense", 3e-3, 2, 0.70, 0.72),
    ]
    chosen = report.choose_lrs(records)[("cpu", "minilm", "rte", "houlsby", "dense")]
    assert chosen["compared"] == [1e-3, 3e-3]
    assert chosen["lr"] == 3e-3
    assert report.dev_points(chosen) == pytest.approx([70.0, 72.0])


def test_density_table_waits_for_arms_tuned_over_dense_rates():
    dense = [_rec("dense", lr, s, v, 0.7) for lr, v in ((1e-3, 0.8), (3e-3, 0.7)) for s in (1, 2)]
    # snip80 ran at 3e-4 only: its "choice" is no choice; snip60 has one seed
    snip80 = [_rec("snip80", 3e-4, s, 0.6, 0.6) for s in (1, 2)]
    snip60 = [_rec("snip60", lr, 1, 0.6, 0.6) for lr in (1e-3, 3e-3)]
    assert report.density_lr_lines(report.choose_lrs(dense + snip80 + snip60)) == [
        "Not measured yet.",
        "",
    ]
    one_seed_dense = [r for r in dense if r["seed"] == 1]
    tuned = [_rec("snip80", lr, s, 0.6, 0.6) for lr in (1e-3, 3e-3) for s in (1, 2)]
    assert report.density_lr_lines(report.choose_lrs(one_seed_dense + tuned)) == [
        "Not measured yet.",
        "",
    ]
    assert any("| snip80 |" in x for x in report.density_lr_lines(report.choose_lrs(dense + tuned)))


def test_records_of_two_models_are_told_apart(tmp_path):
    """A run of another model neither passes for the default model's run of the same task,
    adapter, arm, rate and seed (resume skips by name) nor joins its comparisons."""
    q2 = benchmark_module("quality_v2")
    dense = grid.ARMS["dense"]
    minilm = grid.run_name("minilm", "sst2", "houlsby", dense, 1e-3, 1)
    mpnet = grid.run_name("mpnet-base", "sst2", "houlsby", dense, 1e-3, 1)
    assert minilm == "sst2-houlsby-dense-lr0.001-s1" and mpnet != minilm
    old = {k: v for k, v in _rec("dense", 1e-3, 1, 0.7, 0.6).items() if k != "model"}
    other = {**_rec("dense", 1e-3, 1, 0.9, 0.9), "model": "mpnet-base", "run": "mpnet-base-x"}
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(old) + "\n" + json.dumps(other) + "\n")
    records = q2.load_records(path)
    assert sorted(r["model"] for r in records.values()) == ["minilm", "mpnet-base"]
    chosen = report.choose_lrs(list(records.values()))
    assert report.dev_points(chosen["cpu", "minilm", "rte", "houlsby", "dense"]) == [60.0]
    assert report.dev_points(chosen["cpu", "mpnet-base", "rte", "houlsby", "dense"]) == [90.0]


def test_committed_run_names_follow_the_naming_rule():
    """Every recorded run's name is what run_name gives its model, so resuming the grid finds it
    (a renaming rule would retrain or double them)."""
    q2 = benchmark_module("quality_v2")
    records = q2.load_records(BENCHMARKS / "results" / "quality_v2_runs.jsonl").values()
    assert records
    for r in records:
        arm = grid.ARMS[r["arm"]]
        assert r["run"] == grid.run_name(
            r["model"], r["task"], r["adapter"], arm, r["lr"], r["seed"]
        )


def test_model_label(tmp_path):
    staged = tmp_path / "mpnet-base"
    staged.mkdir()
    common = benchmark_module("common")
    assert common.model_label("mpnet-base") == "mpnet-base"
    assert common.model_label(str(staged)) == "mpnet-base"  # gpu.sh stages aliases by name
    assert common.model_label("org/some-bert") == "org--some-bert"


def test_a_grid_of_other_settings_stops_before_mixing_with_the_records(tmp_path):
    """Run names do not say the epochs, caps or precision: a grid run with other ones would
    share its comparisons with the recorded runs, so it stops first; the report refuses too."""
    q2 = benchmark_module("quality_v2")
    path = tmp_path / "records.jsonl"
    recorded = {**_rec("dense", 1e-3, 1, 0.7, 0.6), "epochs": 6}  # RTE's grid: 6 epochs
    path.write_text(json.dumps(recorded) + "\n")
    plan = [("rte", "houlsby", grid.ARMS["snip40"], 1e-3, 1)]
    same = q2.parse_args(["--tasks", "rte", "--records", str(path)])
    q2.check_settings(same, plan, "cpu")  # the grid's own settings: goes on
    more = q2.parse_args(["--tasks", "rte", "--records", str(path), "--epochs", "3"])
    with pytest.raises(SystemExit, match="trained with .*'epochs': 6.*not .*'epochs': 3"):
        q2.check_settings(more, plan, "cpu")
    q2.check_settings(more, plan, "NVIDIA H200")  # another device: a comparison of its own
    shorter = {**_rec("snip40", 1e-3, 1, 0.7, 0.6), "epochs": 3}
    with pytest.raises(SystemExit, match="rte houlsby \\(minilm, cpu\\) mixes runs of settings"):
        report.check_one_setting(
            list(q2.load_records(path).values()) + [{**shorter, "model": "minilm"}]
        )
