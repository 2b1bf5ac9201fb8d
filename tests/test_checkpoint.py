"""Sparse checkpoints: round trips per adapter family, size, dense export, merging, corruption."""

from __future__ import annotations

import copy
import errno
import importlib.metadata
import json
import os
import textwrap
from pathlib import Path

import helpers
import peft
import pytest
import safetensors.torch
import torch
from transformers import AutoModelForSequenceClassification

import sparseadapter as sa
from sparseadapter import checkpoint
from sparseadapter.checkpoint import (
    FORMAT_VERSION,
    META_FILE,
    PACKED_META_FILE,
    WEIGHTS_FILE,
    checksum,
    load_sparse,
    read_metadata,
    save_sparse,
    size_bound,
)
from sparseadapter.errors import CheckpointError, ConfigError
from sparseadapter.export import export_dense, merge
from sparseadapter.metapack import canonical, pack
from sparseadapter.sparsify import masked_parameters


def tiny_config(model_type: str = "bert", **overrides):
    return helpers.tiny_config(model_type, **{"num_labels": 3, **overrides})


def base_model(config, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(copy.deepcopy(config))


def peft_builder(config, name: str = "default"):
    return lambda base: peft.get_peft_model(base, copy.deepcopy(config), adapter_name=name)


def adapterhub_builder(config_name: str):
    def build(base):
        import adapters

        adapters.init(base)
        base.add_adapter("task", config=config_name)
        base.train_adapter("task")
        return base

    return build


LORA = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
FAMILIES = {
    "peft-lora": ("bert", peft_builder(LORA)),
    "peft-lora-task": ("bert", peft_builder(LORA, name="task")),  # the CLI names its adapter so
    "peft-lora-bart": (
        "bart",
        peft_builder(
            peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"])
        ),
    ),
    "peft-ia3": (
        "bert",
        peft_builder(
            peft.IA3Config(
                task_type="SEQ_CLS", target_modules=["key", "value"], feedforward_modules=[]
            )
        ),
    ),
    "peft-prefix": (
        "bert",
        peft_builder(peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)),
    ),
    "houlsby": ("bert", adapterhub_builder("double_seq_bn")),
    "houlsby-roberta": ("roberta", adapterhub_builder("double_seq_bn")),
    "pfeiffer": ("bert", adapterhub_builder("seq_bn")),
    "parallel": ("bert", adapterhub_builder("par_bn")),
    "mam": ("bert", adapterhub_builder("mam")),
    "prefix": ("bert", adapterhub_builder("prefix_tuning")),
    "lora": ("bert", adapterhub_builder("lora")),
    "ia3": ("bert", adapterhub_builder("ia3")),
}


def families(*names: str) -> list:
    """``names`` as test parameters: AdapterHub families need AdapterHub (see helpers)."""
    marks = {"peft-prefix": [helpers.PEFT_PREFIX_FAILS]}
    return [
        pytest.param(n, marks=marks.get(n, [] if n.startswith("peft-") else [pytest.mark.adapterhub]))
        for n in names
    ]  # fmt: skip


def inputs(config, batch: int = 3, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    """Token ids avoiding special tokens, ending in EOS (BART classifies from the last EOS)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (batch, length), generator=g)
    ids[:, -1] = config.eos_token_id if config.eos_token_id is not None else 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    training = model.training
    model.eval()
    out = model(**batch).logits
    model.train(training)
    return out


def sparse_model(family: str, sparsity: float = 0.6, method: str = "random"):
    """A family's adapter on a tiny base, with trained-looking weights, pruned."""
    model_type, build = FAMILIES[family]
    config = tiny_config(model_type)
    model = build(base_model(config))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    sa.sparsify(model, sa.SparsityConfig(method=method, sparsity=sparsity))
    return model, config


def trainable(model) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", families(*FAMILIES))
@pytest.mark.parametrize("method", ["random", "magnitude"])  # masks from the seed / coded
def test_round_trip_is_bit_identical(family, method, tmp_path):
    model, config = sparse_model(family, method=method)
    batch = inputs(config)
    expected = logits(model, batch)
    save_sparse(model, tmp_path / "ckpt")

    base = base_model(config).eval()
    loaded = load_sparse(base, tmp_path / "ckpt")

    assert torch.equal(logits(loaded, batch), expected)
    values = dict(loaded.named_parameters())
    assert all(torch.equal(values[n], p) for n, p in model.named_parameters() if p.requires_grad)
    masks, loaded_masks = sa.get_masks(model), sa.get_masks(loaded)
    assert masks and masks.keys() == loaded_masks.keys()
    assert all(torch.equal(masks[n], loaded_masks[n].cpu()) for n in masks)
    assert trainable(loaded) == trainable(model)
    assert not loaded.training  # the base model's mode is kept
    assert masked_parameters(loaded).config == masked_parameters(model).config


@pytest.mark.adapterhub
def test_round_trip_with_an_adapterhub_flex_head(tmp_path):
    config = tiny_config()

    import adapters

    def flex_base():
        torch.manual_seed(0)
        return adapters.BertAdapterModel(copy.deepcopy(config))

    model = flex_base()
    model.add_adapter("task", config="seq_bn")
    model.add_classification_head("task", num_labels=5)
    model.train_adapter("task")
    sa.sparsify(model, sa.SparsityConfig(method="magnitude", sparsity=0.5))
    save_sparse(model, tmp_path / "ckpt")
    loaded = load_sparse(flex_base(), tmp_path / "ckpt")
    assert list(loaded.heads) == ["task"]
    assert torch.equal(logits(loaded, inputs(config)), logits(model, inputs(config)))
    assert trainable(loaded) == trainable(model)


def test_load_into_a_model_already_carrying_the_adapter(tmp_path):
    model, config = sparse_model("peft-lora")
    save_sparse(model, tmp_path / "ckpt")
    target = peft_builder(LORA)(base_model(config))
    loaded = load_sparse(target, tmp_path / "ckpt")
    assert loaded is target
    assert torch.equal(logits(loaded, inputs(config)), logits(model, inputs(config)))
    assert sa.get_masks(loaded).keys() == sa.get_masks(model).keys()


@pytest.mark.parametrize(
    "trained_embeddings",
    [{"modules_to_save": ["word_embeddings"]}, {"trainable_token_indices": [5, 6]}],
    ids=["modules_to_save", "trainable_tokens"],
)
def test_round_trip_with_peft_training_the_embeddings(trained_embeddings, tmp_path):
    config = tiny_config()
    lora = peft.LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules=["query", "value"], **trained_embeddings
    )
    model = peft_builder(lora)(base_model(config))
    sa.sparsify(model, sa.SparsityConfig(method="random", sparsity=0.5))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    save_sparse(model, tmp_path / "ckpt")

    loaded = load_sparse(base_model(config), tmp_path / "ckpt")

    assert torch.equal(logits(loaded, inputs(config)), logits(model, inputs(config)))
    assert trainable(loaded) == trainable(model)


def test_loading_a_dense_checkpoint_drops_the_models_masks(tmp_path):
    config = tiny_config()
    dense = peft_builder(LORA)(base_model(config))
    with torch.no_grad():
        for p in dense.parameters():
            if p.requires_grad:
                p.add_(0.1)
    save_sparse(dense, tmp_path / "dense")
    target, _ = sparse_model("peft-lora", sparsity=0.8)

    loaded = load_sparse(target, tmp_path / "dense")

    assert sa.get_masks(loaded) == {}
    assert torch.equal(logits(loaded, inputs(config)), logits(dense, inputs(config)))


@pytest.mark.parametrize("family", families("peft-lora", "houlsby"))
def test_training_after_load_keeps_pruned_weights_zero(family, tmp_path):
    model, config = sparse_model(family, sparsity=0.8)
    save_sparse(model, tmp_path / "ckpt")
    loaded = load_sparse(base_model(config), tmp_path / "ckpt")
    loaded.train()
    masks = sa.get_masks(loaded)
    named = dict(loaded.named_parameters())
    before = {n: named[n].detach().clone() for n in masks}
    optimizer = torch.optim.AdamW(
        [p for p in loaded.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    batch = inputs(config)
    for _ in range(3):
        loss = loaded(**batch, labels=torch.tensor([0, 1, 2])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, keep in masks.items():
        assert not named[n][~keep].any(), n
    assert any(not torch.equal(named[n][masks[n]], before[n][masks[n]]) for n in masks)


def test_metadata_records_what_rebuilding_needs(tmp_path):
    model, config = sparse_model("peft-lora")
    save_sparse(model, tmp_path / "ckpt")
    meta = read_metadata(tmp_path / "ckpt")
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["library"] == "peft" and meta["adapter_name"] == "default"
    assert meta["adapter_config"]["r"] == 4
    assert sorted(meta["adapter_config"]["target_modules"]) == ["query", "value"]
    assert meta["base_model"]["hidden_size"] == config.hidden_size
    assert meta["base_model"]["num_labels"] == 3
    assert meta["sparsity_config"] == masked_parameters(model).config.to_dict()
    assert {"torch", "transformers", "peft", "sparseadapter"} <= meta["versions"].keys()
    assert meta["versions"]["sparseadapter"] == sa.__version__
    assert len(meta["sha256"]) == 64


def test_save_works_from_a_source_checkout_without_package_metadata(tmp_path, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    model, _ = sparse_model("peft-lora")
    save_sparse(model, tmp_path / "ckpt")
    meta = read_metadata(tmp_path / "ckpt")
    assert meta["versions"]["sparseadapter"] == sa.__version__


@pytest.mark.adapterhub
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(dtype, tmp_path):
    model, config = sparse_model("houlsby", method="magnitude")
    save_sparse(model, tmp_path / "full")
    save_sparse(model, tmp_path / "half", dtype=dtype)  # the older alias of precision=
    stored = safetensors.torch.load_file(tmp_path / "half" / WEIGHTS_FILE)
    assert stored["values"].dtype == getattr(torch, dtype)
    full = safetensors.torch.load_file(tmp_path / "full" / WEIGHTS_FILE)
    assert full.keys() == stored.keys()
    assert stored["values"].nbytes * 2 == full["values"].nbytes
    assert torch.equal(stored["masks"], full["masks"])
    loaded = load_sparse(base_model(config), tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    masks = sa.get_masks(model)
    assert masks and sa.get_masks(loaded).keys() == masks.keys()
    assert all(torch.equal(masks[n], m) for n, m in sa.get_masks(loaded).items())
    torch.testing.assert_close(
        logits(loaded, inputs(config)), logits(model, inputs(config)), atol=2e-2, rtol=0
    )


def test_unknown_storage_dtype_is_refused(tmp_path):
    model, _ = sparse_model("peft-lora")
    with pytest.raises(ConfigError, match="float16"):
        save_sparse(model, tmp_path / "ckpt", dtype="int8")


@pytest.fixture(scope="module")
def sized_models():
    """Adapters large enough that the header is a small part of the file."""
    config = tiny_config(
        hidden_size=256, num_attention_heads=4, intermediate_size=256, num_labels=2
    )
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=32, target_modules=["query", "value"])
    builders = {"peft-lora": peft_builder(lora), "houlsby": adapterhub_builder("double_seq_bn")}
    built = {}

    def model(family: str):  # built on first use: AdapterHub's only where it is installed
        if family not in built:
            built[family] = builders[family](base_model(config))
        return built[family]

    return model


@pytest.mark.parametrize("family", families("peft-lora", "houlsby"))
@pytest.mark.parametrize("sparsity", [0.4, 0.8, 0.9, 0.95])
def test_size_bound(sized_models, family, sparsity, tmp_path):
    model = sized_models(family)
    library = "peft" if family == "peft-lora" else "adapterhub"
    dense_dir = export_dense(model, tmp_path / "dense", format=library)
    dense = sum(f.stat().st_size for f in dense_dir.glob("*.safetensors"))
    sa.sparsify(model, sa.SparsityConfig(method="random", sparsity=sparsity))
    path = save_sparse(model, tmp_path / "ckpt")
    size = sum(f.stat().st_size for f in path.iterdir())

    masks = sa.get_masks(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    pruned = sum(p.numel() * 4 for n, p in params if n in masks)
    unpruned = sum(p.numel() * 4 for n, p in params if n not in masks)
    assert size <= size_bound(sparsity, pruned, unpruned, len(params))
    # the dense-fraction formula, plus the unpruned tensors (biases, head) that are stored as they are
    assert size <= (1 - sparsity) * dense + dense / 32 + sparsity * unpruned + 16 * 1024


# --- dense export, loaded without sparseadapter -----------------------------------------------

EXPORT_CHECK = textwrap.dedent(
    """
    import sys
    import torch, peft, adapters
    from transformers import AutoModelForSequenceClassification

    ref = torch.load("reference.pt")
    peft_model = peft.PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained("peft_base"), "peft_export"
    ).eval()
    ah = AutoModelForSequenceClassification.from_pretrained("ah_base")
    adapters.init(ah)
    name = ah.load_adapter("ah_export", use_safetensors=True)
    ah.set_active_adapters(name)
    ah.eval()
    with torch.no_grad():
        assert torch.equal(peft_model(**ref["inputs"]).logits, ref["peft"]), "peft logits differ"
        assert torch.equal(ah(**ref["inputs"]).logits, ref["ah"]), "adapterhub logits differ"
    assert "sparseadapter" not in sys.modules
    print("EXPORT_OK")
    """
)


@pytest.mark.adapterhub
@pytest.mark.parametrize("peft_family", ["peft-lora", "peft-lora-task"])
def test_dense_exports_load_without_sparseadapter(peft_family, tmp_path):
    config = tiny_config()
    reference = {"inputs": inputs(config)}
    for key, family in [("peft", peft_family), ("ah", "houlsby")]:
        base_model(config).save_pretrained(tmp_path / f"{key}_base")
        model, _ = sparse_model(family)
        reference[key] = logits(model, reference["inputs"])
        export_dense(
            model, tmp_path / f"{key}_export", format="peft" if key == "peft" else "adapterhub"
        )
    torch.save(reference, tmp_path / "reference.pt")
    helpers.run_offline(EXPORT_CHECK, tmp_path)


def test_dense_export_stores_pruned_weights_as_zeros(tmp_path):
    model, _ = sparse_model("peft-lora", sparsity=0.8)
    masks = sa.get_masks(model)
    name = next(iter(masks))
    with torch.no_grad():  # a write that bypasses the optimizer: export must re-apply the mask
        dict(model.named_parameters())[name].add_(1.0)
    export_dense(model, tmp_path / "export", format="peft")
    stored = safetensors.torch.load_file(tmp_path / "export" / "adapter_model.safetensors")
    param = dict(model.named_parameters())[name].detach()
    value = stored[name.replace(".default", "")]
    assert not value[~masks[name]].any()
    assert torch.equal(value[masks[name]], param[masks[name]])


@pytest.mark.parametrize(
    ("family", "fmt", "match"),
    [
        ("peft-lora", "adapterhub", "format='peft'"),
        pytest.param("houlsby", "sparse", "save_sparse", marks=pytest.mark.adapterhub),
    ],
)
def test_export_format_errors(family, fmt, match, tmp_path):
    model, _ = sparse_model(family)
    with pytest.raises(ConfigError, match=match):
        export_dense(model, tmp_path / "export", format=fmt)


# --- merge ------------------------------------------------------------------------------------


def test_merge_peft_lora_uses_masked_weights():
    model, config = sparse_model("peft-lora", sparsity=0.7)
    batch = inputs(config)
    expected = logits(model, batch)
    named = dict(model.named_parameters())
    prefix = "base_model.model.bert.encoder.layer.0.attention.self.query"
    a_name, b_name = f"{prefix}.lora_A.default.weight", f"{prefix}.lora_B.default.weight"
    masks = sa.get_masks(model)
    a = named[a_name].detach().clone()
    b = named[b_name].detach().clone()
    w0 = named[f"{prefix}.base_layer.weight"].detach().clone()
    with torch.no_grad():  # values written at pruned positions past the optimizer
        named[a_name][~masks[a_name]] = 1.0
        named[b_name][~masks[b_name]] = 1.0

    merged = merge(model)

    weight = dict(merged.named_parameters())["bert.encoder.layer.0.attention.self.query.weight"]
    torch.testing.assert_close(weight.detach(), w0 + LORA.lora_alpha / LORA.r * b @ a)
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-5, rtol=1e-5)
    assert not sa.get_masks(model)
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.adapterhub
def test_merge_adapterhub_lora_matches_unmerged_logits():
    model, config = sparse_model("lora", sparsity=0.5)
    batch = inputs(config)
    expected = logits(model, batch)
    merged = merge(model)
    assert merged is model and not sa.get_masks(model)
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", families("houlsby", "peft-ia3", "ia3"))
def test_merge_refuses_non_lora(family):
    model, _ = sparse_model(family)
    with pytest.raises(ConfigError, match="LoRA"):
        merge(model)


# --- refusals and corruption ------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model, config = sparse_model("peft-lora")
    path = save_sparse(model, tmp_path / "ckpt")
    return path, config


def test_truncated_weights_are_refused(saved):
    path, config = saved
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_sparse(base_model(config), path)


def test_tampered_weights_are_refused(saved):
    path, config = saved
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-5] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified"):
        load_sparse(base_model(config), path)


def test_metadata_is_packed_to_a_fraction_of_its_json(saved):
    path, _ = saved
    assert not (path / META_FILE).exists()
    packed = (path / PACKED_META_FILE).stat().st_size
    assert packed * 4 < len(canonical(read_metadata(path)))


def test_a_version_2_checkpoint_with_plain_json_metadata_still_loads(saved):
    """Version 2 differs from 3 only in the metadata file: plain JSON, sparse_config.json."""
    path, config = saved
    current = load_sparse(base_model(config), path)
    meta = read_metadata(path)
    meta["format_version"] = 2
    meta["sha256"] = checksum((path / WEIGHTS_FILE).read_bytes(), meta)
    (path / PACKED_META_FILE).unlink()
    (path / META_FILE).write_bytes(canonical(meta))
    loaded = load_sparse(base_model(config), path)
    expected = dict(current.named_parameters())
    for name, param in loaded.named_parameters():
        assert torch.equal(param, expected[name]), name
    meta["adapter_config"]["r"] = 8  # and its checksum still guards it
    (path / META_FILE).write_bytes(canonical(meta))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_sparse(base_model(config), path)


def test_tampered_metadata_is_refused(saved):
    path, config = saved
    meta = read_metadata(path)
    meta["adapter_config"]["r"] = 8
    (path / PACKED_META_FILE).write_bytes(pack(meta))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_sparse(base_model(config), path)


def test_truncated_metadata_is_refused(saved):
    path, config = saved
    data = (path / PACKED_META_FILE).read_bytes()
    (path / PACKED_META_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not readable metadata.*truncated or corrupted"):
        load_sparse(base_model(config), path)


def test_newer_format_version_is_refused_with_upgrade_hint(saved):
    path, config = saved
    meta = read_metadata(path)
    meta["format_version"] = FORMAT_VERSION + 1
    (path / PACKED_META_FILE).write_bytes(pack(meta))
    with pytest.raises(CheckpointError, match=rf"version {FORMAT_VERSION + 1}.*upgrade"):
        load_sparse(base_model(config), path)


def test_missing_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a sparse checkpoint"):
        load_sparse(base_model(tiny_config()), tmp_path / "empty")


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (lambda: base_model(tiny_config(hidden_size=64, intermediate_size=64)), "hidden_size=32"),
        (lambda: base_model(tiny_config(num_labels=2)), "num_labels=3"),
        (lambda: base_model(tiny_config("roberta")), "model_type='bert'"),
        (lambda: base_model(tiny_config(), seed=1), "embedding weights differ"),
    ],
    ids=["hidden", "labels", "architecture", "weights"],
)
def test_other_base_model_is_refused(saved, other, match):
    path, _ = saved
    base = other()
    with pytest.raises(CheckpointError, match=match):
        load_sparse(base, path)
    assert not isinstance(base, peft.PeftModel) and not any(
        "lora" in n for n, _ in base.named_parameters()
    )


def test_model_with_another_adapter_shape_is_refused(saved):
    path, config = saved
    other = peft.get_peft_model(
        base_model(config),
        peft.LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "value"]),
    )
    before = {n: p.detach().clone() for n, p in other.named_parameters() if p.requires_grad}
    with pytest.raises(CheckpointError, match="shapes differ.*another adapter configuration"):
        load_sparse(other, path)
    assert all(torch.equal(p, before[n]) for n, p in other.named_parameters() if n in before)


def test_model_with_another_adapter_is_refused(saved):
    path, config = saved
    other = peft.get_peft_model(
        base_model(config),
        peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "key", "value"]),
    )
    with pytest.raises(
        CheckpointError, match="10 tensors in the checkpoint, 14 trainable in the model"
    ):
        load_sparse(other, path)


# --- atomic writes ----------------------------------------------------------------------------


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_failed_save_leaves_the_existing_checkpoint_untouched(saved, monkeypatch):
    path, config = saved
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    model, _ = sparse_model("peft-lora", sparsity=0.9)
    real_write = checkpoint.write_new

    def write_then_fail(target, data):
        real_write(target, data[:10])
        if target.name == PACKED_META_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_new", write_then_fail)
    with pytest.raises(ConfigError, match="No space left on device; free some disk space"):
        save_sparse(model, path, overwrite=True)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    assert leftovers(path.parent) == []
    load_sparse(base_model(config), path)


def test_failed_rename_restores_the_existing_checkpoint(saved, monkeypatch):
    path, _ = saved
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    model, _ = sparse_model("peft-lora", sparsity=0.9)
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(f".{path.name}.tmp-"):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(ConfigError, match="rename failed"):
        save_sparse(model, path, overwrite=True)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    assert leftovers(path.parent) == []


def test_save_replaces_an_older_checkpoint_only_when_told(saved):
    path, config = saved
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    model, _ = sparse_model("peft-lora", sparsity=0.9)
    with pytest.raises(CheckpointError, match="already holds a checkpoint: pass overwrite=True"):
        save_sparse(model, path)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    save_sparse(model, path, overwrite=True)
    loaded = load_sparse(base_model(config), path)
    assert torch.equal(logits(loaded, inputs(config)), logits(model, inputs(config)))
    assert leftovers(path.parent) == []


def test_save_refuses_to_replace_a_foreign_directory(tmp_path):
    target = tmp_path / "notes"
    target.mkdir()
    (target / "todo.txt").write_text("keep me")
    model, _ = sparse_model("peft-lora")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        save_sparse(model, target)
    assert (target / "todo.txt").read_text() == "keep me"
    assert sorted(p.name for p in target.iterdir()) == ["todo.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_never_replaces_a_folder_of_something_else(tmp_path, overwrite):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "adapter_config.json").write_text("{}")  # a name an export has, and other files
    (target / "notes.txt").write_text("keep me")
    model, _ = sparse_model("peft-lora")
    export_dense(model, tmp_path / "export", format="peft")
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        export_dense(model, tmp_path / "export", format="peft")
    with pytest.raises(CheckpointError, match="not a previous checkpoint"):
        save_sparse(model, target, overwrite=overwrite)
    assert (target / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("api", ["save_sparse", "export_dense"])
def test_a_path_under_a_file_is_a_one_line_error(tmp_path, api):
    (tmp_path / "afile").write_text("x")
    model, _ = sparse_model("peft-lora")
    write = save_sparse if api == "save_sparse" else export_dense
    with pytest.raises(ConfigError, match=r"afile is a file, not a folder; choose another"):
        write(model, tmp_path / "afile" / "x")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_target_is_a_one_line_error(tmp_path, monkeypatch, code):
    model, _ = sparse_model("peft-lora")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint, "write_new", refuse)
    with pytest.raises(ConfigError, match=f"cannot write .*ckpt: {os.strerror(code)}; choose"):
        save_sparse(model, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_exported_files_follow_the_umask(tmp_path):
    model, _ = sparse_model("peft-lora")
    previous = os.umask(0o022)
    try:
        for path in (
            export_dense(model, tmp_path / "export", format="peft"),
            save_sparse(model, tmp_path / "ckpt"),
        ):
            assert oct(path.stat().st_mode & 0o777) == oct(0o755)
            for f in path.iterdir():
                assert oct(f.stat().st_mode & 0o777) == oct(0o644), f.name
    finally:
        os.umask(previous)


def test_save_refuses_models_without_exactly_one_adapter(tmp_path):
    with pytest.raises(ConfigError, match="carries no adapter"):
        save_sparse(base_model(tiny_config()), tmp_path / "a")
    model, _ = sparse_model("peft-lora")
    model.add_adapter("second", copy.deepcopy(LORA))
    with pytest.raises(ConfigError, match="exactly one adapter"):
        save_sparse(model, tmp_path / "b")


# --- the real MiniLM --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", families("peft-lora", "houlsby"))
def test_minilm_round_trip(minilm_path, family, tmp_path):
    def minilm():
        return AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)

    model = FAMILIES[family][1](minilm())
    sa.sparsify(model, sa.SparsityConfig(method="magnitude", sparsity=0.9))
    batch = inputs(model.config, batch=2, length=12)
    expected = logits(model, batch)
    save_sparse(model, tmp_path / "ckpt")
    loaded = load_sparse(minilm(), tmp_path / "ckpt")
    assert torch.equal(logits(loaded, batch), expected)
    masks = sa.get_masks(model)
    assert all(torch.equal(masks[n], m) for n, m in sa.get_masks(loaded).items())
    assert sa.get_masks(loaded).keys() == masks.keys()


def test_peft_round_trips_do_not_grow_modules_to_save(tmp_path):
    model, config = sparse_model("peft-lora")
    save_sparse(model, tmp_path / "0")
    first = read_metadata(tmp_path / "0")["adapter_config"]
    for i in range(1, 4):
        model = load_sparse(base_model(config), tmp_path / str(i - 1))
        save_sparse(model, tmp_path / str(i))
    last = read_metadata(tmp_path / "3")["adapter_config"]
    assert last["modules_to_save"] == first["modules_to_save"]
    assert len(set(last["modules_to_save"])) == len(last["modules_to_save"])
    export_dense(model, tmp_path / "export", format="peft")
    exported = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    assert sorted(exported["modules_to_save"]) == sorted(set(exported["modules_to_save"]))
