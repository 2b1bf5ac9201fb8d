"""The quality benchmark v2's statistics on cases worked by hand, cross-checked with scipy.stats
where it implements the same test."""

import math

import numpy as np
import pytest
from helpers import benchmark_module
from scipy import stats

st = benchmark_module("quality_v2_stats")

# a: mean 4, sample variance 4; b: mean 2, sample variance 1 (3 seeds each)
A, B = [2.0, 4.0, 6.0], [1.0, 2.0, 3.0]


def test_welch_by_hand():
    w = st.welch(A, B)
    # SE² = 4/3 + 1/3 = 5/3; df = (5/3)² / ((4/3)²/2 + (1/3)²/2) = (25/9) / (17/18) = 50/17
    assert w.diff == pytest.approx(2.0)
    assert w.se == pytest.approx(math.sqrt(5 / 3))
    assert w.df == pytest.approx(50 / 17)


@pytest.mark.parametrize("margin", [0.0, 1.0])
def test_non_inferiority_matches_scipy_shifted_welch(margin):
    # H0: a − b <= −m is Welch's one-sided test of (a + m) against b
    got = st.non_inferiority(A, B, margin)
    a_shifted = [x + margin for x in A]
    ref = stats.ttest_ind(a_shifted, B, equal_var=False, alternative="greater")
    assert got.t == pytest.approx(ref.statistic)
    assert got.p == pytest.approx(ref.pvalue)
    # by hand: t = (2 + m) / sqrt(5/3); m = 1 → 3 / 1.29099 = 2.3238
    assert got.t == pytest.approx((2 + margin) / math.sqrt(5 / 3))


def test_lower_bound_decides_the_test():
    # the 95% lower bound is diff − t(0.95, 50/17) · SE = 2 − 2.3727 · 1.29099 = −1.0631
    # (t(0.95) at df 2.94, between the tables' 2.920 at df 2 and 2.353 at df 3):
    # above −2 (margin 2: non-inferior), below −1 (margin 1: not shown)
    q = stats.t.ppf(0.95, 50 / 17)
    assert q == pytest.approx(2.3727, abs=1e-3)
    r1, r2 = st.non_inferiority(A, B, 1.0), st.non_inferiority(A, B, 2.0)
    assert r1.lower == pytest.approx(2 - q * math.sqrt(5 / 3))
    assert r1.lower == pytest.approx(-1.0631, abs=1e-3)
    assert not r1.rejected and r1.lower < -1
    assert r2.rejected and r2.lower > -2
    ci = stats.ttest_ind(A, B, equal_var=False, alternative="greater").confidence_interval(0.95)
    assert r1.lower == pytest.approx(ci.low)


def test_superiority_is_one_sided():
    up, down = st.superiority(A, B), st.superiority(B, A)
    # the two one-sided p-values of the same t sum to 1
    assert up.p + down.p == pytest.approx(1.0)
    assert up.p == pytest.approx(
        stats.ttest_ind(A, B, equal_var=False, alternative="greater").pvalue
    )
    with pytest.raises(ValueError, match="margin"):
        st.non_inferiority(A, B, -1.0)


def test_one_seed_is_refused():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        st.welch([1.0], B)


# p-values 0.01, 0.04, 0.03, 0.005 (m = 4); ascending: 0.005, 0.01, 0.03, 0.04
P = [0.01, 0.04, 0.03, 0.005]


def test_holm_by_hand():
    # 0.005·4 = 0.02; 0.01·3 = 0.03; 0.03·2 = 0.06; 0.04·1 = 0.04 → kept monotone: 0.06
    assert st.holm(P) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_benjamini_hochberg_by_hand_and_scipy():
    # p·m/rank: 0.005·4/1 = 0.02, 0.01·4/2 = 0.02, 0.03·4/3 = 0.04, 0.04·4/4 = 0.04;
    # then the running minimum from the largest down changes nothing
    assert st.benjamini_hochberg(P) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    rng = np.random.default_rng(3)
    p = list(rng.uniform(0, 0.2, size=17))
    assert st.benjamini_hochberg(p) == pytest.approx(list(stats.false_discovery_control(p)))


def test_ranks_share_ties():
    assert st.ranks({"a": 3.0, "b": 5.0, "c": 3.0}) == {"a": 2.5, "b": 1.0, "c": 2.5}


def test_bootstrap_rank_intervals():
    # seeds without spread, far apart: every resample keeps the order
    fixed = st.bootstrap_rank_intervals({"x": [1, 1, 1], "y": [9, 9, 9], "z": [5, 5, 5]})
    assert fixed == {"x": (3.0, 3.0, 3.0), "y": (1.0, 1.0, 1.0), "z": (2.0, 2.0, 2.0)}
    # two arms with the same seeds trade places; the far-behind third stays last
    same = [80.0, 82.0, 84.0]
    got = st.bootstrap_rank_intervals({"p": same, "q": list(same), "r": [10.0, 11.0, 12.0]})
    assert got["p"][1:] == (1.0, 2.0) and got["q"][1:] == (1.0, 2.0)
    assert got["r"] == (3.0, 3.0, 3.0)
    again = st.bootstrap_rank_intervals({"p": same, "q": list(same), "r": [10.0, 11.0, 12.0]})
    assert again == got  # seeded


def test_seeds_for_se_by_hand():
    # SE = sqrt((1 + 1) / n) <= 0.5 → n >= 8
    assert st.seeds_for_se(1.0, 1.0) == 8
    assert math.sqrt(2 / 8) <= 0.5 < math.sqrt(2 / 7)
    # (1.5² + 2²) / 0.25 = 25
    assert st.seeds_for_se(1.5, 2.0) == 25
    assert st.seeds_for_se(0.1, 0.1) == 2  # a difference needs two seeds a side anyway


def test_plan_seeds_states_what_a_capped_cell_detects():
    plan = st.plan_seeds(1.5, 2.0, max_seeds=10)
    assert plan.seeds == 10 and not plan.affordable
    assert plan.se == pytest.approx(math.sqrt(6.25 / 10))  # 0.79
    # the power of a one-sided Welch t test at that true difference, from the noncentral t
    df = 18 * (6.25 / 10) ** 2 / ((2.25 / 10) ** 2 + (4 / 10) ** 2)
    crit = stats.t.ppf(0.95, df)
    power = stats.nct.sf(crit, df, plan.detectable / plan.se)
    assert power == pytest.approx(0.8, abs=0.02)
    # normal approximation by hand: (1.645 + 0.842) · 0.79 = 1.97; t's heavier tails ask more
    assert 1.97 < plan.detectable < 2.2
    assert st.plan_seeds(1.0, 1.0, max_seeds=10).affordable


def test_seed_sds_pool_cells_by_group():
    def rec(pruner, lr, seed, score):
        return {
            "task": "rte",
            "adapter": "houlsby",
            "pruner": pruner,
            "sparsity": 0.4 if pruner != "none" else 0.0,
            "large_sparse": 1.0,
            "lr": lr,
            "seed": seed,
            "score": score,
        }

    records = [
        rec("none", 1e-3, 1, 0.50),  # sample variance of 50, 52, 54 points: 4
        rec("none", 1e-3, 2, 0.52),
        rec("none", 1e-3, 3, 0.54),
        rec("snip", 1e-3, 1, 0.60),  # of 60, 64: 8
        rec("snip", 1e-3, 2, 0.64),
        rec("snip", 3e-3, 1, 0.70),  # one seed: no variance
    ]
    by_arm = st.seed_sds(records, ["task", "pruner"])
    assert by_arm == pytest.approx({("rte", "none"): 2.0, ("rte", "snip"): math.sqrt(8)})
    pooled = st.seed_sds(records, ["task"])
    assert pooled[("rte",)] == pytest.approx(math.sqrt((4 + 8) / 2))


def test_trivial_scores_by_hand():
    labels = [1, 1, 1, 0]
    assert st.trivial_score("accuracy", labels) == pytest.approx(75.0)
    # always 1: precision 3/4, recall 1 → F1 = 2 · 0.75 / 1.75
    assert st.trivial_score("f1", labels) == pytest.approx(100 * 1.5 / 1.75)
    assert st.trivial_score("matthews_correlation", labels) == 0.0
    assert st.trivial_score("pearson", [0.5, 4.0]) == 0.0
    with pytest.raises(ValueError, match="no trivial baseline"):
        st.trivial_score("bleu", labels)


def test_failure_rule_is_relative_to_trivial_and_dense():
    # CoLA: trivial MCC 0, dense 28 → a run needs more than 14
    assert st.failure_threshold(0.0, 28.0) == pytest.approx(14.0)
    assert st.failed(4.8, 0.0, 28.0) and st.failed(-2.0, 0.0, 28.0)
    assert not st.failed(25.0, 0.0, 28.0)
    # STS-B: dense Pearson 85 → 42.5; the noisy LoRA runs at 10.8–32.1 fail
    assert st.failed(32.06, 0.0, 85.0) and not st.failed(81.5, 0.0, 85.0)
    # a dense arm barely above trivial: still at least 1 point above it
    assert st.failure_threshold(52.7, 53.0) == pytest.approx(53.7)


def test_density_exponent_by_hand():
    # lr doubling each time the density halves is lr ~ density^-1
    assert st.density_exponent([(1.0, 1e-3), (0.5, 2e-3), (0.25, 4e-3)]) == pytest.approx(1.0)
    # the same best rate at every density: no density dependence
    assert st.density_exponent([(1.0, 3e-3), (0.2, 3e-3)]) == pytest.approx(0.0, abs=1e-12)
    # two points, lr x sqrt(10) over a density / 10: alpha 0.5
    assert st.density_exponent([(1.0, 1e-3), (0.1, 10**-2.5)]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="two or more densities"):
        st.density_exponent([(0.5, 1e-3), (0.5, 3e-3)])
