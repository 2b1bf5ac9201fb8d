"""model.modules_to_save: base-model modules (the pooler) trained in full beside an adapter,
never pruned, saved and rebuilt with the sparse checkpoint, for AdapterHub and PEFT."""

from __future__ import annotations

import pytest
import torch
from helpers import random_batches, tiny_model

import sparseadapter as sa
from sparseadapter.adapters import attach_adapter
from sparseadapter.checkpoint import load_sparse, read_metadata, save_sparse
from sparseadapter.errors import ConfigError
from sparseadapter.export import export_dense
from sparseadapter.runconfig import RunConfig

CASES = [
    pytest.param("houlsby", "adapterhub", marks=pytest.mark.adapterhub),
    pytest.param("lora", "peft"),
]


def pooler_params(model) -> dict[str, torch.Tensor]:
    """The pooler's weights the model computes with (PEFT also keeps a frozen original)."""
    return {
        n: p
        for n, p in model.named_parameters()
        if ".pooler." in f".{n}" and ".original_module." not in n
    }


def adapted(adapter: str, library: str, modules=("pooler",)):
    model, _ = attach_adapter(tiny_model("bert"), adapter, library, modules_to_save=list(modules))
    return model


@pytest.mark.parametrize(("adapter", "library"), CASES)
def test_the_pooler_trains_in_full_and_is_never_pruned(adapter, library):
    model = adapted(adapter, library)
    pooler = pooler_params(model)
    assert pooler and all(p.requires_grad for p in pooler.values())
    sa.sparsify(model, sa.SparsityConfig(method="snip", sparsity=0.9), batches=random_batches())
    masks = sa.get_masks(model)
    assert masks and not set(masks) & set(pooler)
    before = {n: p.detach().clone() for n, p in pooler.items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for batch in random_batches():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(p, before[n]) for n, p in pooler_params(model).items())


@pytest.mark.parametrize(("adapter", "library"), CASES)
def test_without_it_the_pooler_stays_frozen(adapter, library):
    model = adapted(adapter, library, modules=())
    assert not any(p.requires_grad for p in pooler_params(model).values())


@pytest.mark.parametrize(("adapter", "library"), CASES)
def test_the_checkpoint_keeps_and_rebuilds_the_trained_pooler(adapter, library, tmp_path):
    model = adapted(adapter, library)
    sa.sparsify(model, sa.SparsityConfig(method="magnitude", sparsity=0.5))
    with torch.no_grad():
        for p in pooler_params(model).values():
            p.add_(0.5)  # as if trained
    path = save_sparse(model, tmp_path / "ckpt")
    loaded = load_sparse(tiny_model("bert"), path)
    expected = dict(model.named_parameters())
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, param in pooler_params(loaded).items():
        assert param.requires_grad and torch.equal(param, expected[name]), name
    if library == "adapterhub":
        assert read_metadata(path)["modules_to_save"] == ["bert.pooler"]
        with pytest.raises(ConfigError, match="cannot hold the base-model modules"):
            export_dense(loaded, tmp_path / "plain", format="adapterhub")


def test_an_unknown_module_is_a_one_line_error():
    with pytest.raises(ConfigError, match="no module named 'poolr'; name one of its modules"):
        adapted("lora", "peft", modules=("poolr",))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"adapter": "full", "modules_to_save": ["pooler"]}, "full fine-tuning trains every"),
        ({"modules_to_save": "pooler"}, "must be a list of strings"),
    ],
)
def test_bad_modules_to_save_in_a_run_config(model, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"model": model, "data": {"task": "rte"}})


def test_cli_run_with_a_trained_pooler_reproduces_in_eval(tiny_bert, glue_dir, tmp_path, capsys):
    from test_cli import tiny_train

    from sparseadapter.cli import main
    from sparseadapter.rundir import read_final

    runs = {}
    for name, extra in (("frozen", []), ("pooler", ["--modules-to-save", "pooler"])):
        runs[name] = tmp_path / name
        args = ["--pruner", "magnitude", "--sparsity", "0.5", *extra]
        assert tiny_train(tiny_bert, glue_dir, runs[name], *args) == 0
    frozen, trained = read_final(runs["frozen"]), read_final(runs["pooler"])
    pooler_weights = 32 * 32 + 32  # the tiny BERT's pooler: dense 32 x 32 and its bias
    added = trained["parameters"]["trainable"] - frozen["parameters"]["trainable"]
    assert added == pooler_weights
    assert trained["sparsity"]["kept"] == frozen["sparsity"]["kept"]  # the pooler is not pruned
    capsys.readouterr()
    assert main(["eval", str(runs["pooler"])]) == 0
    assert "same as final.json" in capsys.readouterr().out
