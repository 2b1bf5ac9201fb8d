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
    # exact halves that floats put just below .5 (1 - 0.9 < 0.1 in floats)
    assert kept_count(5, 0.9) == 1
    assert kept_count(30, 0.55) == 14
    assert kept_count(12345, 0.9) == 1235


def test_kept_count_matches_integer_arithmetic():
    for permille in range(0, 1001, 7):
        for n in range(1, 400, 3):
            exact = ((1000 - permille) * n * 2 + 1000) // 2000  # floor((1000 - k) n / 1000 + 1/2)
            assert kept_count(n, permille / 1000) == exact, (n, permille)


def _misaligned_lora_scores():
    """A (rank 4 x 6) scores high only in row 0, B (5 x rank 4) only in column 3: kept weights
    that never meet, unless the pair is kept aligned."""
    a, b = torch.full((4, 6), 0.01), torch.full((5, 4), 0.01)
    a[0], b[:, 3] = 5.0, 5.0
    a[2, 1], b[4, 2] = 0.5, 0.4  # rank 2 is the best aligned one: min(0.5, 0.4) beats 0.01
    return {"q.lora_A": a, "q.lora_B": b, "other": torch.full((30,), 1.0)}


def _aligned_ranks(masks):
    return (masks["q.lora_A"].any(1) & masks["q.lora_B"].any(0)).nonzero().flatten().tolist()


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_lora_pairs_keep_an_aligned_rank(scope):
    scores = _misaligned_lora_scores()
    sparsity = 0.8 if scope == "global" else 0.9
    assert _aligned_ranks(select_masks(scores, sparsity, scope)) == []  # pruned dead without
    masks = select_masks(scores, sparsity, scope, pairs=[("q.lora_A", "q.lora_B")])
    assert _aligned_ranks(masks) == [2]
    assert masks["q.lora_A"][2, 1] and masks["q.lora_B"][4, 2]
    counts = {k: int(m.sum()) for k, m in masks.items()}
    naive = {k: int(m.sum()) for k, m in select_masks(scores, sparsity, scope).items()}
    assert sum(counts.values()) == sum(naive.values())  # the budget stays exact
    if scope == "layer":
        assert counts == naive  # and so does every tensor's count


def test_aligned_pairs_change_nothing_when_already_aligned():
    scores = _misaligned_lora_scores()
    pairs = [("q.lora_A", "q.lora_B")]
    for sparsity in (0.0, 0.2, 0.4):
        naive, aligned = select_masks(scores, sparsity), select_masks(scores, sparsity, pairs=pairs)
        assert all(torch.equal(naive[k], aligned[k]) for k in scores)
