"""Statistics of the quality benchmark v2: one-sided Welch tests with confidence bounds, multiple
testing adjustment (Holm, Benjamini–Hochberg), bootstrap rank intervals, seed counts from seed
variances, and the failure rule against each task's trivial baseline.

Scores are in points (0–100) throughout. Every run counts: a run that fails (scores no better
than the task's trivial predictor) stays in its arm's mean and is counted beside it, never dropped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
TARGET_SE = 0.5  # points: the standard error of a difference the seed count aims for
FAILURE_TOLERANCE = 1.0  # points: the least margin over the trivial score a run must clear
FAILURE_FRACTION = 0.5  # of the dense adapter's gain over the trivial score


@dataclass(frozen=True)
class Welch:
    """Arm a − arm b: difference of means, its standard error and Welch–Satterthwaite df."""

    diff: float
    se: float
    df: float
    n_a: int
    n_b: int


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's unequal-variance comparison of the means of ``a`` and ``b`` (each >= 2 values)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each arm needs at least 2 seeds, got {len(a)} and {len(b)}")
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        df = float(len(a) + len(b) - 2)
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Welch(float(np.mean(a) - np.mean(b)), se, float(df), len(a), len(b))


@dataclass(frozen=True)
class OneSided:
    """H0: a − b <= −margin against H1: a − b > −margin (margin 0: a superiority test).

    ``lower``: the one-sided (1 − alpha) lower confidence bound of a − b; the test rejects H0
    exactly when ``lower > -margin``. ``low``/``high``: the two-sided (1 − 2 alpha) interval
    whose lower end is ``lower``, for plots and tables."""

    margin: float
    diff: float
    se: float
    df: float
    t: float
    p: float
    lower: float
    high: float
    alpha: float

    @property
    def rejected(self) -> bool:
        return self.p < self.alpha


def one_sided(
    a: Sequence[float], b: Sequence[float], margin: float = 0.0, alpha: float = ALPHA
) -> OneSided:
    """Non-inferiority of ``a`` to ``b`` within ``margin`` points (one-sided Welch t test)."""
    w = welch(a, b)
    q = stats.t.ppf(1 - alpha, w.df)
    shifted = w.diff + margin
    if w.se == 0:
        t = math.copysign(math.inf, shifted) if shifted else 0.0
        p = 0.0 if shifted > 0 else 1.0 if shifted < 0 else 0.5
    else:
        t = shifted / w.se
        p = float(stats.t.sf(t, w.df))
    return OneSided(margin, w.diff, w.se, w.df, t, p, w.diff - q * w.se, w.diff + q * w.se, alpha)


def non_inferiority(
    a: Sequence[float], b: Sequence[float], margin: float, alpha: float = ALPHA
) -> OneSided:
    """``a`` is no worse than ``b`` by more than ``margin`` points."""
    if margin < 0:
        raise ValueError(f"a non-inferiority margin is >= 0 points, got {margin}")
    return one_sided(a, b, margin, alpha)


def superiority(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> OneSided:
    """``a`` scores higher than ``b`` (H0: a − b <= 0)."""
    return one_sided(a, b, 0.0, alpha)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), in the input's order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i], reverse=True)
    adjusted = [0.0] * m
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k  # 1-based rank of pvalues[i] in ascending order
        running = min(running, pvalues[i] * m / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def ranks(means: Mapping[str, float]) -> dict[str, float]:
    """Rank of each arm by mean, 1 = best; tied arms share their average rank."""
    order = stats.rankdata([-v for v in means.values()], method="average")
    return {name: float(r) for name, r in zip(means, order, strict=True)}


def bootstrap_rank_intervals(
    scores: Mapping[str, Sequence[float]],
    rounds: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """Per arm: its observed rank and the percentile interval of its rank when every arm's seeds
    are resampled with replacement (``rounds`` times, a seeded generator)."""
    rng = np.random.default_rng(seed)
    names = list(scores)
    arrays = [np.asarray(scores[n], dtype=float) for n in names]
    drawn = np.empty((rounds, len(names)))
    for j, x in enumerate(arrays):
        drawn[:, j] = x[rng.integers(0, len(x), size=(rounds, len(x)))].mean(axis=1)
    rank_draws = stats.rankdata(-drawn, axis=1, method="average")
    tail = (1 - level) / 2 * 100
    observed = ranks({n: float(x.mean()) for n, x in zip(names, arrays, strict=True)})
    out = {}
    for j, n in enumerate(names):
        low, high = np.percentile(rank_draws[:, j], [tail, 100 - tail])
        out[n] = (observed[n], float(low), float(high))
    return out


def difference_se(sd_a: float, sd_b: float, n: int) -> float:
    """Standard error of a difference of two means of ``n`` seeds each."""
    return math.sqrt((sd_a**2 + sd_b**2) / n)


def seeds_for_se(sd_a: float, sd_b: float, target_se: float = TARGET_SE) -> int:
    """Seeds per arm (the same in both) for a standard error of the difference <= target_se:
    SE = sqrt((sd_a² + sd_b²) / n)."""
    return max(2, math.ceil((sd_a**2 + sd_b**2) / target_se**2 - 1e-12))


def detectable_difference(
    sd_a: float, sd_b: float, n: int, alpha: float = ALPHA, power: float = 0.8
) -> float:
    """The smallest true difference (points) that a one-sided Welch test at ``alpha`` with ``n``
    seeds per arm detects with probability ``power`` (t approximation, Welch df at these sds)."""
    va, vb = sd_a**2 / n, sd_b**2 / n
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1))
    return float((stats.t.ppf(1 - alpha, df) + stats.t.ppf(power, df)) * se)


@dataclass(frozen=True)
class SeedPlan:
    seeds: int
    se: float  # of the difference at ``seeds``
    affordable: bool  # the target SE is reached within the cap
    detectable: float  # smallest difference detected at 80% power with ``seeds``


def plan_seeds(sd_a: float, sd_b: float, max_seeds: int, target_se: float = TARGET_SE) -> SeedPlan:
    """Seeds per arm for ``target_se``, capped at ``max_seeds``; what that many seeds detect."""
    need = seeds_for_se(sd_a, sd_b, target_se)
    n = min(need, max_seeds)
    return SeedPlan(
        n, difference_se(sd_a, sd_b, n), need <= max_seeds, detectable_difference(sd_a, sd_b, n)
    )


CELL_KEYS = ("task", "adapter", "pruner", "sparsity", "large_sparse", "lr")


def seed_sds(records: Sequence[Mapping], keys: Sequence[str]) -> dict[tuple, float]:
    """Seed standard deviation (points) per group of ``keys`` (record fields): the root of the
    mean of the sample variances of the group's cells (a cell = one setting at one lr, its
    seeds; cells of one seed have no variance and are skipped)."""
    cells: dict[tuple, list[float]] = {}
    for r in records:
        group = tuple(r[k] for k in keys)
        cells.setdefault((group, *(r[k] for k in CELL_KEYS)), []).append(100 * r["score"])
    variances: dict[tuple, list[float]] = {}
    for (group, *_), scores in cells.items():
        if len(scores) >= 2:
            variances.setdefault(group, []).append(float(np.var(scores, ddof=1)))
    return {g: math.sqrt(sum(v) / len(v)) for g, v in variances.items()}


def trivial_score(metric: str, labels: Sequence[float]) -> float:
    """Points scored by the task's trivial predictor on ``labels``: the majority class
    (accuracy), always the positive class (F1), or a constant prediction (MCC, Pearson,
    Spearman: 0)."""
    if metric in ("matthews_correlation", "mcc", "pearson", "spearmanr", "spearman"):
        return 0.0
    counts = Counter(labels)
    if metric == "accuracy":
        return 100 * max(counts.values()) / len(labels)
    if metric == "f1":
        positive = counts.get(1, 0) / len(labels)
        return 100 * 2 * positive / (1 + positive)
    raise ValueError(f"no trivial baseline for metric {metric!r}")


def failure_threshold(
    trivial: float, reference: float, fraction: float = FAILURE_FRACTION
) -> float:
    """The score a run must beat not to count as failed: the trivial predictor's score plus
    ``fraction`` of the reference's gain over it (the reference: the median score of the task's
    dense adapter), and at least ``FAILURE_TOLERANCE`` points above trivial."""
    return trivial + max(FAILURE_TOLERANCE, fraction * (reference - trivial))


def failed(score: float, trivial: float, reference: float) -> bool:
    """A run fails when it recovers less than half the dense adapter's gain over the trivial
    predictor (``failure_threshold``): chance-level collapses and noisy near-collapses alike."""
    return score <= failure_threshold(trivial, reference)


def density_exponent(points: Sequence[tuple[float, float]]) -> float:
    """alpha of the rule lr = c * density**-alpha that fits (density, best lr) points best in
    log space (least squares); needs two or more distinct densities."""
    x = np.log([d for d, _ in points])
    y = np.log([lr for _, lr in points])
    if len(set(x.tolist())) < 2:
        raise ValueError("a density exponent needs runs at two or more densities")
    slope = np.polyfit(x, y, 1)[0]
    return float(-slope)
