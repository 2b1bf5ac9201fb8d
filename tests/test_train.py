"""Run configs (YAML, flags, --set) and the training loop, on a tiny random BERT with real GLUE data.

The tiny BERT (hidden 32, 2 layers) uses MiniLM's tokenizer, so real GLUE text runs through
the whole pipeline in seconds; it runs on one thread, where such small matrices are fastest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_module import TinyAdapterModel, tiny_batches
from torch.optim.optimizer import register_optimizer_step_post_hook

import sparseadapter as sa
from sparseadapter import ConfigError, SparseAdapterError
from sparseadapter.cli import main
from sparseadapter.evaluate import evaluate_run
from sparseadapter.runconfig import (
    DEFAULT_ADAPTER,
    DEFAULT_LR_ADAPTER,
    DEFAULT_LR_FULL,
    RunConfig,
    load_yaml,
    resolve,
    save_yaml,
    valid_keys,
)
from sparseadapter.rundir import finished_result, finished_run, load_run_model
from sparseadapter.sparsify import get_masks
from sparseadapter.summary import summary
from sparseadapter.tasks import get_task
from sparseadapter.train import train


@pytest.fixture
def one_thread():
    torch.set_num_threads(1)


def tiny_run(tiny_bert: str, glue_dir: Path, output: Path, **flags) -> RunConfig:
    """A run config of the tiny BERT on 32 examples of a real GLUE task (flags: section.key)."""
    base = {
        "model.name": tiny_bert,
        "data.task": "stsb",
        "data.data_dir": str(glue_dir),
        "data.max_train_samples": 32,
        "data.max_eval_samples": 32,
        "data.max_length": 32,
        "train.epochs": 1,
        "train.batch_size": 8,
        "train.lr": 0.01,
        "output": str(output),
    }
    return resolve(flags={**base, **flags})


# --- run configs ---------------------------------------------------------------------------


def test_config_file_then_flags_then_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"data": {"task": "mrpc", "max_length": 64}, "train": {"epochs": 7, "seed": 3}}
        )
    )
    config = resolve(path, {"train.epochs": 5}, ["train.epochs=2", "train.lr=3e-4"])
    assert config.data.task == "mrpc" and config.data.max_length == 64  # from the file
    assert config.train.seed == 3
    assert config.train.epochs == 2  # --set beats the flag, which beats the file
    assert config.train.lr == 3e-4  # "3e-4" (a YAML string) read as a number


def test_yaml_words_and_empty_sections(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  mixed_precision: no\nprune:\ndata:\n  # task: rte\n")
    config = resolve(path, {"prune.method": "snip", "data.max_length": 32}, ["train.epochs=1"])
    assert config.train.mixed_precision == "no"  # YAML reads a bare no as false
    assert config.prune.method == "snip" and config.data.max_length == 32
    assert resolve(overrides=["train.mixed_precision=no"]).train.mixed_precision == "no"
    path.write_text("train: [1, 2]\n")
    with pytest.raises(SparseAdapterError, match="section 'train' must be a mapping"):
        resolve(path, {"train.epochs": 1})


def test_prune_values_are_read_like_the_other_sections():
    config = resolve(flags={"prune.method": "grasp"}, overrides=["prune.grasp_temperature=5e-1"])
    assert config.prune.grasp_temperature == 0.5  # "5e-1": a YAML string, read as a number


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("# café\ntrain:\n  epochs: 1\n".encode("latin-1"))
    with pytest.raises(SparseAdapterError, match="run.yaml is not UTF-8 text .*save it as UTF-8"):
        resolve(path)


def test_derived_defaults():
    dense = resolve(flags={"model.adapter": "lora"})
    assert dense.prune is None and dense.pruner == "none"
    assert dense.train.lr == DEFAULT_LR_ADAPTER
    assert resolve(flags={"model.adapter": "full"}).train.lr == DEFAULT_LR_FULL
    pruned = resolve(flags={"prune.method": "snip", "train.seed": 5})
    assert pruned.prune.sparsity == 0.4 and pruned.prune.seed == 5
    large = resolve(flags={"prune.method": "snip", "model.large_sparse": 4})
    assert large.prune.sparsity == 0.75
    assert large.run_name() == f"rte-{DEFAULT_ADAPTER}-ls4-snip75-s0"


def test_resolved_config_round_trips(tmp_path):
    config = resolve(
        flags={"prune.method": "grasp", "model.large_sparse": 2, "prune.scope": "layer"},
        overrides=["train.select=last", "data.max_train_samples=10"],
    )
    save_yaml(config, tmp_path / "config.yaml")
    again = RunConfig.from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == config
    assert again.prune.sparsity == 0.5 and again.prune.scope == "layer"


@pytest.mark.parametrize(
    ("flags", "overrides", "fragment"),
    [
        ({}, ["train.epoch=3"], "valid train keys: epochs, batch_size"),
        ({}, ["training.epochs=3"], "valid keys: model.name"),
        ({}, ["train.epochs"], "expects section.key=value"),
        ({}, ["train.epochs=three"], "train.epochs must be int"),
        ({"model.adapter": "bottleneck"}, [], "unknown adapter 'bottleneck'"),
        ({"prune.method": "obd"}, [], "unknown pruning method 'obd'"),
        ({"data.task": "squad2"}, [], "unknown task 'squad2'; use one of: cola, sst2"),
        ({"prune.sparsity": 0.5}, [], "add --pruner snip"),
        ({"model.large_sparse": 4}, [], "Large-Sparse needs a pruner"),
        ({"model.large_sparse": 4, "prune.method": "snip", "prune.sparsity": 0.5}, [], "drop --sparsity"),
        ({"model.adapter": "full", "prune.method": "snip"}, [], "full fine-tuning is not pruned"),
        ({"train.mixed_precision": "fp8"}, [], "mixed_precision must be one of"),
        ({"train.select": "best", "train.eval_each_epoch": False}, [], "eval_each_epoch=true"),
        ({"model.library": "peft", "model.adapter": "houlsby"}, [], "PEFT has no 'houlsby'"),
        ({}, ["train.lr=.nan"], "train.lr must be a number > 0"),
        ({}, ["train.weight_decay=.nan"], "must be numbers >= 0"),
        ({}, ["train.lr_density_exponent=-0.5"], "lr_density_exponent must be a number >= 0 (0 = off)"),
        ({"prune.method": "grasp"}, ["prune.grasp_temperature=abc"], "prune.grasp_temperature must be float"),
        ({"prune.method": "snip"}, ["prune.seed=abc"], "prune.seed must be int"),
        ({}, ["output=."], "names no run folder"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_fix(flags, overrides, fragment):
    with pytest.raises(SparseAdapterError) as err:
        resolve(flags=flags, overrides=overrides)
    assert fragment in str(err.value)


def test_valid_keys_cover_every_section():
    keys = valid_keys()
    for key in ("model.adapter", "data.max_length", "prune.scope", "train.grad_accum", "output"):
        assert key in keys


# --- training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def best_run(tiny_bert, glue_dir, tmp_path_factory):
    """Three epochs with select=best; seed 0 peaks at epoch 2, so the best weights are restored."""
    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("runs") / "best"
    config = tiny_run(
        tiny_bert, glue_dir, output, **{"prune.method": "magnitude", "train.epochs": 3}
    )
    return config, train(config, quiet=True)


def test_best_epoch_is_selected_and_restored(best_run):
    config, final = best_run
    scores = [record["score"] for record in final["history"]]
    assert final["selected_epoch"] == scores.index(max(scores)) + 1
    assert final["selected_epoch"] < 3, "precondition: the best epoch is not the last"
    assert final["score"] == max(scores)
    # the saved weights are the best epoch's: re-scoring them gives its score exactly
    assert evaluate_run(config.output)["score"] == final["score"]


def test_run_folder_layout(best_run):
    config, final = best_run
    folder = Path(config.output)
    assert not folder.with_name(folder.name + ".partial").exists()
    assert RunConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text())) == config
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all("pearson" in e["dev"]["validation"] for e in epochs)
    saved = json.loads((folder / "final.json").read_text())
    assert saved["score"] == final["score"] and saved["main_metric"] == "pearson"
    assert saved["examples"] == {"train": 32, "validation": 32}
    timing = saved["timing"]
    examples_seen = 3 * saved["examples"]["train"]  # 3 epochs
    assert timing["train_examples_per_second"] * timing["train_seconds"] == pytest.approx(
        examples_seen
    )
    params = saved["parameters"]
    assert params["nonzero_trainable"] < params["trainable"] < params["total"]
    assert "epoch 3" in (folder / "log.txt").read_text()
    text = summary(final, config)
    assert f"dev pearson = {final['score']:.4f}" in text and len(text.splitlines()) < 25
    for flag in (True, False):
        dev = {"validation": {**final["dev"]["validation"], "collapsed": flag}}
        warned = "warning    predictions collapsed on validation" in summary(
            {**final, "dev": dev}, config
        )
        assert warned == flag


def test_pruned_weights_stay_zero_through_training(best_run):
    config, final = best_run
    model, _ = load_run_model(Path(config.output), config, get_task("stsb"))
    masks = get_masks(model)
    assert sorted(masks) == sorted(t["name"] for t in final["sparsity"]["tensors"])
    assert sum(int(m.sum()) for m in masks.values()) == final["sparsity"]["kept"]
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert not params[name][~mask].any(), f"a pruned weight of {name} was revived"
        assert params[name][mask].all(), f"a kept weight of {name} is zero"
    assert final["parameters"]["nonzero_prunable"] == final["sparsity"]["kept"]


def test_select_last_keeps_the_last_epoch(tiny_bert, glue_dir, tmp_path, one_thread):
    config = tiny_run(
        tiny_bert, glue_dir, tmp_path / "last", **{"train.epochs": 2, "train.select": "last"}
    )
    final = train(config, quiet=True)
    assert final["selected_epoch"] == 2 and final["score"] == final["history"][-1]["score"]
    assert final["sparsity"] is None  # dense adapter


def test_accumulation_and_bf16_keep_masks(tiny_bert, glue_dir, tmp_path, one_thread):
    config = tiny_run(
        tiny_bert,
        glue_dir,
        tmp_path / "bf16",
        **{
            "data.task": "rte",
            "prune.method": "random",
            "prune.sparsity": 0.7,
            "train.grad_accum": 2,
            "train.mixed_precision": "bf16",
        },
    )
    steps = []
    hook = register_optimizer_step_post_hook(lambda *args: steps.append(1))
    try:
        final = train(config, quiet=True)
    finally:
        hook.remove()
    assert len(steps) == 2  # 32 examples in batches of 8, accumulated in pairs
    assert final["parameters"]["nonzero_prunable"] == final["sparsity"]["kept"]
    assert 0.69 < final["sparsity"]["achieved_sparsity"] < 0.71
    assert evaluate_run(config.output)["score"] == final["score"]


@pytest.mark.parametrize(
    ("pruner", "exponent", "pruned_lr"),
    [
        ("random", 0.5, 0.02),  # 0.01 x 0.25^-0.5
        ("none", 0.5, None),
        ("random", None, 0.0325),  # the default alpha 0.85: 0.01 x 0.25^-0.85 = 0.01 x 3.249
        ("random", 0.0, 0.01),  # off
    ],
)
def test_density_aware_lr_scales_a_pruned_adapters_rate(
    pruner, exponent, pruned_lr, tiny_bert, glue_dir, tmp_path, one_thread
):
    flags = {"prune.method": pruner}
    if exponent is not None:
        flags["train.lr_density_exponent"] = exponent
    if pruner != "none":
        flags["prune.sparsity"] = 0.75
    config = tiny_run(tiny_bert, glue_dir, tmp_path / pruner, **flags)
    peaks = []
    hook = register_optimizer_step_post_hook(
        lambda opt, *args: peaks.append(opt.param_groups[0]["initial_lr"])
    )
    try:
        final = train(config, quiet=True)
    finally:
        hook.remove()
    params = final["parameters"]
    # density = the non-zero share of the prunable weights, counted on the trained model
    density = params["nonzero_prunable"] / params["prunable"] if pruner != "none" else 1.0
    alpha = config.train.lr_density_exponent
    assert peaks and peaks == pytest.approx([0.01 * density**-alpha] * len(peaks))
    assert final["lr"] == pytest.approx(0.01 * density**-alpha)
    assert final["lr"] == pytest.approx(pruned_lr or 0.01, rel=0.01)
    shown = "(train.lr 0.01 x density^-" in summary(final, config)
    assert shown == (final["lr"] != 0.01)  # the summary says when the rate was scaled


def test_a_sparsity_report_gives_library_users_the_same_rate():
    model = TinyAdapterModel(hidden=16, bottleneck=8)
    report = sa.sparsify(model, sa.SparsityConfig(method="random", sparsity=0.75), tiny_batches())
    assert report.kept / report.prunable == pytest.approx(0.25, abs=0.01)
    assert report.scaled_lr(1e-3) == pytest.approx(3.249e-3, rel=0.02)  # 1e-3 x 0.25^-0.85
    assert report.scaled_lr(1e-3, exponent=0.5) == pytest.approx(2e-3, rel=0.02)
    assert report.scaled_lr(1e-3, exponent=0) == 1e-3


def test_a_run_saved_before_the_density_rule_is_read_as_trained(
    tiny_bert, glue_dir, tmp_path, one_thread
):
    # a pruned run trained at exponent 0, its config.yaml as versions before the rule wrote it
    flags = {"prune.method": "random", "train.lr_density_exponent": 0.0}
    old = tiny_run(tiny_bert, glue_dir, tmp_path / "old", **flags)
    train(old, quiet=True)
    path = tmp_path / "old" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    del saved["train"]["lr_density_exponent"]
    path.write_text(yaml.safe_dump(saved))
    assert finished_run(tmp_path / "old").train.lr_density_exponent == 0.0
    assert finished_result(old) is not None
    today = tiny_run(tiny_bert, glue_dir, tmp_path / "old", **{"prune.method": "random"})
    assert today.train.lr_density_exponent > 0  # its results are not this run's
    with pytest.raises(ConfigError, match="train.lr_density_exponent: 0.0 -> 0.85"):
        finished_result(today)


def test_fp16_on_cpu_is_refused(tiny_bert, glue_dir, tmp_path):
    config = tiny_run(tiny_bert, glue_dir, tmp_path / "fp16", **{"train.mixed_precision": "fp16"})
    with pytest.raises(ConfigError, match="use --mixed-precision bf16 on CPU"):
        train(config, quiet=True)


def test_failed_overwrite_keeps_the_old_run(best_run, tiny_bert, glue_dir, monkeypatch):
    config, _ = best_run
    folder = Path(config.output)
    before = (folder / "final.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(config, quiet=True)

    def crash(*args, **kwargs):
        raise RuntimeError("crash during training")

    monkeypatch.setattr("sparseadapter.train._train", crash)
    with pytest.raises(RuntimeError, match="crash during training"):
        train(config, overwrite=True, quiet=True)
    assert (folder / "final.json").read_bytes() == before
    assert load_file(str(folder / "adapter" / "adapter.safetensors"))


BOMB = """\
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
train: {epochs: *h}
"""


def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_yaml(path)
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err) < 500 and err.count("\n") == 1


def test_values_in_messages_are_cut_short():
    with pytest.raises(ConfigError) as error:
        resolve(overrides=[f"train.select={'x' * 10_000}"])
    assert len(str(error.value)) < 300


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"key 'epochs' is given twice \(lines 2 and 4\)"):
        load_yaml(path)


def test_a_config_path_that_is_a_folder_is_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; pass a YAML file"):
        load_yaml(tmp_path)


def test_one_rule_drops_what_a_later_choice_makes_meaningless(tmp_path):
    from sparseadapter.errors import ConfigError

    path = tmp_path / "run.yaml"
    path.write_text("model: {adapter: houlsby, width: 16}\nprune: {method: snip, sparsity: 0.5}\n")
    full = resolve(path, flags={"model.adapter": "full"})
    assert full.prune is None and full.model.width is None
    assert resolve(path, flags={"model.large_sparse": 4.0}).prune.sparsity == 0.75
    with pytest.raises(ConfigError, match="fixes the sparsity at 0.75"):
        resolve(path, flags={"model.large_sparse": 4.0, "prune.sparsity": 0.5})
    with pytest.raises(ConfigError, match="full fine-tuning is not pruned"):
        resolve(path, flags={"model.adapter": "full", "prune.method": "snip"})
