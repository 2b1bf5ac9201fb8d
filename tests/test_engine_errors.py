"""Bad input to the engine gets a specific exception that names the problem and the fix."""

import copy

import helpers
import pytest
import torch
from tiny_module import TinyAdapterModel, tiny_batches

import sparseadapter as sa


@pytest.mark.parametrize(
    "value, words",
    [
        (-0.1, "[0, 1)"),
        (1.0, "[0, 1)"),
        ("abc", "a number"),
        (float("nan"), "[0, 1)"),
        (True, "a number"),
    ],
)
def test_sparsity_out_of_range(value, words):
    with pytest.raises(sa.ConfigError, match=words.replace("[", r"\[").replace(")", r"\)")):
        sa.SparsityConfig(sparsity=value)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(sa.ConfigError, match="snip.*register_scorer"):
        sa.SparsityConfig(method="obd")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"scope": "row"}, "scope"),
        ({"zero_init": "ignore"}, "zero_init"),
        ({"num_examples": 0}, "num_examples"),
        ({"synflow_rounds": 0}, "synflow_rounds"),
        ({"seed": "abc"}, "seed must be an integer"),
        ({"grasp_temperature": "abc"}, "grasp_temperature must be a number > 0"),
        ({"grasp_temperature": None}, "grasp_temperature must be a number > 0"),
        ({"grasp_temperature": float("nan")}, "grasp_temperature must be a number > 0"),
        ({"prune_biases": "yes"}, "prune_biases must be true or false"),
        ({"include": [3]}, "include must be a list of regexes"),
        ({"exclude": ["("]}, "exclude pattern '\\(' is not a valid regex"),
    ],
)
def test_other_bad_options(kwargs, words):
    with pytest.raises(sa.ConfigError, match=words):
        sa.SparsityConfig(**kwargs)


def test_one_include_pattern_may_be_a_string():
    assert sa.SparsityConfig(include="lora_B").include == ["lora_B"]


def test_model_without_trainable_adapter_weights():
    model = TinyAdapterModel()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(sa.NoPrunableWeightsError, match="add adapters"):
        sa.sparsify(model, sa.SparsityConfig(method="magnitude"))


def test_adapter_with_only_a_head_trainable():
    model = TinyAdapterModel()
    model.adapter_down.weight.requires_grad_(False)
    model.adapter_up.weight.requires_grad_(False)
    with pytest.raises(sa.NoPrunableWeightsError):
        sa.sparsify(model, sa.SparsityConfig(method="magnitude"))


def test_empty_and_exhausted_batches():
    model = TinyAdapterModel()
    with pytest.raises(sa.ScoringDataError, match="empty or already exhausted"):
        sa.sparsify(model, sa.SparsityConfig(method="snip"), batches=[])
    gen = iter(tiny_batches())
    list(gen)
    with pytest.raises(sa.ScoringDataError, match="exhausted"):
        sa.sparsify(model, sa.SparsityConfig(method="snip"), batches=gen)
    with pytest.raises(sa.ScoringDataError, match="needs scoring data"):
        sa.sparsify(model, sa.SparsityConfig(method="grasp"))


def test_batches_without_labels():
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in tiny_batches()]
    with pytest.raises(sa.ScoringDataError, match="labels"):
        sa.sparsify(TinyAdapterModel(), sa.SparsityConfig(method="snip"), batches=batches)


def test_batch_encoding_batches_are_scored():
    """A DataLoader with transformers' DataCollatorWithPadding yields BatchEncoding (a mapping,
    not a dict): the Trainer's own batches must score like plain dicts."""
    from transformers import BatchEncoding

    config = sa.SparsityConfig(method="snip", sparsity=0.5)
    torch.manual_seed(0)
    reference = TinyAdapterModel()
    model = copy.deepcopy(reference)
    sa.sparsify(reference, config, batches=tiny_batches())
    sa.sparsify(model, config, batches=[BatchEncoding(b) for b in tiny_batches()])
    plain, masks = sa.get_masks(reference), sa.get_masks(model)
    assert masks and masks.keys() == plain.keys()
    assert all(torch.equal(masks[n], plain[n]) for n in masks)


def test_empty_include_list_is_an_error():
    with pytest.raises(sa.ConfigError, match=r"include=\[\] matches no weights.*drop it"):
        sa.SparsityConfig(include=[])


def test_nan_loss_during_scoring():
    model = TinyAdapterModel()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(sa.ScoreError, match="loss of a scoring batch is nan"):
        sa.sparsify(model, sa.SparsityConfig(method="snip"), batches=tiny_batches())


def test_all_zero_and_non_finite_scores():
    @sa.register_scorer("test_zeros", needs_data=False)
    def zeros(model, params, batches, config):
        return {n: torch.zeros_like(p) for n, p in params.items()}

    @sa.register_scorer("test_inf", needs_data=False)
    def inf(model, params, batches, config):
        return {n: torch.full_like(p, float("inf")) for n, p in params.items()}

    with pytest.raises(sa.ScoreError, match="all-zero"):
        sa.sparsify(TinyAdapterModel(), sa.SparsityConfig(method="test_zeros"))
    with pytest.raises(sa.ScoreError, match="non-finite"):
        sa.sparsify(TinyAdapterModel(), sa.SparsityConfig(method="test_inf"))


def test_scoring_uses_at_least_num_examples_in_whole_batches():
    report = sa.sparsify(
        TinyAdapterModel(), sa.SparsityConfig(method="snip", num_examples=6), batches=tiny_batches()
    )
    assert report.scoring_examples == 8


def test_zero_init_dense_policy_leaves_zero_tensors_unpruned():
    model = TinyAdapterModel()
    with torch.no_grad():
        model.adapter_up.weight.zero_()
    report = sa.sparsify(
        model, sa.SparsityConfig(method="snip", zero_init="dense"), batches=tiny_batches()
    )
    assert report.dense_tensors == ["adapter_up.weight"]
    assert list(sa.get_masks(model)) == ["adapter_down.weight"]


def test_zero_init_dense_policy_with_every_tensor_zero_initialized():
    model = TinyAdapterModel()
    with torch.no_grad():
        model.adapter_down.weight.zero_()
        model.adapter_up.weight.zero_()
    with pytest.raises(sa.NoPrunableWeightsError, match="zero_init='surrogate'"):
        sa.sparsify(model, sa.SparsityConfig(method="magnitude", zero_init="dense"))


def test_a_failed_second_sparsify_keeps_the_first_masks():
    model = TinyAdapterModel()
    sa.sparsify(model, sa.SparsityConfig(method="magnitude", sparsity=0.5))
    masks = sa.get_masks(model)
    with pytest.raises(sa.ScoringDataError):
        sa.sparsify(model, sa.SparsityConfig(method="snip"), batches=[])
    with pytest.raises(sa.NoPrunableWeightsError):
        sa.sparsify(model, sa.SparsityConfig(method="magnitude", include=["nomatch"]))
    assert sa.get_masks(model).keys() == masks.keys()
    assert all(torch.equal(sa.get_masks(model)[n], m) for n, m in masks.items())
    model(**tiny_batches()[0]).loss.backward()  # and they are still enforced
    assert all(not p.grad[~masks[n]].any() for n, p in model.named_parameters() if n in masks)


def test_a_transformers_model_without_an_adapter_is_not_pruned():
    model = helpers.tiny_model("bert")  # every weight trainable: the backbone, not an adapter
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(sa.NoPrunableWeightsError, match="carries no adapter.*include="):
        sa.sparsify(model, sa.SparsityConfig(method="magnitude", sparsity=0.4))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert sa.get_masks(model) == {}
    # pruning plain modules on purpose: name them
    config = sa.SparsityConfig(method="magnitude", sparsity=0.4, include=[r"query"])
    report = sa.sparsify(model, config)
    assert report.tensors and all("query" in t.name for t in report.tensors)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda m: sa.sparsify(m, {"method": "snip"}), sa.ConfigError, "must be a SparsityConfig"),
        (lambda m: sa.sparsify("model", sa.SparsityConfig()), sa.ConfigError, "nn.Module"),
        (lambda m: sa.score_weights(m, "snip"), sa.ConfigError, "must be a SparsityConfig"),
        (lambda m: sa.parameter_report("model"), sa.ConfigError, "nn.Module"),
        (
            lambda m: sa.sparsify(m, sa.SparsityConfig(method="snip"), batches=5),
            sa.ScoringDataError,
            "iterable of dict batches",
        ),
    ],
    ids=["dict-config", "not-a-model", "score-str-config", "report-not-a-model", "int-batches"],
)
def test_api_mistakes_get_the_librarys_errors(call, error, words):
    """A ConfigError or ScoringDataError naming the mistake, never a raw AttributeError."""
    with pytest.raises(error, match=words):
        call(TinyAdapterModel())


def test_a_built_in_method_is_not_replaced_by_accident():
    with pytest.raises(sa.ConfigError, match="'snip' is already registered.*replace=True"):

        @sa.register_scorer("snip")
        def mine(model, params, batches, config):
            return {}

    from sparseadapter.scoring import get_scorer

    assert get_scorer("snip").fn.__module__ == "sparseadapter.scoring.snip"
