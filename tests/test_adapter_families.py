"""Every adapter family through sparsify and a few training steps.

Tiny random-config BERT, RoBERTa and BART for every AdapterHub and PEFT adapter type, and the
real MiniLM-L6 on RTE (slow). Checked each time: the exact kept count, pruned weights at 0.0,
no NaN, no tensor pruned dead, parameter names and state_dict keys unchanged, the task head
untouched; then training lowers the loss, moves kept adapter weights and never revives a pruned one.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import (
    ARCHITECTURES,
    HEAD,
    PEFT_PREFIX_ON_ENCODERS,
    expected_kept,
    head_parameters,
    library_marks,
    pruned_nonzero,
    random_batches,
    rte_batches,
    tiny_distilbert,
    tiny_model,
    train,
)

from sparseadapter import ConfigError, SparsityConfig, get_masks, sparsify
from sparseadapter.adapters import (
    adapter_config,
    attach_adapter,
    build_model,
    describe,
    resolve_library,
    resolve_model,
)
from sparseadapter.targets import lora_pairs, prunable_parameters

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
    pytest.param(arch, *case[1:], id=f"{arch}-{case[0]}", marks=library_marks(*case[1:3]))
    for arch in ARCHITECTURES
    for case in ADAPTER_CASES
    if not (case[0] == "peft-prefix" and arch in NO_POOLER)
]


@pytest.mark.parametrize("sparsity", [0.4, 0.8])
@pytest.mark.parametrize("arch,library,adapter,width", FAMILY_CASES)
def test_snip_sparsify_then_train(arch, library, adapter, width, sparsity):
    model = build(arch, library, adapter, width)
    batches = random_batches(num_batches=1, batch_size=16)
    config = SparsityConfig(method="snip", sparsity=sparsity, num_examples=16)
    _, masks = sparsify_and_check(model, config, batches)
    losses = train_and_check(model, masks, batches, steps=6)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c[0], marks=library_marks(*c[1:3])) for c in ADAPTER_CASES]
)
def test_padding_does_not_change_the_output(case):
    """A sequence alone and the same sequence padded in a batch give the same logits: prefix
    keys and values (prefix tuning, MAM) must extend the attention mask, not attend to padding."""
    _, library, adapter, width = case
    model = build("bert", library, adapter, width)
    torch.manual_seed(1)
    with torch.no_grad():  # adapters start near the identity; make every one of them matter
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn_like(param))
    model.eval()
    (batch,) = random_batches(num_batches=1, batch_size=2, seq_len=12)
    ids, mask = batch["input_ids"], batch["attention_mask"].clone()
    mask[0, 7:] = 0  # the first sequence is 7 tokens long, padded to 12
    with torch.no_grad():
        alone = model(input_ids=ids[:1, :7], attention_mask=mask[:1, :7]).logits
        padded = model(input_ids=ids, attention_mask=mask).logits[:1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", NO_POOLER)
def test_peft_prefix_needs_a_pooler(arch):
    with pytest.raises(ConfigError, match="no pooler.*adapterhub"):
        attach_adapter(tiny_model(arch), "prefix", "peft")


def test_peft_prefix_on_an_encoder_runs_or_is_refused_in_one_line():
    if PEFT_PREFIX_ON_ENCODERS:
        model, _ = attach_adapter(tiny_model("bert"), "prefix", "peft", width=4)
        assert model(**random_batches(num_batches=1)[0]).loss.isfinite()
    else:
        with pytest.raises(ConfigError, match="takes no past_key_values.*'adapterhub'"):
            attach_adapter(tiny_model("bert"), "prefix", "peft", width=4)


@pytest.mark.adapterhub
def test_no_spurious_adapterhub_warning_when_training_an_adapter(caplog):
    # on this logger itself: the CLI, run in-process by other tests, quiets the "adapters" parent
    caplog.set_level(logging.WARNING, logger="adapters.model_mixin")
    model, _ = attach_adapter(tiny_model("bert"), "houlsby", "adapterhub", width=4)
    assert "none are activated" not in caplog.text
    assert "task" in str(model.active_adapters)
    logging.getLogger("adapters.model_mixin").warning("none are activated (a real one)")
    assert "a real one" in caplog.text  # the filter is gone afterwards


@pytest.mark.parametrize(
    "library", ["peft", pytest.param("adapterhub", marks=pytest.mark.adapterhub)]
)
def test_lora_factor_pairs_are_found_and_kept_aligned(library):
    model, _ = attach_adapter(tiny_model("bert"), "lora", library, width=4)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    pairs = lora_pairs(params)
    a_names = [n for n in params if "lora_A" in n]
    assert len(a_names) >= 2 and [a for a, _ in pairs] == a_names
    a, b = pairs[0]
    with torch.no_grad():  # magnitude keeps A's row 0 and B's column 3: they never meet
        for p in params.values():
            p.fill_(1.0)
        params[a].fill_(1e-3)
        params[b].fill_(1e-3)
        params[a][0], params[b][:, 3] = 10.0, 10.0
    sparsify(model, SparsityConfig(method="magnitude", sparsity=0.9))
    masks = get_masks(model)
    assert all((masks[a].any(1) & masks[b].any(0)).any() for a, b in pairs)


@pytest.mark.adapterhub
def test_default_exclude_covers_bart_head():
    model, _ = attach_adapter(tiny_model("bart"), "lora", "adapterhub", width=4)
    sparsify(model, SparsityConfig(method="magnitude", sparsity=0.5))
    assert not any("classification_head" in n for n in get_masks(model))


@pytest.mark.parametrize(
    "library", ["peft", pytest.param("adapterhub", marks=pytest.mark.adapterhub)]
)
def test_heads_stay_unpruned_under_a_custom_exclude(library):
    """``exclude`` adds to the task heads, never replaces them: excluding LoRA's B factors (or
    (IA)³ scales) must not make PEFT's ``modules_to_save`` classifier prunable."""
    model, _ = attach_adapter(tiny_model("bert"), "lora", library, width=4)
    pruned = prunable_parameters(model, SparsityConfig(exclude=["lora_B"]))
    assert pruned and not any("lora_B" in n for n in pruned)
    assert not any("classifier" in n for n in pruned)


METHOD_CASES = [
    pytest.param(method, case, id=f"{method}-{case[0]}", marks=library_marks(*case[1:3]))
    for method in ("random", "magnitude", "grasp", "synflow")
    for case in ADAPTER_CASES
    if case[0] in ("hub-houlsby", "hub-parallel", "hub-mam", "hub-prefix", "peft-lora")
]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("method,case", METHOD_CASES)
def test_other_methods_on_bert(method, case, scope):
    _, library, adapter, width = case
    model = build("bert", library, adapter, width)
    batches = random_batches(num_batches=1, batch_size=16)
    config = SparsityConfig(method=method, sparsity=0.8, scope=scope, num_examples=16)
    _, masks = sparsify_and_check(model, config, batches)
    losses = train_and_check(model, masks, batches, steps=6)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("sparsity", [0.4, 0.8])
@pytest.mark.parametrize("zero_init", ["surrogate", "dense"])
@pytest.mark.parametrize(
    "library,adapter,zero_name",
    [
        pytest.param("peft", "lora", "lora_B", id="peft-lora"),
        pytest.param("adapterhub", "lora", "lora_B", id="hub-lora", marks=pytest.mark.adapterhub),
        pytest.param(
            "adapterhub", "parallel", "adapter_up", id="hub-parallel", marks=pytest.mark.adapterhub
        ),
    ],
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
    return rte_batches(glue_dir, tokenizer, num_examples=16, batch_size=4, max_length=24)


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.4, 0.8])
@pytest.mark.parametrize(
    "library,adapter",
    [pytest.param(*c[1:], id=c[0], marks=library_marks(*c[1:])) for c in MINILM_CASES],
)
def test_minilm_rte(library, adapter, sparsity, rte):
    torch.manual_seed(0)
    model, _ = build_model("minilm", 2, adapter, library)
    config = SparsityConfig(method="snip", sparsity=sparsity, num_examples=8)
    _, masks = sparsify_and_check(model, config, rte)
    losses = train_and_check(model, masks, rte, steps=30, lr=1e-3)
    assert sum(losses[-5:]) < sum(losses[:5])


# Building adapters by name (sparseadapter.adapters).


@pytest.mark.parametrize(
    "adapter,library",
    [
        *(
            pytest.param(adapter, "adapterhub", marks=pytest.mark.adapterhub)
            for adapter in ("houlsby", "pfeiffer", "parallel", "mam", "prefix")
        ),
        ("lora", "peft"),
        ("ia3", "peft"),
    ],
)
def test_auto_picks_a_library(adapter, library):
    assert resolve_library(adapter) == library
    package = {"adapterhub": "adapters", "peft": "peft"}[library]
    assert type(adapter_config(adapter)).__module__.split(".")[0] == package


def test_without_adapterhub_auto_falls_back_to_peft(monkeypatch):
    monkeypatch.setitem(sys.modules, "adapters", None)  # `import adapters` raises ImportError
    assert resolve_library("prefix") == "peft"
    assert type(adapter_config("prefix")).__module__.split(".")[0] == "peft"
    with pytest.raises(ConfigError, match=r'pip install "sparseadapter\[adapters\]"'):
        adapter_config("houlsby")
    with pytest.raises(ConfigError, match="or use library 'peft'"):
        adapter_config("lora", "adapterhub")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"adapter": "adapterfusion"}, "unknown adapter"),
        ({"adapter": "lora", "library": "hf"}, "unknown adapter library"),
        ({"adapter": "houlsby", "library": "peft"}, "PEFT has no 'houlsby'"),
        ({"adapter": "ia3", "width": 4}, "no width"),
        ({"adapter": "lora", "width": 0}, "positive integer"),
        ({"adapter": "lora", "width": 2.5}, "positive integer"),
        ({"adapter": "prefix", "width": True}, "positive integer"),
        pytest.param(
            {"adapter": "pfeiffer", "width": 8}, "hidden size", marks=pytest.mark.adapterhub
        ),
    ],
)
def test_bad_adapter_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        adapter_config(**kwargs)


@pytest.mark.parametrize(
    "library,adapter,width,weight",
    [
        pytest.param(*case, marks=library_marks(*case[:2]))
        for case in [
            ("adapterhub", "houlsby", 8, "adapter_down.0.weight"),
            ("adapterhub", "houlsby", 5, "adapter_down.0.weight"),  # 5 does not divide 32
            ("adapterhub", "pfeiffer", 12, "adapter_down.0.weight"),
            ("adapterhub", "parallel", 6, "adapter_down.0.weight"),
            ("adapterhub", "mam", 8, "adapter_down.0.weight"),
            ("adapterhub", "prefix", 7, "wte.weight"),
            ("adapterhub", "lora", 3, "lora_A"),
            ("peft", "lora", 3, "lora_A.task.weight"),
            ("peft", "prefix", 7, "embedding.weight"),
        ]
    ],
)
def test_width_sets_the_adapter_size(library, adapter, width, weight):
    model, _ = attach_adapter(tiny_model("bert"), adapter, library, width=width)
    sized = [p for n, p in model.named_parameters() if n.endswith(weight)]
    assert sized and all(p.shape[0] == width for p in sized)


@pytest.mark.adapterhub
def test_lora_is_the_same_adapter_in_both_libraries():
    hub, _ = attach_adapter(tiny_model("bert"), "lora", "adapterhub")
    peft_model, _ = attach_adapter(tiny_model("bert"), "lora", "peft")
    hub_lora = {n: p.shape for n, p in hub.named_parameters() if "lora" in n}
    peft_lora = {n: p.shape for n, p in peft_model.named_parameters() if "lora" in n}
    assert sorted(hub_lora.values()) == sorted(peft_lora.values())
    for names in (hub_lora, peft_lora):
        assert {n.split(".attention.self.")[1].split(".")[0] for n in names} == {"query", "value"}
    assert adapter_config("lora", "adapterhub").alpha == adapter_config("lora", "peft").lora_alpha


@pytest.mark.parametrize(
    "make,heads,library",
    [
        pytest.param(lambda: tiny_model("bart"), ["classification_head"], "peft", id="bart-peft"),
        pytest.param(
            lambda: tiny_model("bart"),
            ["classification_head"],
            "adapterhub",
            id="bart-hub",
            marks=pytest.mark.adapterhub,
        ),
        pytest.param(
            tiny_distilbert,
            ["pre_classifier", "classifier"],
            "adapterhub",
            id="distilbert-hub",
            marks=pytest.mark.adapterhub,
        ),
    ],
)
def test_every_head_module_stays_trainable_and_unpruned(make, heads, library):
    """BART's classification_head and DistilBERT's pre_classifier are heads PEFT does not name."""
    model = make()
    head_sizes = sorted(p.numel() for n in heads for p in getattr(model, n).parameters())
    model, _ = attach_adapter(model, "lora", library)
    trainable = [p for n, p in model.named_parameters() if p.requires_grad and "lora" not in n]
    assert sorted(p.numel() for p in trainable) == head_sizes
    prunable = prunable_parameters(model, SparsityConfig())
    assert prunable and all("lora" in n for n in prunable)


@pytest.mark.parametrize(
    "library", ["peft", pytest.param("adapterhub", marks=pytest.mark.adapterhub)]
)
def test_pruning_ia3_warns_that_zero_scales_switch_channels_off(library):
    model, _ = attach_adapter(tiny_model("bert"), "ia3", library)
    with pytest.warns(UserWarning, match=r"\(IA\)³ scale vectors.*neutral value is 1"):
        sparsify(model, SparsityConfig(method="random", sparsity=0.5))
    lora, _ = attach_adapter(tiny_model("bert"), "lora", library)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sparsify(lora, SparsityConfig(method="random", sparsity=0.5))


def test_peft_error_is_a_config_error():
    with pytest.raises(ConfigError, match="PEFT cannot add 'lora' to a distilbert model"):
        attach_adapter(tiny_distilbert(), "lora", "peft")


def test_full_fine_tuning_trains_everything():
    model = tiny_model("bert")
    model.requires_grad_(False)
    model, sparsity = attach_adapter(model, None)
    assert sparsity is None and all(p.requires_grad for p in model.parameters())


def test_resolve_model():
    path = Path(resolve_model("minilm"))
    assert (path / "config.json").is_file()
    assert resolve_model("roberta-base") == "roberta-base"


def test_a_classifier_for_another_label_count_gets_a_new_head(tmp_path):
    tiny_model("bert", num_labels=2).save_pretrained(tmp_path)
    model, _ = build_model(str(tmp_path), 1, "lora", problem_type="regression")  # e.g. STS-B
    assert model.base_model.model.classifier.modules_to_save["task"].out_features == 1


@pytest.mark.parametrize("what", ["empty directory", "missing path"])
def test_build_model_from_a_path_that_is_not_a_model(tmp_path, what):
    path = str(tmp_path if what == "empty directory" else tmp_path / "nothing-here")
    with pytest.raises(ConfigError) as error:
        build_model(path, 2, "lora")
    message = str(error.value)
    assert path in message and "\n" not in message and len(message) < 500


@pytest.mark.adapterhub
def test_describe_names_library_type_and_trainable_count():
    hub, _ = attach_adapter(tiny_model("bert"), "houlsby", "adapterhub", width=8)
    peft_model, _ = attach_adapter(tiny_model("bert"), "lora", "peft")
    full, _ = attach_adapter(tiny_model("bert"), None)
    for model, kind in [
        (hub, "AdapterHub DoubleSeqBnConfig 'task'"),
        (peft_model, "PEFT LORA 'task'"),
        (full, "full fine-tuning"),
    ]:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert describe(model).startswith(f"{kind}: {trainable:,} trainable of ")
