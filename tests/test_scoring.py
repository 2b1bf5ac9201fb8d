"""Each pruner's score equals its formula, computed independently on a hand-built model."""

import types

import pytest
import torch
from tiny_module import ADAPTER_NAMES, TinyAdapterModel, tiny_batches

import sparseadapter as sa
from sparseadapter.masks import select_masks
from sparseadapter.scoring import get_scorer
from sparseadapter.targets import prunable_parameters


def _scores(model, method, batches, **kw):
    config = sa.SparsityConfig(method=method, sparsity=0.5, **kw)
    params = prunable_parameters(model, config)
    model.eval()
    return params, get_scorer(method).fn(model, params, batches, config)


def _flat_loss(model, params, batches, temperature=1.0):
    """Sum of batch losses as a function of the flattened prunable weights (functional)."""
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss(flat):
        weights = dict(zip(names, [t.view(s) for t, s in zip(flat.split(sizes), shapes)]))
        total = 0.0
        for b in batches:
            out = torch.func.functional_call(model, weights, (b["input_ids"],))
            total = total + torch.nn.functional.cross_entropy(out.logits / temperature, b["labels"])
        return total

    flat = torch.cat([params[n].detach().flatten() for n in names])
    return loss, flat, sizes, shapes, names


def test_prunable_targets_are_adapter_matrices_only():
    model = TinyAdapterModel()
    params = prunable_parameters(model, sa.SparsityConfig())
    assert list(params) == ADAPTER_NAMES


class Gain(torch.nn.RMSNorm):
    """A norm whose class name does not say so."""


def test_norm_layers_are_found_by_class_not_only_by_name():
    model = TinyAdapterModel()
    model.gain = Gain(6)
    assert "gain.weight" not in prunable_parameters(model, sa.SparsityConfig())
    assert "gain.weight" in prunable_parameters(model, sa.SparsityConfig(prune_norms=True))


def test_magnitude_is_abs_weight():
    model = TinyAdapterModel()
    params, scores = _scores(model, "magnitude", None)
    for n, p in params.items():
        assert torch.equal(scores[n], p.detach().abs())


def test_random_is_seeded_and_seed_dependent():
    model = TinyAdapterModel()
    _, a = _scores(model, "random", None, seed=1)
    _, b = _scores(model, "random", None, seed=1)
    _, c = _scores(model, "random", None, seed=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a[ADAPTER_NAMES[0]], c[ADAPTER_NAMES[0]])


def test_snip_is_abs_gradient_times_weight():
    model, batches = TinyAdapterModel(), tiny_batches()
    params, scores = _scores(model, "snip", batches)
    loss, flat, sizes, shapes, names = _flat_loss(model, params, batches)
    grad = torch.func.grad(loss)(flat)
    expected = (grad * flat).abs()
    got = torch.cat([scores[n].flatten() for n in names])
    torch.testing.assert_close(got, expected)


def test_grasp_is_weight_times_hessian_gradient_product():
    model, batches = TinyAdapterModel(), tiny_batches()
    params, scores = _scores(model, "grasp", batches, grasp_temperature=3.0)
    loss, flat, sizes, shapes, names = _flat_loss(model, params, batches, temperature=3.0)
    g = torch.func.grad(loss)(flat)
    hessian = torch.autograd.functional.hessian(loss, flat)
    expected = flat * (hessian @ g)
    got = torch.cat([scores[n].flatten() for n in names])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_synflow_is_path_norm_saliency_of_the_abs_linear_network():
    model = TinyAdapterModel()
    params, scores = _scores(model, "synflow", None)
    down = params["adapter_down.weight"].detach().abs().double()
    up = params["adapter_up.weight"].detach().abs().double()
    # The normalisation after the adapter is not on the path to the head here, so with the
    # ones input R = 1ᵀ|C| |U| |D| 1 (C = classifier), and the default input is one sequence.
    head = model.classifier.weight.detach().abs().double()
    head_in = head.sum(0)  # ∂R/∂(adapter output)
    expected_up = up * torch.outer(head_in, down.sum(1))
    expected_down = down * torch.outer(up.t() @ head_in, torch.ones(down.shape[1]).double())
    torch.testing.assert_close(scores["adapter_up.weight"].double(), expected_up, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        scores["adapter_down.weight"].double(), expected_down, rtol=1e-5, atol=0
    )


def test_synflow_restores_weights_dtypes_and_buffers():
    model = TinyAdapterModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _scores(model, "synflow", None)
    after = model.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k


def test_synflow_never_writes_the_models_weights():
    model = TinyAdapterModel()
    weight = model.adapter_down.weight
    seen = []
    model.classifier.register_forward_hook(lambda *_: seen.append((weight.dtype, weight.min())))
    _scores(model, "synflow", None)
    assert seen and all(dtype == torch.float32 for dtype, _ in seen)
    assert min(low for _, low in seen) < 0, "the weights were replaced by |θ| in place"


class SharedEmbedding(torch.nn.Module):
    """One embedding module under two names, its weight tied to the output layer."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.encoder_embed = self.embed
        self.adapter_down, self.adapter_up = torch.nn.Linear(6, 4), torch.nn.Linear(4, 6)
        self.out = torch.nn.Linear(6, 11, bias=False)
        self.out.weight = self.embed.weight
        self.embed.requires_grad_(False)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None):
        x = self.encoder_embed(input_ids)
        x = x + self.adapter_up(torch.relu(self.adapter_down(x)))
        return types.SimpleNamespace(logits=self.out(x[:, 0]))


def test_synflow_keeps_shared_modules_and_tied_weights():
    model = SharedEmbedding()
    weight, before = model.embed.weight, model.embed.weight.detach().clone()
    _, scores = _scores(model, "synflow", None)
    assert model.encoder_embed is model.embed and model.out.weight is weight
    assert model.embed.weight is weight and torch.equal(weight, before)
    assert all(s.abs().sum() > 0 for s in scores.values())


def test_synflow_iterative_rounds_prune_to_target():
    masks = {}
    for rounds in (1, 5):
        model = TinyAdapterModel(hidden=16, bottleneck=8)
        report = sa.sparsify(
            model, sa.SparsityConfig(method="synflow", sparsity=0.75, synflow_rounds=rounds)
        )
        assert report.kept == round(0.25 * report.prunable)
        masks[rounds] = sa.get_masks(model)
    # rescoring between rounds (pruned weights zeroed) changes which weights survive
    assert any(not torch.equal(masks[1][n], masks[5][n]) for n in masks[1])


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_scoring_leaves_grads_and_training_mode_untouched(method):
    model = TinyAdapterModel()
    model.train()
    sa.sparsify(model, sa.SparsityConfig(method=method, sparsity=0.5), batches=tiny_batches())
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_registered_custom_scorer_is_used():
    @sa.register_scorer("test_prefer_last", needs_data=False)
    def prefer_last(model, params, batches, config):
        return {
            n: torch.arange(p.numel(), dtype=torch.float).view(p.shape) for n, p in params.items()
        }

    model = TinyAdapterModel()
    sa.sparsify(model, sa.SparsityConfig(method="test_prefer_last", sparsity=0.5, scope="layer"))
    mask = sa.get_masks(model)["adapter_down.weight"].flatten()
    assert mask[mask.numel() // 2 :].all() and not mask[: mask.numel() // 2].any()


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude"])
def test_score_weights_are_what_sparsify_ranks(method):
    model = TinyAdapterModel(hidden=16, bottleneck=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = sa.SparsityConfig(method=method, sparsity=0.7)
    scores = sa.score_weights(model, config, batches=tiny_batches())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing pruned
    assert sa.get_masks(model) == {}
    sa.sparsify(model, config, batches=tiny_batches())
    expected = select_masks(scores, 0.7)
    assert sa.get_masks(model).keys() == expected.keys()
    assert all(torch.equal(sa.get_masks(model)[n], expected[n]) for n in expected)
