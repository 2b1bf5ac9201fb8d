"""AdapterFusion end to end: task adapters of finished runs fused for a new task (tiny BERT,
tiny GLUE files), eval reproducing the run, the AdapterHub export loaded without sparseadapter,
and the errors for runs that cannot be fused."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import other_base_model, run_offline

from sparseadapter.cli import _run_config, build_parser, main
from sparseadapter.errors import CheckpointError, ConfigError
from sparseadapter.train import train

pytestmark = pytest.mark.adapterhub


def flags(tiny_bert: str, tiny_glue: Path, output: Path, task: str) -> list[str]:
    return [
        "train", "--model", tiny_bert, "--task", task, "--data-dir", str(tiny_glue),
        "--max-length", "16", "--epochs", "1", "--batch-size", "8", "--scoring-examples", "8",
        "--lr", "1e-2", "--checkpoint-every", "0", "--output", str(output), "--quiet",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def task_runs(tiny_bert, tiny_glue, tmp_path_factory) -> dict[str, Path]:
    """Finished tiny runs: RTE Houlsby SNIP-50%, STS-B Houlsby dense, RTE Pfeiffer, RTE LoRA,
    and an STS-B Houlsby run on another base model (other input embeddings)."""

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("task-runs")
    other = other_base_model(tiny_bert, root / "other-model")
    runs = {
        "rte": ("rte", ["--adapter", "houlsby", "--pruner", "snip", "--sparsity", "0.5"]),
        "stsb": ("stsb", ["--adapter", "houlsby"]),
        "pfeiffer": ("rte", ["--adapter", "pfeiffer"]),
        "lora": ("rte", ["--adapter", "lora"]),
        "other_base": ("stsb", ["--adapter", "houlsby", "--model", str(other)]),
    }
    for name, (task, options) in runs.items():
        assert main([*flags(tiny_bert, tiny_glue, root / name, task), *options]) == 0
    return {name: root / name for name in runs}


@pytest.fixture(scope="module")
def fusion_run(task_runs, tiny_bert, tiny_glue, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("fusion") / "rte-fusion"
    fuse = ["--fuse", str(task_runs["rte"]), str(task_runs["stsb"])]
    options = ["--adapter", "fusion", *fuse, "--pruner", "magnitude", "--sparsity", "0.4"]
    assert main([*flags(tiny_bert, tiny_glue, output, "rte"), *options]) == 0
    return output


def adapter_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The dense task adapter weights (no head) of a run, through its public loader."""
    from sparseadapter.rundir import finished_run, load_run_model
    from sparseadapter.tasks import get_task

    config = finished_run(checkpoint.parent)
    model, _ = load_run_model(checkpoint.parent, config, get_task(config.data.task, config.data))
    return {
        n.replace(".task.", "."): p.detach().clone()
        for n, p in model.named_parameters()
        if ".adapters.task." in n
    }


def test_fusion_trains_only_the_fusion_and_head_and_keeps_task_adapters(fusion_run, task_runs):
    final = json.loads((fusion_run / "final.json").read_text())
    assert sorted(p.name for p in (fusion_run / "fused").iterdir()) == ["rte", "stsb"]
    assert final["sparsity"]["achieved_sparsity"] == pytest.approx(0.4, abs=1e-3)

    from sparseadapter.rundir import finished_run, load_run_model
    from sparseadapter.tasks import get_task

    model, _ = load_run_model(fusion_run, finished_run(fusion_run), get_task("rte"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("adapter_fusion_layer" in n or "classifier" in n for n in trainable)
    # the frozen task adapters are exactly the trained ones, pruned weights still zero
    params = dict(model.named_parameters())
    for task in ("rte", "stsb"):
        for name, value in adapter_tensors(task_runs[task] / "adapter").items():
            fused = params[name.replace(".adapters.", f".adapters.{task}.")]
            assert not fused.requires_grad and torch.equal(fused.detach(), value)
    pruned = [v for n, v in adapter_tensors(task_runs["rte"] / "adapter").items() if "weight" in n]
    assert sum(int((v == 0).sum()) for v in pruned) >= 0.5 * sum(v.numel() for v in pruned)
    # counted apart: the fusion's trainable weights and the frozen task adapters
    report = final["parameters"]
    frozen = sum(p.numel() for n, p in params.items() if ".adapters." in n)
    assert report["frozen_adapters"] == frozen
    assert report["trainable"] == sum(params[n].numel() for n in trainable)
    assert report["nonzero_frozen_adapters"] < report["frozen_adapters"]  # the pruned RTE one


def test_eval_reproduces_from_the_run_folder_alone(fusion_run, task_runs, tmp_path, capsys):
    moved = tmp_path / "elsewhere"
    shutil.copytree(fusion_run, moved)
    hidden = [task_runs[t].rename(task_runs[t].with_name(t + ".away")) for t in ("rte", "stsb")]
    try:
        capsys.readouterr()
        assert main(["eval", str(moved)]) == 0
        assert "(same as final.json" in capsys.readouterr().out
    finally:
        for path, task in zip(hidden, ("rte", "stsb")):
            path.rename(task_runs[task])


EXPORT_CHECK = textwrap.dedent(
    """
    import sys
    import torch, adapters
    from adapters import Fuse
    from transformers import AutoModelForSequenceClassification

    ref = torch.load("reference.pt")
    model = AutoModelForSequenceClassification.from_pretrained("base", num_labels=2)
    adapters.init(model)
    for name in ("rte", "stsb"):
        model.load_adapter(f"export/{name}", use_safetensors=True)
    model.load_adapter_fusion("export/fusion", use_safetensors=True)
    model.set_active_adapters(Fuse("rte", "stsb"))
    model.eval()
    with torch.no_grad():
        logits = model(**ref["inputs"]).logits
    assert torch.allclose(logits, ref["logits"], atol=1e-6), (logits, ref["logits"])
    assert "sparseadapter" not in sys.modules
    print("EXPORT_OK")
    """
)


def test_adapterhub_export_loads_without_sparseadapter(fusion_run, tiny_bert, tmp_path, capsys):
    from transformers import AutoModel

    from sparseadapter.rundir import finished_run, load_run_model
    from sparseadapter.tasks import get_task

    for other in ("sparse", "peft"):
        assert main(["export", str(fusion_run), "--format", other]) == 2
        assert "exports as format 'adapterhub'" in capsys.readouterr().err
    assert main(["export", str(fusion_run), "--format", "adapterhub"]) == 0
    export = fusion_run / "export-adapterhub"
    model, _ = load_run_model(fusion_run, finished_run(fusion_run), get_task("rte"))
    model.eval()
    inputs = {"input_ids": torch.randint(5, 1000, (3, 9)), "attention_mask": torch.ones(3, 9)}
    with torch.no_grad():
        reference = {"inputs": inputs, "logits": model(**inputs).logits}
    torch.save(reference, tmp_path / "reference.pt")
    AutoModel.from_pretrained(tiny_bert).save_pretrained(tmp_path / "base")
    shutil.copytree(export, tmp_path / "export")
    fusion = safetensors.torch.load_file(
        tmp_path / "export" / "fusion" / "model_adapter_fusion.safetensors"
    )
    assert any((v == 0).any() for k, v in fusion.items() if k.endswith("weight"))  # pruned
    run_offline(EXPORT_CHECK, tmp_path)


@pytest.mark.parametrize(
    ("fuse", "error", "fragment"),
    [
        (["rte"], ConfigError, "at least two task adapters, got 1"),
        (["rte", "rte"], ConfigError, "twice"),
        (["rte", "copy"], ConfigError, "holds the same task adapter as"),
        (["rte", "missing"], ConfigError, "does not exist"),
        (["rte", "unfinished"], ConfigError, "has not finished"),
        (["rte", "interrupted"], ConfigError, "only an interrupted .partial run"),
        (["rte", "lora"], ConfigError, "fuses bottleneck adapters"),
        (["rte", "pfeiffer"], ConfigError, "must share one adapter type"),
        (["rte", "other_base"], CheckpointError, "was saved on another base model"),
    ],
)
def test_runs_that_cannot_be_fused_are_refused_in_one_line(
    fuse, error, fragment, task_runs, tiny_bert, tiny_glue, tmp_path, capsys
):
    """On the command line one line and exit code 2; in Python the exception ``error``
    (ConfigError, or CheckpointError for a run on another base model)."""
    shutil.copytree(task_runs["rte"], tmp_path / "copy")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(task_runs["stsb"], unfinished)
    (unfinished / "final.json").unlink()
    paths = {**task_runs, "copy": tmp_path / "copy", "missing": tmp_path / "missing"}
    (tmp_path / "interrupted.partial").mkdir()  # a run that never finished leaves only this
    paths["unfinished"], paths["interrupted"] = unfinished, tmp_path / "interrupted"
    output = tmp_path / "out"
    options = ["--adapter", "fusion", "--fuse", *(str(paths[name]) for name in fuse)]
    argv = [*flags(tiny_bert, tiny_glue, output, "rte"), *options]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert not output.exists()
    with pytest.raises(error, match=re.escape(fragment)):
        train(_run_config(build_parser().parse_args(argv)), quiet=True)


def test_fuse_needs_the_fusion_adapter(task_runs, tiny_bert, tiny_glue, tmp_path, capsys):
    fuse = ["--fuse", str(task_runs["rte"]), str(task_runs["stsb"])]
    assert main([*flags(tiny_bert, tiny_glue, tmp_path / "o", "rte"), *fuse]) == 2
    assert "goes with --adapter fusion" in capsys.readouterr().err


def test_a_damaged_fusion_file_is_refused_in_one_line(fusion_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(fusion_run, copy)
    weights = copy / "adapter" / "fusion.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["eval", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fails its SHA-256 check" in err, err
    from sparseadapter.rundir import finished_run, load_run_model
    from sparseadapter.tasks import get_task

    with pytest.raises(CheckpointError, match="fails its SHA-256 check"):
        load_run_model(copy, finished_run(copy), get_task("rte"))


def test_fused_runs_are_a_list_in_yaml_and_set(tmp_path):
    from sparseadapter.runconfig import resolve

    (tmp_path / "run.yaml").write_text("model:\n  adapter: fusion\n  fuse: [runs/a, runs/b]\n")
    assert resolve(tmp_path / "run.yaml").model.fuse == ["runs/a", "runs/b"]
    config = resolve(None, overrides=["model.adapter=fusion", "model.fuse=[x, y, z]"])
    assert config.model.fuse == ["x", "y", "z"] and config.run_name() == "rte-fusion-dense-s0"
    with pytest.raises(ConfigError, match="model.fuse must be a list of strings"):
        resolve(None, overrides=["model.adapter=fusion", "model.fuse=runs/a"])
    with pytest.raises(ConfigError, match="no width"):
        resolve(None, overrides=["model.adapter=fusion", "model.fuse=[a, b]", "model.width=8"])


def _write_fusion_v1(model, folder: Path) -> None:
    """The fusion layer and head as version 1 stored them: one tensor per parameter, pruned
    ones as kept values plus a packed bitmask."""
    import numpy as np

    from sparseadapter import fusion
    from sparseadapter.checkpoint import base_identity, canonical, checksum
    from sparseadapter.sparsify import get_masks, masked_parameters

    masks, tensors, pruned = get_masks(model), {}, {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        value = param.detach().cpu()
        if name in masks:
            keep = masks[name].cpu().flatten()
            tensors[name] = value.flatten()[keep].contiguous()
            tensors[f"{name}:bitmask"] = torch.from_numpy(np.packbits(keep.numpy()))
            pruned[name] = {"shape": list(value.shape), "dtype": "float32"}
        else:
            tensors[name] = value.contiguous()
    payload = safetensors.torch.save(tensors)
    meta = {
        "format": fusion.FORMAT_NAME, "format_version": 1, "adapters": fusion.fusion_names(model),
        "base_model": base_identity(model),
        "sparsity_config": masked_parameters(model).config.to_dict(), "pruned_tensors": pruned,
    }  # fmt: skip
    meta = json.loads(canonical(meta))
    meta["sha256"] = checksum(payload, meta)
    (folder / fusion.WEIGHTS_FILE).write_bytes(payload)
    (folder / fusion.META_FILE).write_bytes(canonical(meta))


def test_fusion_files_use_the_sparse_format_and_version_1_still_loads(fusion_run, tmp_path):
    from sparseadapter.rundir import finished_run, load_run_model
    from sparseadapter.sparsify import get_masks
    from sparseadapter.tasks import get_task

    meta = json.loads((fusion_run / "adapter" / "fusion.json").read_text())
    assert meta["format_version"] == 2 and meta["encoding"]["masks"]["coding"] in ("rice", "lzma")
    config = finished_run(fusion_run)
    model, _ = load_run_model(fusion_run, config, get_task("rte"))
    current = {n: p.detach().clone() for n, p in model.named_parameters()}
    copy = tmp_path / "run"
    shutil.copytree(fusion_run, copy)
    _write_fusion_v1(model, copy / "adapter")
    loaded, _ = load_run_model(copy, finished_run(copy), get_task("rte"))
    for name, param in loaded.named_parameters():
        assert torch.equal(param, current[name]), name
    assert set(get_masks(loaded)) == set(get_masks(model)) != set()


def test_a_fusion_file_is_refused_on_another_base_model(fusion_run):
    from sparseadapter.fusion import load_fusion
    from sparseadapter.rundir import finished_run, load_run_model
    from sparseadapter.tasks import get_task

    model, _ = load_run_model(fusion_run, finished_run(fusion_run), get_task("rte"))
    load_fusion(model, fusion_run / "adapter")  # its own base: loads
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)  # the same shapes, other embeddings
    with pytest.raises(CheckpointError, match=r"another base model .*embedding weights differ"):
        load_fusion(model, fusion_run / "adapter")
