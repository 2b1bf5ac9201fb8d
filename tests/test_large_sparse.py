"""Large-Sparse: a k-times wider adapter pruned to 1 - 1/k keeps the dense non-zero budget.

For each family the dense and the widened adapter are built on the same model, the wide one is
sparsified at the sparsity large_sparse returns, and its kept count (report.kept: zero-init
tensors are zero in value, so counting non-zeros would undercount) must match the dense
adapter's prunable count within 1%.
"""

from __future__ import annotations

import pytest
from helpers import library_marks, random_batches, rte_batches, tiny_distilbert, tiny_model

from sparseadapter import ConfigError, SparsityConfig, large_sparse, parameter_report, sparsify
from sparseadapter.adapters import adapter_config, attach_adapter, build_model

# (id, library, adapter, width on the hidden-32 tiny BERT)
FAMILIES = [
    ("peft-lora", "peft", "lora", 4),
    ("hub-lora", "adapterhub", "lora", 4),
    ("hub-houlsby", "adapterhub", "houlsby", 4),
    ("hub-pfeiffer", "adapterhub", "pfeiffer", 4),
    ("hub-parallel", "adapterhub", "parallel", 4),
    ("hub-prefix", "adapterhub", "prefix", 4),
    ("hub-mam", "adapterhub", "mam", 4),
    ("peft-prefix", "peft", "prefix", 4),
]


def assert_budget_kept(dense, wide, sparsity: float, factor: float, batches) -> None:
    dense_prunable = parameter_report(dense).prunable
    assert parameter_report(wide).prunable == pytest.approx(factor * dense_prunable, rel=1e-9)
    report = sparsify(wide, SparsityConfig(method="snip", sparsity=sparsity), batches=batches)
    assert report.prunable == parameter_report(wide).prunable
    assert abs(report.kept - dense_prunable) <= 0.01 * dense_prunable


@pytest.mark.parametrize(
    "library,adapter,width",
    [pytest.param(*f[1:], id=f[0], marks=library_marks(*f[1:3])) for f in FAMILIES],
)
def test_four_times_wider_keeps_the_dense_budget(library, adapter, width):
    dense, none = attach_adapter(tiny_model("bert"), adapter, library, width=width)
    wide, sparsity = attach_adapter(
        tiny_model("bert"), adapter, library, width=width, large_sparse=4
    )
    assert none is None and sparsity == pytest.approx(0.75)
    assert_budget_kept(dense, wide, sparsity, 4, random_batches(num_batches=1, batch_size=8))


@pytest.mark.adapterhub
def test_a_head_with_several_modules_is_neither_pruned_nor_counted():
    dense, _ = attach_adapter(tiny_distilbert(), "pfeiffer", "adapterhub", width=4)
    wide, sparsity = attach_adapter(
        tiny_distilbert(), "pfeiffer", "adapterhub", width=4, large_sparse=4
    )
    assert dense.pre_classifier.weight.requires_grad  # trained with the adapter, never pruned
    report = sparsify(wide, SparsityConfig(method="magnitude", sparsity=sparsity))
    assert not any("classifier" in t.name for t in report.tensors)
    assert report.kept == parameter_report(dense).prunable


@pytest.mark.adapterhub
@pytest.mark.parametrize("factor", [1.5, 3, 5])
@pytest.mark.parametrize("adapter", ["houlsby", "mam"])
def test_bottleneck_width_is_exact_for_any_integer_result(adapter, factor):
    """Width 2 of hidden 32 times 5 is 10, although 32 // (16 / 5) floors to 9."""
    dense, _ = attach_adapter(tiny_model("bert"), adapter, "adapterhub", width=2)
    wide, sparsity = attach_adapter(
        tiny_model("bert"), adapter, "adapterhub", width=2, large_sparse=factor
    )
    downs = [p for n, p in wide.named_parameters() if "adapter_down" in n and p.dim() == 2]
    assert downs and all(p.shape[0] == 2 * factor for p in downs)
    assert_budget_kept(dense, wide, sparsity, factor, random_batches(num_batches=1, batch_size=8))


@pytest.mark.adapterhub
def test_widen_alone_sizes_bottleneck_exactly():
    import adapters

    model = tiny_model("bert")
    config, _ = large_sparse(
        adapter_config("houlsby", "adapterhub", width=2, hidden_size=32), 5, hidden_size=32
    )
    adapters.init(model)
    model.add_adapter("task", config=config)
    downs = [p for n, p in model.named_parameters() if "adapter_down" in n and p.dim() == 2]
    assert downs and all(p.shape[0] == 10 for p in downs)


def test_factor_below_one_is_rejected():
    with pytest.raises(ConfigError, match=">= 1"):
        attach_adapter(tiny_model("bert"), "lora", "peft", large_sparse=0.5)


@pytest.mark.parametrize(
    "library,adapter,width,factor",
    [
        pytest.param(*case, marks=[pytest.mark.adapterhub] if case[0] == "adapterhub" else [])
        for case in [
            ("peft", "lora", 4, 1.3),
            ("adapterhub", "lora", 4, 1.3),
            ("adapterhub", "prefix", 4, 1.3),
            ("peft", "prefix", 4, 1.3),  # refused for its width before PEFT is asked
            ("adapterhub", "houlsby", 2, 1.25),
            ("adapterhub", "mam", 2, 1.25),
        ]
    ],
)
def test_non_integer_width_is_rejected(library, adapter, width, factor):
    with pytest.raises(ConfigError, match="non-integer"):
        attach_adapter(tiny_model("bert"), adapter, library, width=width, large_sparse=factor)


@pytest.mark.parametrize(
    "library", ["peft", pytest.param("adapterhub", marks=pytest.mark.adapterhub)]
)
def test_ia3_has_no_width_to_widen(library):
    with pytest.raises(ConfigError, match="IA3|\\(IA\\)3"):
        attach_adapter(tiny_model("bert"), "ia3", library, large_sparse=2)


def test_full_fine_tuning_cannot_be_widened():
    with pytest.raises(ConfigError, match="choose an adapter"):
        attach_adapter(tiny_model("bert"), None, large_sparse=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "library,adapter",
    [
        pytest.param("adapterhub", "houlsby", id="hub-houlsby", marks=pytest.mark.adapterhub),
        pytest.param("peft", "lora", id="peft-lora"),
    ],
)
def test_minilm_four_times_wider_keeps_the_dense_budget(library, adapter, glue_dir, minilm_path):
    from transformers import AutoTokenizer

    batches = rte_batches(
        glue_dir, AutoTokenizer.from_pretrained(minilm_path), num_examples=8, max_length=32
    )
    dense, _ = build_model("minilm", 2, adapter, library)
    wide, sparsity = build_model("minilm", 2, adapter, library, large_sparse=4)
    assert_budget_kept(dense, wide, sparsity, 4, batches)
