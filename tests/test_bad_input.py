"""Bad input, as a table: each case gets a specific error that names the problem and the fix.

``CASES`` is the table of docs/errors.md (``python tests/test_bad_input.py`` rewrites it there;
a test fails when they differ). Rows with ``args`` run the command here: exit code 2, one line
``error: ...`` on stderr naming the expected exception's message, no traceback, and no file in
the workspace (runs, checkpoints, data) created, changed or removed. Rows without ``args`` point
to the test that already checks the case in the Python API.
"""

from __future__ import annotations

import ast
import hashlib
import io
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import other_base_model

from sparseadapter import SparseAdapterError, checkpoint, resume
from sparseadapter import cli as cli_module
from sparseadapter.cli import main
from sparseadapter.resume import RESUME_FILE

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
START, END = "<!-- cases: generated from tests/test_bad_input.py -->", "<!-- end of cases -->"
USAGE = "usage error"  # argparse and CLI option clashes; exit code 2 like every other case

TRAIN = [
    "train", "--model", "{model}", "--task", "stsb", "--data-dir", "{glue}",
    "--max-train-samples", "16", "--max-eval-samples", "16", "--max-length", "32",
    "--epochs", "1", "--batch-size", "8", "--output", "{tmp}/out", "--quiet",
]  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    problem: str
    trigger: str  # for the table; `args` is what runs
    error: str  # exception class name, or USAGE
    excerpt: str  # part of the message
    args: tuple[str, ...] = ()  # CLI arguments ({tmp}, {glue}, {model}, {run}, {data})
    setup: str | None = None  # a workspace builder from SETUPS
    test: str | None = None  # for rows checked elsewhere: tests/FILE.py::TEST

    @property
    def test_id(self) -> str:
        return self.test or f"tests/test_bad_input.py::test_cli_rejects[{self.name}]"


def train(*extra: str) -> tuple[str, ...]:
    return (*TRAIN, *extra)


CASES = [
    # --- options ----------------------------------------------------------------------------
    Case("sparsity-negative", "sparsity -0.1", "`train --pruner snip --sparsity -0.1`",
         "ConfigError", "sparsity must be in [0, 1)", train("--pruner", "snip", "--sparsity", "-0.1")),
    Case("sparsity-one", "sparsity 1.0", "`train --pruner snip --sparsity 1.0`",
         "ConfigError", "sparsity must be in [0, 1)", train("--pruner", "snip", "--sparsity", "1.0")),
    Case("sparsity-text", "sparsity \"abc\"", "`train --pruner snip --sparsity abc`",
         USAGE, "argument --sparsity: invalid float value: 'abc'", train("--pruner", "snip", "--sparsity", "abc")),
    Case("sparsity-api", "sparsity -0.1 / 1.0 / \"abc\" / NaN / True", "`SparsityConfig(sparsity=...)`",
         "ConfigError", "[0, 1)", test="tests/test_engine_errors.py::test_sparsity_out_of_range"),
    Case("unknown-pruner", "unknown pruner", "`train --pruner obd`",
         "ConfigError", "unknown pruning method 'obd'; choose one of", train("--pruner", "obd")),
    Case("pruned-full-finetune", "pruning a model with no adapters", "`train --full-finetune --pruner snip`",
         "ConfigError", "full fine-tuning is not pruned", train("--full-finetune", "--pruner", "snip")),
    Case("no-adapters-api", "model with no adapters", "`sparsify(model_without_trainable_adapters)`",
         "NoPrunableWeightsError", "add adapters and make them trainable",
         test="tests/test_engine_errors.py::test_model_without_trainable_adapter_weights"),
    Case("no-prunable-weights", "adapter with no prunable weights",
         "`train --pruner magnitude --set prune.include=[nomatch]`", "NoPrunableWeightsError",
         "no prunable adapter weights", train("--pruner", "magnitude", "--set", "prune.include=[nomatch]")),
    Case("head-only-api", "adapter with no prunable weights (only the head trainable)",
         "`sparsify(model)` with the adapter frozen", "NoPrunableWeightsError", "no prunable adapter weights",
         test="tests/test_engine_errors.py::test_adapter_with_only_a_head_trainable"),
    Case("all-zero-init-dense-api", "every prunable tensor zero-initialized, kept dense",
         "`sparsify(model, SparsityConfig(zero_init=\"dense\", include=[\"lora_B\"]))`", "NoPrunableWeightsError",
         "nothing is left to prune", test="tests/test_engine_errors.py::test_zero_init_dense_policy_with_every_tensor_zero_initialized"),
    Case("grasp-temperature-text", "GraSP temperature that is not a number",
         "`train --pruner grasp --set prune.grasp_temperature=abc`", "ConfigError",
         "prune.grasp_temperature must be float", train("--pruner", "grasp", "--set", "prune.grasp_temperature=abc")),
    Case("bad-include-regex", "a prune pattern that is not a regex", "`train --pruner snip --set prune.include=[(]`",
         "ConfigError", "is not a valid regex", train("--pruner", "snip", "--set", "prune.include=[(]")),
    Case("zero-scoring-examples", "zero scoring batches", "`train --pruner snip --scoring-examples 0`",
         "ConfigError", "num_examples must be a positive integer", train("--pruner", "snip", "--scoring-examples", "0")),
    Case("empty-scoring-batches-api", "zero scoring batches", "`sparsify(..., batches=[])` or an exhausted iterator",
         "ScoringDataError", "empty or already exhausted", test="tests/test_engine_errors.py::test_empty_and_exhausted_batches"),
    Case("unlabeled-scoring-batches-api", "scoring batches without labels", "`sparsify(..., batches=<no 'labels'>)`",
         "ScoringDataError", "scoring batches need labels", test="tests/test_engine_errors.py::test_batches_without_labels"),
    Case("nan-loss-api", "NaN loss during scoring", "`sparsify` of a model whose head is NaN",
         "ScoreError", "loss of a scoring batch is", test="tests/test_engine_errors.py::test_nan_loss_during_scoring"),
    Case("all-zero-scores-api", "all-zero (or non-finite) scores", "a registered scorer returning zeros / inf",
         "ScoreError", "gave all-zero scores", test="tests/test_engine_errors.py::test_all_zero_and_non_finite_scores"),
    Case("large-sparse-below-one", "Large-Sparse factor < 1", "`train --pruner snip --large-sparse 0.5`",
         "ConfigError", "large_sparse must be a finite number >= 1", train("--pruner", "snip", "--large-sparse", "0.5")),
    Case("large-sparse-non-integer", "Large-Sparse factor giving a non-integer width",
         "`train --adapter lora --pruner snip --large-sparse 1.3` (rank 8 x 1.3)", "ConfigError", "non-integer",
         train("--adapter", "lora", "--pruner", "snip", "--large-sparse", "1.3")),
    Case("large-sparse-api", "Large-Sparse factor < 1 in the API", "`attach_adapter(..., large_sparse=0.5)`",
         "ConfigError", ">= 1", test="tests/test_large_sparse.py::test_factor_below_one_is_rejected"),
    Case("seed-out-of-range", "a seed NumPy cannot take", "`train --seed -1`",
         "ConfigError", "train.seed must be an integer in [0, 2**32 - 1]", train("--seed", "-1")),
    Case("empty-include", "an empty include list (nothing would be prunable)", "`train --pruner snip --set prune.include=[]`",
         "ConfigError", "include=[] matches no weights", train("--pruner", "snip", "--set", "prune.include=[]")),
    Case("max-length-zero", "max length 0", "`train --max-length 0`",
         "ConfigError", "data.max_length must be a positive integer", train("--max-length", "0")),
    Case("resume-with-overwrite", "--resume together with --overwrite", "`train --resume RUN --overwrite`",
         USAGE, "--resume RUN continues the run in RUN: drop --overwrite",
         ("train", "--resume", "{run}", "--overwrite"), setup="interrupted"),
    Case("sharded-parameters", "FSDP / DeepSpeed (any ZeRO stage) / Megatron-LM", "`accelerate launch` with an FSDP or DeepSpeed config",
         "ConfigError", "is not supported yet", test="tests/test_distributed.py::test_sharded_parameters_are_refused"),
    # --- data ---------------------------------------------------------------------------------
    Case("tsv-missing-columns", "TSV with missing columns", "RTE `train.tsv` with `premise`/`hypothesis` columns",
         "DataError", "lacks the column(s) sentence1, sentence2", train("--task", "rte", "--data-dir", "{data}"),
         setup="missing_columns"),
    Case("tsv-unknown-label", "TSV with an unknown label", "RTE `train.tsv` with the label `maybe`",
         "DataError", "unknown label 'maybe' on line 2", train("--task", "rte", "--data-dir", "{data}"),
         setup="unknown_label"),
    Case("tsv-non-finite-label", "TSV with a non-finite score", "STS-B `train.tsv` with the score `nan`",
         "DataError", "unknown label 'nan' on line 2", train("--data-dir", "{data}"), setup="nan_labels"),
    Case("empty-training-set", "empty training set", "RTE `train.tsv` with a header only",
         "DataError", "has no examples", train("--task", "rte", "--data-dir", "{data}"), setup="empty_train"),
    # --- output folders -----------------------------------------------------------------------
    Case("unwritable-output", "unwritable output folder", "`train --output FILE/run` (FILE a regular file)",
         "ConfigError", "is a file, not a folder; choose another output path", train("--output", "{tmp}/file/run"),
         setup="file"),
    Case("output-not-a-run", "output folder holding other files", "`train --output DIR` (DIR not empty)",
         "ConfigError", "exists and is not a sparseadapter run", train("--output", "{tmp}/other"), setup="other"),
    Case("fresh-run-over-interrupted", "new run over an interrupted one", "`train --output RUN` (RUN has a checkpoint)",
         "ConfigError", "has an interrupted run with a checkpoint: pass --resume", train("--output", "{run}"),
         setup="interrupted"),
    # --- saved adapters (sparse checkpoints) --------------------------------------------------
    Case("eval-other-base-model", "checkpoint from another base model", "`eval RUN` after RUN's model changed",
         "CheckpointError", "this checkpoint was saved on another base model", ("eval", "{run}"),
         setup="finished_other_base"),
    Case("eval-truncated-checkpoint", "truncated checkpoint", "`eval RUN` with `adapter.safetensors` cut in half",
         "CheckpointError", "fails its SHA-256 check", ("eval", "{run}"), setup="finished_truncated"),
    Case("eval-newer-format", "checkpoint of a newer format version", "`eval RUN`, `format_version` 4",
         "CheckpointError", "upgrade sparseadapter", ("eval", "{run}"), setup="finished_newer"),
    Case("other-base-model-api", "checkpoint from another base model", "`load_sparse(other_model, path)`",
         "CheckpointError", "saved on another base model",
         test="tests/test_checkpoint.py::test_other_base_model_is_refused"),
    # --- resume (training checkpoints) --------------------------------------------------------
    Case("resume-changed-config", "resume of a run with a changed config", "`train --resume RUN --lr 0.5`",
         "ConfigError", "resume of a run with a changed config (train.lr: 0.01 -> 0.5)",
         ("train", "--resume", "{run}", "--lr", "0.5"), setup="interrupted"),
    Case("resume-truncated-checkpoint", "truncated training checkpoint", "`train --resume RUN`, `checkpoint.pt` cut in half",
         "CheckpointError", "is truncated or corrupted", ("train", "--resume", "{run}"),
         setup="interrupted_truncated"),
    Case("resume-newer-format", "training checkpoint of a newer format version", "`train --resume RUN`, `format_version` 3",
         "CheckpointError", "reads up to version 2: upgrade sparseadapter", ("train", "--resume", "{run}"),
         setup="interrupted_newer"),
    Case("resume-other-base-model", "training checkpoint from another base model",
         "`train --resume RUN` after the base model changed", "CheckpointError",
         "was written for another base model", ("train", "--resume", "{run}"), setup="interrupted_other_base"),
    Case("resume-other-process-count", "resume with another number of processes",
         "`train --resume RUN` in 1 process, RUN checkpointed by 2", "ConfigError",
         "resume it with as many processes", ("train", "--resume", "{run}"), setup="interrupted_by_two"),
    Case("resume-nothing", "resume without a checkpoint", "`train --resume DIR` (no checkpoint)",
         "ConfigError", "nothing to resume in", ("train", "--resume", "{tmp}/never")),
    Case("resume-finished-run", "resume of a finished run", "`train --resume RUN` (RUN has `final.json`)",
         "ConfigError", "is a finished run: there is nothing to resume", ("train", "--resume", "{run}"),
         setup="finished"),
    # --- found by trying to break it (data safety, tracebacks) --------------------------------
    Case("large-sparse-nan", "Large-Sparse factor NaN or infinite", "`train --pruner snip --large-sparse nan`",
         "ConfigError", "large_sparse must be a finite number >= 1", train("--pruner", "snip", "--large-sparse", "nan")),
    Case("prune-seed-overflow", "a pruning seed no generator takes", "`train --set prune.seed=18446744073709551615`",
         "ConfigError", "seed must be an integer in [0, 2**32 - 1]",
         train("--pruner", "random", "--set", "prune.seed=18446744073709551615")),
    Case("prune-seed-negative", "a negative pruning seed (the same rule as --seed)", "`train --set prune.seed=-1`",
         "ConfigError", "seed must be an integer in [0, 2**32 - 1]", train("--pruner", "random", "--set", "prune.seed=-1")),
    Case("sparsity-keeps-nothing", "a sparsity that keeps no weight", "`train --pruner magnitude --sparsity 0.999999`",
         "ConfigError", "keeps none of the", train("--pruner", "magnitude", "--sparsity", "0.999999")),
    Case("resume-damaged-checkpoint", "training checkpoint with flipped bytes", "`train --resume RUN`, 16 bytes of `checkpoint.pt` flipped",
         "CheckpointError", "fails its SHA-256 check", ("train", "--resume", "{run}"), setup="interrupted_flipped"),
    Case("export-over-another-run", "export onto another run's adapter", "`export RUN --format sparse --output OTHER/adapter`",
         "CheckpointError", "already holds a checkpoint: pass overwrite=True (--overwrite)",
         ("export", "{run}", "--format", "sparse", "--output", "{other_run}/adapter"), setup="two_finished"),
    Case("export-under-a-file", "export under a regular file", "`export RUN --output FILE/exp`",
         "ConfigError", "is a file, not a folder; choose another output path",
         ("export", "{run}", "--format", "sparse", "--output", "{tmp}/file/exp"), setup="finished_and_file"),
    Case("final-json-wrong-shape", "`final.json` of the wrong shape", "`eval RUN` with `final.json` holding a list",
         "ConfigError", "is damaged (not the JSON a run writes)", ("eval", "{run}"), setup="finished_list_final"),
    Case("eval-swapped-adapter", "an adapter that is not the run's", "`eval RUN` whose `config.yaml` names another adapter",
         "CheckpointError", "the model carries another adapter", ("eval", "{run}"), setup="finished_other_adapter"),
    Case("api-no-adapter", "pruning a transformers model that carries no adapter", "`sparsify(AutoModelForSequenceClassification...)`",
         "NoPrunableWeightsError", "carries no adapter",
         test="tests/test_engine_errors.py::test_a_transformers_model_without_an_adapter_is_not_pruned"),
    Case("api-wrong-types", "a non-model, a dict config, non-iterable batches", "`sparsify(model, {...})`, `sparsify('model')`, `batches=5`",
         "ConfigError", "must be a SparsityConfig", test="tests/test_engine_errors.py::test_api_mistakes_get_the_librarys_errors"),
    Case("api-scorer-twice", "registering a pruning method name twice", "`@register_scorer('snip')`",
         "ConfigError", "is already registered", test="tests/test_engine_errors.py::test_a_built_in_method_is_not_replaced_by_accident"),
    Case("api-checkpoint-exists", "saving over an existing checkpoint", "`save_sparse(model, existing_checkpoint)`",
         "CheckpointError", "already holds a checkpoint",
         test="tests/test_checkpoint.py::test_save_replaces_an_older_checkpoint_only_when_told"),
    Case("yaml-alias-bomb", "a YAML config whose aliases expand without bound", "`--config bomb.yaml` (497 bytes, nested anchors)",
         "ConfigError", "expands to more than", test="tests/test_train.py::test_a_yaml_alias_bomb_is_refused_in_one_short_line"),
    Case("yaml-duplicate-key", "a key given twice in a YAML config", "`train: {epochs: 2, epochs: 3}`",
         "ConfigError", "is given twice", test="tests/test_train.py::test_a_key_given_twice_is_refused"),
    Case("stsb-out-of-range", "an STS-B score outside [0, 5]", "STS-B `train.tsv` with the score `5.5`",
         "DataError", "a finite number in", test="tests/test_glue.py::test_stsb_scores_outside_0_to_5_are_refused"),
    Case("sweep-name-clash", "grid values that give one run folder name", "`grid: {model.name: [data/crlf, data_crlf]}`",
         "ConfigError", "give the run folder name", test="tests/test_data_safety.py::test_sweep_runs_that_would_share_a_folder_are_refused"),
    Case("sweep-no-grid", "a sweep without a grid", "a sweep file with no (or an empty) `grid`",
         "ConfigError", "has no grid", test="tests/test_data_safety.py::test_a_sweep_without_a_grid_is_refused"),
    Case("resume-damaged-api", "a training checkpoint with flipped bytes", "`read_resume_state(path)`",
         "CheckpointError", "fails its SHA-256 check", test="tests/test_data_safety.py::test_a_damaged_resume_checkpoint_is_refused"),
    # --- AdapterFusion ------------------------------------------------------------------------
    Case("fuse-one", "fewer than two runs to fuse", "`train --adapter fusion --fuse RUN`",
         "ConfigError", "fuses at least two task adapters", test="tests/test_fusion.py::test_runs_that_cannot_be_fused_are_refused_in_one_line"),
    Case("fuse-twice", "one task adapter given twice", "`--fuse RUN RUN`, or RUN and a copy of it",
         "ConfigError", "holds the same task adapter as", test="tests/test_fusion.py::test_runs_that_cannot_be_fused_are_refused_in_one_line"),
    Case("fuse-unfinished", "a fused run that is missing or unfinished", "`--fuse RUN MISSING`",
         "ConfigError", "has not finished", test="tests/test_fusion.py::test_runs_that_cannot_be_fused_are_refused_in_one_line"),
    Case("fuse-not-bottleneck", "a fused run that is not a bottleneck adapter (or of another type)", "`--fuse HOULSBY_RUN LORA_RUN`",
         "ConfigError", "fuses bottleneck adapters", test="tests/test_fusion.py::test_runs_that_cannot_be_fused_are_refused_in_one_line"),
    Case("fuse-other-base", "a fused run trained on another base model", "`--fuse RUN RUN_ON_OTHER_MODEL`",
         "CheckpointError", "was saved on another base model", test="tests/test_fusion.py::test_runs_that_cannot_be_fused_are_refused_in_one_line"),
    Case("fusion-other-base", "a fusion file loaded onto another base model", "`load_fusion(model_on_other_base, FOLDER)`",
         "CheckpointError", "was trained on another base model", test="tests/test_fusion.py::test_a_fusion_file_is_refused_on_another_base_model"),
    Case("fusion-damaged", "a fusion run whose fusion file was modified", "`eval FUSION_RUN`",
         "CheckpointError", "fails its SHA-256 check", test="tests/test_fusion.py::test_a_damaged_fusion_file_is_refused_in_one_line"),
]  # fmt: skip


# --- workspaces ---------------------------------------------------------------------------------


SETUPS: dict[str, Callable[[dict, Path], dict]] = {}


def setup(function: Callable[[dict, Path], dict]) -> Callable[[dict, Path], dict]:
    """Register a workspace builder: (runs, tmp) -> extra placeholders for the arguments."""
    SETUPS[function.__name__] = function
    return function


def _tsv(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@setup
def nan_labels(runs: dict, tmp: Path) -> dict:
    _tsv(tmp / "data" / "STS-B", "train.tsv", "sentence1\tsentence2\tscore\n" + "a\tb\tnan\n" * 8)
    _tsv(tmp / "data" / "STS-B", "dev.tsv", "sentence1\tsentence2\tscore\na\tb\t1.0\n")
    return {}


@setup
def missing_columns(runs: dict, tmp: Path) -> dict:
    _tsv(tmp / "data" / "RTE", "train.tsv", "id\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    return {}


@setup
def unknown_label(runs: dict, tmp: Path) -> dict:
    _tsv(tmp / "data" / "RTE", "train.tsv", RTE_HEADER + "0\ta\tb\tmaybe\n")
    return {}


@setup
def empty_train(runs: dict, tmp: Path) -> dict:
    _tsv(tmp / "data" / "RTE", "train.tsv", RTE_HEADER)
    return {}


@setup
def file(runs: dict, tmp: Path) -> dict:
    (tmp / "file").write_text("not a folder")
    return {}


@setup
def other(runs: dict, tmp: Path) -> dict:
    _tsv(tmp / "other", "notes.txt", "mine")
    return {}


def _copy_run(source: Path, tmp: Path) -> Path:
    """Copy a run folder and its .partial folder (those that exist) to tmp/run[.partial]."""
    for suffix in ("", ".partial"):
        folder = source.with_name(source.name + suffix)
        if folder.exists():
            shutil.copytree(folder, tmp / f"run{suffix}")
    return tmp / "run"


@setup
def finished(runs: dict, tmp: Path) -> dict:
    return {"run": _copy_run(runs["finished"], tmp)}


@setup
def finished_other_base(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["finished"], tmp)
    config = (run / "config.yaml").read_text().replace(runs["model"], runs["other_model"])
    (run / "config.yaml").write_text(config)
    return {"run": run}


@setup
def finished_truncated(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["finished"], tmp)
    _truncate(run / "adapter" / "adapter.safetensors")
    return {"run": run}


@setup
def finished_newer(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["finished"], tmp)
    meta = checkpoint.read_metadata(run / "adapter")
    meta["format_version"] = checkpoint.FORMAT_VERSION + 1
    (run / "adapter" / checkpoint.PACKED_META_FILE).write_bytes(checkpoint.pack(meta))
    return {"run": run}


@setup
def interrupted(runs: dict, tmp: Path) -> dict:
    return {"run": _copy_run(runs["interrupted"], tmp)}


@setup
def interrupted_truncated(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["interrupted"], tmp)
    _truncate(run.with_name("run.partial") / RESUME_FILE)
    return {"run": run}


@setup
def interrupted_newer(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["interrupted"], tmp)
    _edit_checkpoint(run, lambda payload: payload.update(format_version=resume.FORMAT_VERSION + 1))
    return {"run": run}


@setup
def interrupted_flipped(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["interrupted"], tmp)
    path = run.with_name("run.partial") / RESUME_FILE
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    return {"run": run}


@setup
def two_finished(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["finished"], tmp)
    other = tmp / "other"
    shutil.copytree(run, other)
    return {"run": run, "other_run": other}


@setup
def finished_and_file(runs: dict, tmp: Path) -> dict:
    (tmp / "file").write_text("not a folder")
    return {"run": _copy_run(runs["finished"], tmp)}


@setup
def finished_other_adapter(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["finished"], tmp)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"].update(adapter="ia3", library="peft", width=None)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return {"run": run}


@setup
def finished_list_final(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["finished"], tmp)
    (run / "final.json").write_text("[1, 2]")
    return {"run": run}


@setup
def interrupted_other_base(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["interrupted"], tmp)
    _edit_checkpoint(run, lambda payload: payload["base_model"].update(embedding_sha256="0" * 64))
    return {"run": run}


@setup
def interrupted_by_two(runs: dict, tmp: Path) -> dict:
    run = _copy_run(runs["interrupted"], tmp)
    _edit_checkpoint(run, lambda payload: payload.update(num_processes=2))
    return {"run": run}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_checkpoint(run: Path, edit: Callable[[dict], None]) -> None:
    path = run.with_name("run.partial") / RESUME_FILE
    payload = torch.load(io.BytesIO(path.read_bytes()[: -resume.TRAILER_BYTES]), weights_only=True)
    edit(payload)
    resume.write_resume_state(path, payload)


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tiny_bert, glue_dir, tmp_path_factory) -> dict:
    """A finished run, an interrupted one (checkpoint after its first step), another base model."""

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad-input-runs")
    paths = {"tmp": root, "glue": glue_dir, "model": tiny_bert}
    args = [a.format(**paths) for a in TRAIN]
    assert main([*args, "--pruner", "magnitude", "--output", str(root / "finished")]) == 0

    def stop(*args, **kwargs):
        raise _Stop

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sparseadapter.train._end_epoch", stop)
        with pytest.raises(_Stop):
            main([*args, "--lr", "0.01", "--checkpoint-every", "1", "--output", str(root / "cut")])

    other = other_base_model(tiny_bert, root / "other-model")
    return {
        "finished": root / "finished",
        "interrupted": root / "cut",
        "model": tiny_bert,
        "other_model": str(other),
    }


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.args], ids=lambda c: c.name)
def test_cli_rejects(case, runs, glue_dir, tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    places = {"tmp": tmp_path, "glue": glue_dir, "model": runs["model"], "data": tmp_path / "data"}
    if case.setup:
        places.update(SETUPS[case.setup](runs, tmp_path))
    before = _snapshot(tmp_path)
    raised: list[BaseException] = []
    for command, run in cli_module.COMMANDS.items():
        monkeypatch.setitem(cli_module.COMMANDS, command, _spy(run, raised))

    code = main([a.format(**places) for a in case.args])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert case.excerpt in err and "Traceback" not in err, err
    kind = (
        type(raised[0]).__name__ if raised and isinstance(raised[0], SparseAdapterError) else USAGE
    )
    assert kind == case.error
    assert _snapshot(tmp_path) == before, "a failed command changed the workspace"


def _spy(command: Callable, raised: list[BaseException]) -> Callable:
    def run(args):
        try:
            return command(args)
        except BaseException as err:
            raised.append(err)
            raise

    return run


def test_referenced_tests_exist_and_check_the_case():
    """Rows checked in the API name a real test that expects their exception; the message
    excerpt is one the code raises."""
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "sparseadapter").rglob("*.py"))
    for case in CASES:
        if case.args:
            continue
        path, _, function = case.test.partition("::")
        tree = ast.parse((ROOT / path).read_text())
        found = [n for n in ast.walk(tree) if getattr(n, "name", None) == function]
        assert found, f"{case.name}: {case.test} does not exist"
        assert case.error in ast.get_source_segment((ROOT / path).read_text(), found[0]), case.name
        assert case.excerpt in source, f"{case.name}: no message contains {case.excerpt!r}"


def test_enough_cases_and_unique_names():
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


def render_table() -> str:
    rows = [
        "| case | how it is triggered | exception / exit code | message excerpt | test |",
        "|---|---|---|---|---|",
    ]
    for c in CASES:
        code = f"exit 2 ({c.error})" if c.args else c.error
        excerpt = c.excerpt.replace("|", "\\|")
        rows.append(f"| {c.problem} | {c.trigger} | {code} | `{excerpt}` | `{c.test_id}` |")
    return "\n".join(rows)


def _documented_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{DOC} lacks the generated-table markers"
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def test_docs_list_exactly_these_cases():
    assert _documented_table() == render_table(), (
        "docs/errors.md is out of date: run `python tests/test_bad_input.py` to regenerate it"
    )


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{START}\n{render_table()}\n{END}{tail}", encoding="utf-8")
    print(f"wrote {len(CASES)} cases to {DOC}", file=sys.stderr)
