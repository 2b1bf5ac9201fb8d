"""Every adapter family through sparsify and a few training steps (issue 2).

Tiny random-config BERT, RoBERTa and BART for every AdapterHub and PEFT adapter type, and the
real MiniLM-L6 on RTE (slow). Checked each time: the exact kept count, pruned weights at 0.0,
no NaN, no tensor pruned dead, parameter names and state_dict keys unchanged, the task head
untouched; then training lowers the loss, moves kept adapter weights and never revives a pruned one.
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    ARCHITECTURES,
    HEAD,
    expected_kept,
    head_parameters,
    pruned_nonzero,
    random_batches,
    rte_batches,
    tiny_model,
    train,
)

from sparseadapter import ConfigError, SparsityConfig, get_masks, sparsify
from sparseadapter.adapters import attach_adapter, build_model
from sparseadapter.config import DEFAULT_HEAD_PATTERNS

# The default exclude misses BART's head, `classification_head` (engine bug pinned by
# test_default_exclude_covers_bart_head); the other tests add it so they check everything else.
EXCLUDE = [*DEFAULT_HEAD_PATTERNS, r"(^|\.)classification_head\."]

# (id, library, adapter, width on the hidden-32 tiny models)
ADAPTER_CASES = [
    ("hub-houlsby", "adapterhub", "houlsby", 8),
    ("hub-pfeiffer", "adapterhub", "pfeiffer", 8),
    ("hub-parallel", "adapterhub", "parallel", 8),
    ("hub-mam", "adapterhub", "mam", 8),
    ("hub-prefix", "adapterhub", "prefix", 8),
    ("hub-lora", "adapterhub", "lora", 4),
    ("hub-ia3", "adapterhub", "ia3", None),
    ("peft-lora", "peft", "lora", 4),
    ("peft-prefix", "peft", "prefix", 8),
    ("peft-ia3", "peft", "ia3", None),
    ("hub-fusion", "adapterhub", "fusion", 8),
]

# PEFT's prefix tuning classifies from the backbone's pooler output: attach_adapter refuses
# models without a pooler (test_peft_prefix_needs_a_pooler) instead of crashing in forward.
NO_POOLER = ("roberta", "bart")


def build(arch: str, library: str, adapter: str, width: int | None):
    model = tiny_model(arch)
    if adapter == "fusion":
        return attach_fusion(model, width)
    model, _ = attach_adapter(model, adapter, library, width=width)
    return model


def attach_fusion(model, width: int):
    """Two Pfeiffer adapters and an AdapterFusion layer over them, all trainable."""
    import adapters
    from adapters import Fuse, SeqBnConfig

    adapters.init(model)
    config = SeqBnConfig(reduction_factor=model.config.hidden_size // width)
    model.add_adapter("first", config=config)
    model.add_adapter("second", config=config)
    fusion = Fuse("first", "second")
    model.add_adapter_fusion(fusion)
    model.train_adapter_fusion(fusion, unfreeze_adapters=True)
    return model


def expected_prunable(model) -> set[str]:
    """Trainable weights outside the task head, biases excluded: what sparsify must prune."""
    return {
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not n.endswith("bias") and not HEAD.search(n)
    }


def sparsify_and_check(model, config: SparsityConfig, batches, unpruned: frozenset = frozenset()):
    """sparsify ``model`` and assert every invariant that must hold right after it.

    ``unpruned``: prunable tensors that must be left out (zero-init tensors with zero_init="dense").
    """
    names = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    head = head_parameters(model)
    assert head, "the task head must be trainable"

    report = sparsify(model, config, batches=batches)
    masks = get_masks(model)

    assert set(masks) == expected_prunable(model) - unpruned
    numel = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert (report.prunable, report.kept) == (numel, kept)
    if config.scope == "global":
        assert kept == expected_kept(numel, config.sparsity)
    else:
        assert all(
            int(m.sum()) == max(1, expected_kept(m.numel(), config.sparsity))
            for m in masks.values()
        )
    assert all(m.any() for m in masks.values()), "a tensor was pruned entirely"
    assert pruned_nonzero(model, masks) == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [n for n, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == keys
    params = dict(model.named_parameters())
    for name, value in head.items():
        assert torch.equal(params[name].detach(), value), f"{name} changed"
        assert params[name].requires_grad
    return report, masks


def train_and_check(model, masks, batches, steps: int, lr: float = 1e-2) -> list[float]:
    """Train; assert the loss falls, kept adapter weights move, pruned ones stay 0.0."""
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in masks}
    losses = train(model, batches, steps, lr=lr)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert pruned_nonzero(model, masks) == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    moved = sum(int((params[n].detach() != before[n])[masks[n]].sum()) for n in masks)
    assert moved > 0, "no kept adapter weight was updated"
    return losses


FAMILY_CASES = [
    pytest.param(arch, *case[1:], id=f"{arch}-{case[0]}")
    for arch in ARCHITECTURES
    for case in ADAPTER_CASES
    if not (case[0] == "peft-prefix" and arch in NO_POOLER)
]


@pytest.mark.parametrize("sparsity", [0.4, 0.8])
@pytest.mark.parametrize("arch,library,adapter,width", FAMILY_CASES)
def test_snip_sparsify_then_train(arch, library, adapter, width, sparsity):
    model = build(arch, library, adapter, width)
    batches = random_batches(num_batches=1, batch_size=16)
    config = SparsityConfig(method="snip", sparsity=sparsity, num_examples=16, exclude=EXCLUDE)
    _, masks = sparsify_and_check(model, config, batches)
    losses = train_and_check(model, masks, batches, steps=6)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("arch", NO_POOLER)
def test_peft_prefix_needs_a_pooler(arch):
    with pytest.raises(ConfigError, match="no pooler.*adapterhub"):
        attach_adapter(tiny_model(arch), "prefix", "peft")


METHOD_CASES = [
    (method, case)
    for method in ("random", "magnitude", "grasp", "synflow")
    for case in ADAPTER_CASES
    if case[0] in ("hub-houlsby", "hub-parallel", "hub-mam", "hub-prefix", "peft-lora")
]


@pytest.mark.xfail(
    strict=True, reason="engine bug: DEFAULT_HEAD_PATTERNS lacks classification_head"
)
def test_default_exclude_covers_bart_head():
    model, _ = attach_adapter(tiny_model("bart"), "lora", "adapterhub", width=4)
    sparsify(model, SparsityConfig(method="magnitude", sparsity=0.5))
    assert not any("classification_head" in n for n in get_masks(model))


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("method,case", METHOD_CASES, ids=[f"{m}-{c[0]}" for m, c in METHOD_CASES])
def test_other_methods_on_bert(method, case, scope):
    _, library, adapter, width = case
    model = build("bert", library, adapter, width)
    batches = random_batches(num_batches=1, batch_size=16)
    config = SparsityConfig(method=method, sparsity=0.8, scope=scope, num_examples=16)
    report, masks = sparsify_and_check(model, config, batches)
    train_and_check(model, masks, batches, steps=3)


@pytest.mark.parametrize("sparsity", [0.4, 0.8])
@pytest.mark.parametrize("zero_init", ["surrogate", "dense"])
@pytest.mark.parametrize(
    "library,adapter,zero_name",
    [
        ("peft", "lora", "lora_B"),
        ("adapterhub", "lora", "lora_B"),
        ("adapterhub", "parallel", "adapter_up"),
    ],
    ids=["peft-lora", "hub-lora", "hub-parallel"],
)
def test_zero_init_factor_still_learns(library, adapter, zero_name, zero_init, sparsity):
    model = build("bert", library, adapter, 8)
    params = dict(model.named_parameters())
    zero = {n for n, p in params.items() if zero_name in n and p.dim() == 2}
    assert zero and all(not params[n].any() for n in zero), "the factor must start at zero"
    batches = random_batches(num_batches=1, batch_size=16)
    config = SparsityConfig(method="snip", sparsity=sparsity, zero_init=zero_init, num_examples=16)
    dense = zero if zero_init == "dense" else frozenset()
    report, masks = sparsify_and_check(model, config, batches, unpruned=dense)

    if zero_init == "surrogate":
        assert {t.name for t in report.tensors if t.zero_init} == zero
        assert all(not params[n].any() for n in zero), "the surrogate init must be undone"
        assert sum(int(masks[n].sum()) for n in zero) > len(zero), "zero-init factor pruned away"
    else:
        assert set(report.dense_tensors) == zero
    losses = train_and_check(model, masks, batches, steps=6)
    assert losses[-1] < losses[0]
    kept = {n: masks.get(n, torch.ones_like(params[n], dtype=torch.bool)) for n in zero}
    assert sum(int(params[n][kept[n]].count_nonzero()) for n in zero) > 0, "factor never left zero"
    if zero_init == "dense":
        assert all(params[n].any() for n in zero)


MINILM_CASES = [
    ("hub-houlsby", "adapterhub", "houlsby"),
    ("hub-pfeiffer", "adapterhub", "pfeiffer"),
    ("hub-parallel", "adapterhub", "parallel"),
    ("hub-mam", "adapterhub", "mam"),
    ("hub-prefix", "adapterhub", "prefix"),
    ("hub-lora", "adapterhub", "lora"),
    ("peft-lora", "peft", "lora"),
]


@pytest.fixture(scope="module")
def rte(glue_dir, minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    return rte_batches(glue_dir, tokenizer, num_examples=16, batch_size=4, max_length=32)


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.4, 0.8])
@pytest.mark.parametrize(
    "library,adapter", [c[1:] for c in MINILM_CASES], ids=[c[0] for c in MINILM_CASES]
)
def test_minilm_rte(library, adapter, sparsity, rte):
    torch.manual_seed(0)
    model, _ = build_model("minilm", 2, adapter, library)
    config = SparsityConfig(method="snip", sparsity=sparsity, num_examples=8)
    report, masks = sparsify_and_check(model, config, rte)
    losses = train_and_check(model, masks, rte, steps=30, lr=1e-3)
    assert sum(losses[-5:]) < sum(losses[:5])
