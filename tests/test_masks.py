"""Exact kept counts, deterministic tie-breaking, and no tensor pruned dead."""

import pytest
import torch

from sparseadapter.masks import kept_count, select_masks


def _scores(seed=0, shapes=((8, 5), (5, 8), (3,))):
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.rand(s, generator=g) for i, s in enumerate(shapes)}


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.4, 0.5, 0.8, 0.9, 0.95, 0.99])
def test_global_keeps_exactly_round_of_budget(sparsity):
    scores = _scores()
    n = sum(s.numel() for s in scores.values())
    masks = select_masks(scores, sparsity, "global")
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(n, sparsity)
    assert all(m.shape == scores[k].shape and m.dtype == torch.bool for k, m in masks.items())


@pytest.mark.parametrize("sparsity", [0.1, 0.4, 0.8])
def test_layer_scope_keeps_exact_count_per_tensor(sparsity):
    scores = _scores()
    masks = select_masks(scores, sparsity, "layer")
    for name, m in masks.items():
        assert int(m.sum()) == max(1, kept_count(scores[name].numel(), sparsity))


def test_global_keeps_the_highest_scores():
    scores = {"a": torch.tensor([0.1, 0.9, 0.5, 0.3]), "b": torch.tensor([0.8, 0.2, 0.7, 0.05])}
    masks = select_masks(scores, 0.5, "global")
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [True, False, True, False]


def test_heavy_ties_keep_exact_count_and_earliest_positions():
    scores = {"a": torch.ones(10), "b": torch.ones(10)}
    masks = select_masks(scores, 0.7, "global")
    assert int(masks["a"].sum() + masks["b"].sum()) == 6
    # each tensor keeps its first weight (never pruned dead), then ties go to earlier positions
    assert masks["a"].tolist() == [True] * 5 + [False] * 5
    assert masks["b"].tolist() == [True] + [False] * 9
    layer = select_masks({"a": torch.zeros(7)}, 0.5, "layer")["a"]
    assert layer.tolist() == [True] * 4 + [False] * 3  # round(3.5) = 4, halves round up


def test_same_scores_same_masks():
    a = select_masks(_scores(seed=3), 0.6, "global")
    b = select_masks(_scores(seed=3), 0.6, "global")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_global_never_prunes_a_tensor_dead():
    scores = {"big": torch.full((100,), 10.0), "small": torch.full((50,), 1e-6)}
    masks = select_masks(scores, 0.5, "global")
    assert masks["small"].any()
    assert int(masks["big"].sum() + masks["small"].sum()) == 75


def test_kept_count_rounds_half_up():
    assert kept_count(10, 0.25) == 8  # 7.5 -> 8
    assert kept_count(10, 0.4) == 6
    assert kept_count(3, 0.0) == 3
