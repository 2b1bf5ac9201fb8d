"""The sparseadapter command end to end: real MiniLM on real GLUE subsets, and every user error.

Real-model runs use one thread: on a shared 2-core machine two OpenMP threads per process can be
ten times slower than one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparseadapter.cli import main
from sparseadapter.runconfig import DEFAULT_ADAPTER


def small(glue_dir: Path, output: Path) -> list[str]:
    """Flags for a run of a few seconds: 16 examples, length 32, one epoch."""
    return [
        "--data-dir", str(glue_dir), "--max-train-samples", "16", "--max-eval-samples", "16",
        "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--scoring-examples", "16",
        "--output", str(output), "--quiet",
    ]  # fmt: skip


def read_final(output: Path) -> dict:
    return json.loads((output / "final.json").read_text())


@pytest.fixture
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "options", "sparsity"),
    [
        *(
            pytest.param(*case, id=case[1][1], marks=pytest.mark.adapterhub)
            for case in [
                ("rte", ["--adapter", "houlsby", "--pruner", "snip", "--sparsity", "0.4"], 0.4),
                ("rte", ["--adapter", "pfeiffer", "--pruner", "grasp", "--sparsity", "0.8"], 0.8),
                (
                    "rte",
                    ["--adapter", "parallel", "--pruner", "magnitude", "--scope", "layer"],
                    0.4,
                ),
                ("rte", ["--adapter", "mam", "--pruner", "random"], 0.4),
                ("rte", ["--adapter", "prefix", "--pruner", "synflow", "--sparsity", "0.5"], 0.5),
            ]
        ),
        pytest.param(
            "mrpc",
            ["--adapter", "lora", "--large-sparse", "4", "--pruner", "snip"],
            0.75,
            id="lora-large-sparse",
        ),
        pytest.param("rte", ["--adapter", "ia3", "--pruner", "magnitude"], 0.4, id="ia3"),
        pytest.param("rte", ["--full-finetune"], None, id="full"),
    ],
)
def test_train_then_eval_reproduces(
    task, options, sparsity, glue_dir, tmp_path, capsys, one_thread
):
    output = tmp_path / "run"
    assert main(["train", "--task", task, *options, *small(glue_dir, output)]) == 0
    final = read_final(output)
    printed = capsys.readouterr().out
    assert f"dev {final['main_metric']} = {final['score']:.4f}" in printed
    assert final["main_metric"] == ("f1" if task == "mrpc" else "accuracy")
    params = final["parameters"]
    if sparsity is None:
        assert final["sparsity"] is None and params["trainable"] == params["total"]
    else:
        assert final["sparsity"]["achieved_sparsity"] == pytest.approx(sparsity, abs=1e-3)
        # zero-initialized factors can keep some kept weights at 0 after two steps
        assert params["nonzero_prunable"] <= final["sparsity"]["kept"]
        assert params["nonzero_trainable"] < params["trainable"] < params["total"] / 2

    assert main(["eval", str(output)]) == 0
    assert "(same as final.json" in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_entry_point(glue_dir, tmp_path):
    output = tmp_path / "sst2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "sparseadapter",
        "train",
        "--task",
        "sst2",
        "--adapter",
        "lora",
    ]
    done = subprocess.run(
        [*command, *small(glue_dir, output)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert f"dev accuracy = {read_final(output)['score']:.4f}" in done.stdout
    assert "pruning    none (dense)" in done.stdout


def tiny_train(tiny_bert: str, glue_dir: Path, output: Path, *extra: str) -> int:
    return main(["train", "--model", tiny_bert, "--task", "stsb", *small(glue_dir, output), *extra])


def test_export_formats(tiny_bert, glue_dir, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    own, other = ("adapterhub", "peft") if DEFAULT_ADAPTER == "houlsby" else ("peft", "adapterhub")
    assert tiny_train(tiny_bert, glue_dir, run, "--pruner", "magnitude") == 0
    assert main(["export", str(run), "--format", own]) == 0
    assert (run / f"export-{own}" / "adapter_config.json").is_file()
    assert main(["export", str(run), "--format", "sparse", "--output", str(tmp_path / "s")]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        p.name for p in (run / "adapter").iterdir()
    )
    capsys.readouterr()
    assert main(["export", str(run), "--format", other]) == 2
    assert f"exports as format='{own}'" in capsys.readouterr().err


def test_finished_output_is_refused_unless_overwrite(tiny_bert, glue_dir, tmp_path, capsys):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    assert tiny_train(tiny_bert, glue_dir, run) == 0
    first = read_final(run)
    capsys.readouterr()
    assert tiny_train(tiny_bert, glue_dir, run) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
    (tmp_path / "run.old").mkdir()  # a neighbour named like a backup: not the run's to touch
    (tmp_path / "run.old" / "notes.txt").write_text("mine")
    assert tiny_train(tiny_bert, glue_dir, run, "--overwrite", "--seed", "1") == 0
    assert read_final(run)["score"] != first["score"]
    assert (tmp_path / "run.old" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.old"]


def bad_tsv(tmp_path: Path) -> Path:
    (tmp_path / "RTE").mkdir(parents=True)
    (tmp_path / "RTE" / "train.tsv").write_text(
        "id\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n"
    )
    return tmp_path


ERRORS = [
    # (arguments after `train --task rte`, fragment of the one-line message)
    (["--task", "squadv2"], "unknown task 'squadv2'; use one of: cola"),
    (["--adapter", "bottleneck"], "unknown adapter 'bottleneck'; use one of: houlsby"),
    (["--pruner", "obd"], "unknown pruning method 'obd'; choose one of"),
    (["--data-dir", "{tmp}/nowhere"], "does not exist; pass the folder that holds RTE/"),
    (["--data-dir", "{tmp}"], "no RTE/ folder in"),
    (["--data-dir", "{bad_tsv}"], "lacks the column(s) sentence1, sentence2"),
    (["--set", "train.epoch=3"], "unknown key train.epoch; valid train keys: epochs"),
    (["--set", "epochs=3"], "unknown key 'epochs'; valid keys:"),
    (["--model", "{tmp}"], "cannot load a model from"),
    (["--epochs", "three"], "argument --epochs: invalid int value: 'three'"),
    (["--sparsity", "1.5", "--pruner", "snip"], "sparsity must be in [0, 1)"),
    (["--full-finetune", "--adapter", "lora"], "drop --adapter"),
    (["--config", "{tmp}/missing.yaml"], "missing.yaml does not exist"),
    (["--output", "{tmp}"], "exists and is not a sparseadapter run; choose another --output"),
]


@pytest.mark.parametrize(("args", "fragment"), ERRORS, ids=[e[1][:30] for e in ERRORS])
def test_train_errors_are_one_line_exit_2(args, fragment, glue_dir, tmp_path, capsys):
    paths = {"tmp": str(tmp_path), "bad_tsv": str(bad_tsv(tmp_path / "bad"))}
    args = [a.format(**paths) for a in args]
    if "--data-dir" not in args:
        args += ["--data-dir", str(glue_dir)]
    code = main(["train", "--task", "rte", "--output", str(tmp_path / "out"), *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["eval", "{tmp}"], "is not a finished run (no final.json)"),
        (["eval", "{damaged}"], "final.json is damaged (not the JSON a run writes)"),
        (["sweep", "{tmp}/sweep.yaml"], "sweep.yaml does not exist"),
        (["export", "{tmp}", "--format", "onnx"], "invalid choice: 'onnx'"),
    ],
)
def test_other_command_errors(argv, fragment, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "final.json").write_text('{"score": 0.5')  # cut short
    config = Path(__file__).parents[1] / "configs" / "rte_houlsby.yaml"
    (damaged / "config.yaml").write_text(config.read_text())
    assert main([a.format(tmp=tmp_path, damaged=damaged) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err


def test_flags_that_fix_the_sparsity_override_the_config_file(tmp_path, monkeypatch):
    """--pruner none / --large-sparse K replace a config file's sparsity instead of clashing."""
    seen = []
    monkeypatch.setattr("sparseadapter.train.train", lambda config, **kw: seen.append(config))
    monkeypatch.setattr("sparseadapter.summary.summary", lambda final, config: "")
    config = str(Path(__file__).parents[1] / "configs" / "rte_houlsby.yaml")  # snip at 0.4
    assert main(["train", "--config", config, "--pruner", "none"]) == 0
    assert main(["train", "--config", config, "--large-sparse", "4"]) == 0
    assert main(["train", "--config", config, "--pruner", "random"]) == 0
    sparser = tmp_path / "sparser.yaml"
    sparser.write_text(Path(config).read_text().replace("sparsity: 0.4", "sparsity: 0.8"))
    assert main(["train", "--config", str(sparser), "--large-sparse", "1"]) == 0
    dense, large, random, one = seen
    assert dense.prune is None
    assert large.prune.method == "snip" and large.prune.sparsity == 0.75
    assert random.prune.method == "random" and random.prune.sparsity == 0.4
    assert one.prune.sparsity == 0.8  # --large-sparse 1 (off) leaves the sparsity alone


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "prune.method=none"], (None, None)),
        (["--set", "model.large_sparse=4"], ("snip", 0.75)),
        (["--full-finetune"], (None, None)),
        (["--set", "model.adapter=full"], (None, None)),
        (["--full-finetune", "--set", "prune.method=none"], (None, None)),
    ],
)
def test_set_and_full_finetune_fix_the_sparsity_like_the_flags(argv, expected, monkeypatch):
    """``--set`` works like the flag it spells out, and full fine-tuning drops a config file's
    pruner: only a pruner or sparsity given on the command line too clashes with them."""
    seen = []
    monkeypatch.setattr("sparseadapter.train.train", lambda config, **kw: seen.append(config))
    monkeypatch.setattr("sparseadapter.summary.summary", lambda final, config: "")
    config = str(Path(__file__).parents[1] / "configs" / "rte_houlsby.yaml")  # snip at 0.4
    assert main(["train", "--config", config, *argv]) == 0
    (run,) = seen
    assert (run.pruner if run.prune else None, run.prune and run.prune.sparsity) == expected


def test_full_finetune_with_a_pruner_on_the_command_line_still_clashes(capsys):
    config = str(Path(__file__).parents[1] / "configs" / "rte_houlsby.yaml")
    assert main(["train", "--config", config, "--full-finetune", "--pruner", "snip"]) == 2
    assert "full fine-tuning is not pruned" in capsys.readouterr().err


def test_help_imports_no_torch_or_transformers():
    script = (
        "import sys\n"
        "from sparseadapter.cli import main\n"
        "for argv in (['--help'], ['train', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--pruner" in done.stdout and done.stdout.strip().endswith("[]"), done.stdout[-300:]


def test_every_run_flag_is_in_the_cli_docs():
    from sparseadapter.cli import RUN_FLAGS

    docs = (Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [flag for flag in RUN_FLAGS if f"`{flag}" not in docs]
    assert not missing, f"docs/cli.md lacks {missing}"


def test_train_config_is_the_run_train_would_start(tmp_path):
    from sparseadapter.cli import train_config
    from sparseadapter.errors import ConfigError

    config = train_config(["--task", "squad", "--lr", "3e-3", "--output", str(tmp_path / "r")])
    assert (config.data.task, config.train.lr, config.model.name) == ("squad", 3e-3, "minilm")
    assert config.output_dir() == tmp_path / "r"
    with pytest.raises(ConfigError, match="--sparsity"):
        train_config(["--sparsity", "lots"])
