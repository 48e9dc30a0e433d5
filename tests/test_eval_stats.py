"""Golden values, edge cases and bad input for tasks/algos/eval_stats.py.

References are independent of the module: brute-force enumeration of k-subsets, exact Fractions, the
stdlib `statistics` module, and the exact two-sided binomial test written from its definition
(scipy is not installed in the venv, so scipy.stats.binomtest cannot be the cross-check).
"""

from __future__ import annotations

import itertools
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest

from tasks.algos import eval_stats as es


def _pass_at_k_enumerated(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def _se(values) -> float:
    return statistics.stdev(values) / math.sqrt(len(values))


# ---------------------------------------------------------------- pass@k


def test_pass_at_k_golden():
    assert es.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert es.pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert es.pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert es.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_enumerated(n, c, k), abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(200, 7, 50), (1000, 1, 1), (1000, 3, 100), (5000, 20, 10)])
def test_pass_at_k_large_n_matches_exact_fraction(n, c, k):
    # C(5000, 10) is ~2.7e29: the product form must agree with the exact rational value
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert es.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10)


def test_pass_at_k_edges():
    assert es.pass_at_k(5, 0, 3) == 0.0  # nothing correct
    assert es.pass_at_k(5, 5, 1) == 1.0  # everything correct
    assert es.pass_at_k(5, 1, 5) == 1.0  # k = n: the one correct sample is always drawn
    assert es.pass_at_k(5, 0, 5) == 0.0
    assert es.pass_at_k(5, 3, 3) == 1.0  # n - c < k: no all-wrong subset exists
    assert es.pass_at_k(1, 1, 1) == 1.0


@pytest.mark.parametrize(
    ("n", "c", "k", "bad"), [(5, 1, 6, "k=6"), (5, 1, 0, "k=0"), (5, 6, 1, "c=6"), (5, -1, 1, "c=-1"), (0, 0, 1, "k=1")]
)
def test_pass_at_k_rejects(n, c, k, bad):
    with pytest.raises(ValueError, match=bad):
        es.pass_at_k(n, c, k)


# ---------------------------------------------------------------- mean and SE


def test_mean_with_se_golden():
    mean, se = es.mean_with_se([1, 0, 1, 0])
    # sample variance = 4 * 0.25 / 3 = 1/3 -> SE = sqrt(1/3) / 2
    assert mean == pytest.approx(0.5) and se == pytest.approx(math.sqrt(1 / 3) / 2)
    vals = [0.2, 0.9, 0.4, 0.4, 1.0]
    assert es.mean_with_se(vals) == pytest.approx((statistics.mean(vals), _se(vals)))


def test_mean_with_se_edges():
    assert es.mean_with_se([0.7]) == (0.7, 0.0)  # one problem: no spread, not NaN
    assert es.mean_with_se([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.0))


@pytest.mark.parametrize(
    ("values", "bad"),
    [([], "empty"), ([0.5, float("nan")], "nan"), ([1.0, float("inf")], "inf"), ([[1.0, 0.0]], r"\(1, 2\)")],
)
def test_mean_with_se_rejects(values, bad):
    with pytest.raises(ValueError, match=bad):
        es.mean_with_se(values)


# ---------------------------------------------------------------- pass@k curve


def test_pass_at_k_curve_golden():
    curve = es.pass_at_k_curve([0, 1, 4], n=4)
    assert sorted(curve) == [1, 2, 3, 4]
    # k=1: per problem c/n = [0, .25, 1]; k=2: [0, 1 - C(3,2)/C(4,2) = .5, 1]; k=4: [0, 1, 1]
    for k, per_problem in {1: [0, 0.25, 1], 2: [0, 0.5, 1], 4: [0, 1, 1]}.items():
        assert curve[k] == pytest.approx((statistics.mean(per_problem), _se(per_problem))), k
    means = [curve[k][0] for k in sorted(curve)]
    assert means == sorted(means)  # pass@k never decreases in k


def test_pass_at_k_curve_single_problem_and_all_solved():
    assert es.pass_at_k_curve([2], n=3) == {1: pytest.approx((2 / 3, 0.0)), 2: (1.0, 0.0), 3: (1.0, 0.0)}
    assert es.pass_at_k_curve([3, 3], n=3) == {k: (1.0, 0.0) for k in (1, 2, 3)}


@pytest.mark.parametrize(
    ("counts", "n", "bad"), [([1, 5], 4, "c=5"), ([-1], 4, "c=-1"), ([], 4, "empty"), ([0], 0, "n=0")]
)
def test_pass_at_k_curve_rejects(counts, n, bad):
    with pytest.raises(ValueError, match=bad):
        es.pass_at_k_curve(counts, n)


# ---------------------------------------------------------------- avg@k


def test_avg_at_k_golden():
    mean, se = es.avg_at_k([[1, 0, 1, 1], [0, 0, 0, 0]])
    # per-problem .75 and 0: mean .375, SE of two values = |x1 - x2| / 2
    assert mean == pytest.approx(0.375) and se == pytest.approx(0.375)
    assert es.avg_at_k(np.array([[True, False], [True, True], [False, False]])) == pytest.approx(
        (0.5, _se([0.5, 1.0, 0.0]))
    )


def test_avg_at_k_edges():
    assert es.avg_at_k([[1, 1, 1], [1, 1, 1]]) == (1.0, 0.0)
    assert es.avg_at_k([[0, 1, 1]]) == pytest.approx((2 / 3, 0.0))  # one problem: SE 0


@pytest.mark.parametrize(
    ("correct", "bad"),
    [
        ([1, 0, 1], r"\(3,\)"),
        ([[1, 2]], "got 2"),
        ([[1, 0.5]], "got 0.5"),
        (np.zeros((0, 3)), r"\(0, 3\)"),
        ([[], []], r"\(2, 0\)"),
    ],
)
def test_avg_at_k_rejects(correct, bad):
    with pytest.raises(ValueError, match=bad):
        es.avg_at_k(correct)


# ---------------------------------------------------------------- maj@k

ANSWERS = [
    ["4", "5", "4", None],  # "4" wins 2-1
    ["7", "8", "8", "7"],  # 2-2 tie: "7" appeared first and wins; with k=3 "8" wins 2-1
    [None, None, None, None],  # no answer at all: wrong
    [None, None, "3", "2"],
]  # None is the most common but never wins; "3" vs "2" tie -> "3" (right)
CORRECT = [
    [True, False, True, False],
    [False, True, True, False],
    [False, False, False, False],
    [False, False, True, False],
]


def test_maj_at_k_golden_and_tie_break():
    # k=4 votes: "4" right, "7" wrong (tie), no answer wrong, "3" right (tie; None outnumbers it but cannot win)
    assert es.maj_at_k(ANSWERS, CORRECT, 4) == pytest.approx((0.5, _se([1, 0, 0, 1])))
    # k=3 votes: "4" right, "8" right, no answer wrong, "3" right (the only real answer)
    assert es.maj_at_k(ANSWERS, CORRECT, 3) == pytest.approx((0.75, _se([1, 1, 0, 1])))


def test_maj_at_k_one_sample_is_the_first_answer():
    # k=1: the first answer decides ("4" right, "7" wrong, None wrong, a leading None wrong even though
    # a later sample is right)
    assert es.maj_at_k(ANSWERS, CORRECT, 1) == pytest.approx((0.25, _se([1, 0, 0, 0])))
    assert es.maj_at_k([["a", "b"], ["c", "c"]], [[True, False], [False, False]], 1) == pytest.approx((0.5, 0.5))


def test_maj_at_k_tie_goes_to_earliest_not_to_correct():
    # "x" and "y" tie 2-2; "y" is correct but "x" was sampled first, so the vote is wrong
    assert es.maj_at_k([["x", "y", "y", "x"]], [[False, True, True, False]], 4) == (0.0, 0.0)
    assert es.maj_at_k([["y", "x", "y", "x"]], [[True, False, True, False]], 4) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("answers", "correct", "k", "bad"),
    [
        (ANSWERS, CORRECT, 0, "k=0"),
        (ANSWERS, CORRECT, 5, "k=5"),
        (ANSWERS, CORRECT[:3], 2, "4 problems but correct has 3"),
        ([["a", "b"]], [[True]], 1, "2 answers but 1 grades"),
        ([], [], 1, "empty"),
    ],
)
def test_maj_at_k_rejects(answers, correct, k, bad):
    with pytest.raises(ValueError, match=bad):
        es.maj_at_k(answers, correct, k)


# ---------------------------------------------------------------- cost-of-pass


def test_mean_attempt_cost_golden():
    # attempt 1: 1000 * 2/1e6 + 500 * 8/1e6 = .006 ; attempt 2: 3000 * 2/1e6 + 1500 * 8/1e6 = .018
    assert es.mean_attempt_cost([1000, 3000], [500, 1500], 2.0, 8.0) == pytest.approx(0.012)
    assert es.mean_attempt_cost([10**6], [0], 3.0, 15.0) == pytest.approx(3.0)
    assert es.mean_attempt_cost([0, 0], [0, 0], 3.0, 15.0) == 0.0


@pytest.mark.parametrize(
    ("tin", "tout", "p_in", "p_out", "bad"),
    [
        ([1, 2], [1], 1.0, 1.0, "2 attempts but output_tokens has 1"),
        ([], [], 1.0, 1.0, "empty"),
        ([1, -5], [1, 1], 1.0, 1.0, "-5"),
        ([1], [1], -1.0, 1.0, "price_in_per_mtok=-1.0"),
        ([1], [1], 1.0, float("nan"), "price_out_per_mtok=nan"),
    ],
)
def test_mean_attempt_cost_rejects(tin, tout, p_in, p_out, bad):
    with pytest.raises(ValueError, match=bad):
        es.mean_attempt_cost(tin, tout, p_in, p_out)


def test_cost_of_pass_golden_and_edges():
    assert es.cost_of_pass(0.012, 0.25) == pytest.approx(0.048)
    assert es.cost_of_pass(0.5, 1.0) == 0.5
    assert es.cost_of_pass(0.5, 0.0) == math.inf  # never solves: infinite cost per success
    assert es.cost_of_pass(0.0, 0.0) == math.inf


@pytest.mark.parametrize(
    ("cost", "acc", "bad"),
    [
        (1.0, 1.5, "accuracy=1.5"),
        (1.0, -0.1, "accuracy=-0.1"),
        (-1.0, 0.5, "mean_cost=-1.0"),
        (1.0, float("nan"), "nan"),
    ],
)
def test_cost_of_pass_rejects(cost, acc, bad):
    with pytest.raises(ValueError, match=bad):
        es.cost_of_pass(cost, acc)


def test_frontier_cost_of_pass():
    assert es.frontier_cost_of_pass({"a": 0.5, "b": 0.2, "c": math.inf}) == ("b", 0.2)
    assert es.frontier_cost_of_pass({"a": math.inf, "b": math.inf}) == (None, math.inf)
    assert es.frontier_cost_of_pass({}) == (None, math.inf)
    assert es.frontier_cost_of_pass({"z": 0.3, "a": 0.3}) == ("z", 0.3)  # tie: first in dict order


@pytest.mark.parametrize(("costs", "bad"), [({"a": 1.0, "b": -0.5}, "'b' is -0.5"), ({"m": float("nan")}, "nan")])
def test_frontier_cost_of_pass_rejects(costs, bad):
    with pytest.raises(ValueError, match=bad):
        es.frontier_cost_of_pass(costs)


# ---------------------------------------------------------------- paired bootstrap

A = [0, 1, 0, 1, 0, 0, 1, 0]
B = [1, 1, 0, 1, 1, 0, 1, 1]  # b - a = [1, 0, 0, 0, 1, 0, 0, 1]: mean 3/8


def test_paired_bootstrap_golden_and_deterministic():
    out = es.paired_bootstrap(A, B, n_boot=2000, seed=7)
    assert out["mean_a"] == pytest.approx(3 / 8) and out["mean_b"] == pytest.approx(6 / 8)
    assert out["mean_diff"] == pytest.approx(3 / 8)
    assert out["ci_low"] <= out["mean_diff"] <= out["ci_high"]
    assert 0.0 <= out["ci_low"] < out["ci_high"] <= 1.0  # every per-problem difference here is 0 or 1
    assert es.paired_bootstrap(A, B, n_boot=2000, seed=7) == out
    assert es.paired_bootstrap(B, A, n_boot=2000, seed=7)["mean_diff"] == pytest.approx(-3 / 8)


def test_paired_bootstrap_seed_and_alpha_matter():
    rng = np.random.default_rng(123)
    a, b = rng.random(50), rng.random(50)
    base = es.paired_bootstrap(a, b, n_boot=500, seed=0)
    assert es.paired_bootstrap(a, b, n_boot=500, seed=1) != base
    wide = es.paired_bootstrap(a, b, n_boot=500, seed=0, alpha=0.01)
    assert wide["ci_low"] < base["ci_low"] and wide["ci_high"] > base["ci_high"]


def test_paired_bootstrap_ci_close_to_normal_approximation():
    # for 400 problems the percentile CI is close to mean_diff +- 1.96 SE of the per-problem differences
    rng = np.random.default_rng(5)
    a = rng.random(400)
    b = np.clip(a + rng.normal(0.05, 0.2, 400), 0, 1)
    out = es.paired_bootstrap(a, b, n_boot=4000, seed=0)
    d = (b - a).tolist()
    half = 1.959964 * _se(d)
    assert out["mean_diff"] == pytest.approx(statistics.mean(d))
    assert out["ci_low"] == pytest.approx(out["mean_diff"] - half, abs=0.1 * half)
    assert out["ci_high"] == pytest.approx(out["mean_diff"] + half, abs=0.1 * half)


def test_paired_bootstrap_identical_checkpoints():
    scores = [0.25, 1.0, 0.0, 0.5, 0.75]
    out = es.paired_bootstrap(scores, scores, n_boot=1000, seed=3)
    assert (out["mean_diff"], out["ci_low"], out["ci_high"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("a", "b", "kw", "bad"),
    [
        ([0, 1, 1], [0, 1, 1, 0], {}, "a has 3 problems but b has 4"),
        ([0, 1.5], [0, 1], {}, "a holds 1.5"),
        ([0, 1], [0, -0.5], {}, "b holds -0.5"),
        ([], [], {}, "empty"),
        ([0, 1], [1, 1], {"n_boot": 0}, "n_boot=0"),
        ([0, 1], [1, 1], {"alpha": 1.0}, "alpha=1.0"),
    ],
)
def test_paired_bootstrap_rejects(a, b, kw, bad):
    with pytest.raises(ValueError, match=bad):
        es.paired_bootstrap(a, b, **kw)


# ---------------------------------------------------------------- McNemar


def _binom_two_sided(successes: int, trials: int) -> float:
    """Exact two-sided binomial test at p = 1/2 by definition (scipy.stats.binomtest's rule): the total
    probability of every outcome no more likely than the observed one."""
    pmf = [Fraction(math.comb(trials, i), 2**trials) for i in range(trials + 1)]
    return float(min(Fraction(1), sum(q for q in pmf if q <= pmf[successes])))


def test_mcnemar_golden():
    a = [1, 1, 0, 0, 1, 0, 1]
    b = [1, 0, 1, 1, 1, 1, 1]
    out = es.mcnemar(a, b)
    # a wrong & b right at 2, 3, 5; a right & b wrong at 1 -> 2 * P[Bin(4, .5) <= 1] = 2 * 5/16
    assert (out["b01"], out["b10"]) == (3, 1)
    assert out["p_value"] == pytest.approx(0.625)
    assert es.mcnemar([1] * 5, [0] * 5) == {"b01": 0, "b10": 5, "p_value": 0.0625}
    assert es.mcnemar([0] * 5, [1] * 5)["p_value"] == 0.0625  # symmetric in the direction


@pytest.mark.parametrize(("b01", "b10"), [(b01, b10) for b01 in range(0, 13, 3) for b10 in range(0, 25, 4)])
def test_mcnemar_matches_exact_binomial_definition(b01, b10):
    # concordant pairs (both right, both wrong) must not change the test
    a = [0] * b01 + [1] * b10 + [1, 1, 0]
    b = [1] * b01 + [0] * b10 + [1, 1, 0]
    out = es.mcnemar(a, b)
    assert (out["b01"], out["b10"]) == (b01, b10)
    expected = 1.0 if b01 + b10 == 0 else _binom_two_sided(b01, b01 + b10)
    assert out["p_value"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_edges():
    assert es.mcnemar([1, 0, 1], [1, 0, 1]) == {"b01": 0, "b10": 0, "p_value": 1.0}  # no discordant pairs
    assert es.mcnemar([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])["p_value"] == 1.0  # balanced: 2 * 42/64 capped
    # 2000 one-sided discordant pairs: p = 2 / 2**2000 underflows to 0 without raising OverflowError
    assert es.mcnemar([0] * 2000, [1] * 2000)["p_value"] == 0.0
    assert es.mcnemar([0] * 1000, [1] * 1000)["p_value"] == pytest.approx(2.0**-999)
    assert es.mcnemar(np.array([True, False]), np.array([False, False]))["b10"] == 1


@pytest.mark.parametrize(
    ("a", "b", "bad"),
    [
        ([0, 1], [0, 1, 1], "a_correct has 2 problems but b_correct has 3"),
        ([0, 2], [0, 1], "a_correct must hold only 0/1, got 2"),
        ([0, 1], [0.5, 1], "b_correct must hold only 0/1, got 0.5"),
        ([], [], "empty"),
    ],
)
def test_mcnemar_rejects(a, b, bad):
    with pytest.raises(ValueError, match=bad):
        es.mcnemar(a, b)


# ---------------------------------------------------------------- response lengths


def test_length_stats_golden():
    out = es.length_stats([10, 20, 30, 40, 100])
    # p90 by linear interpolation: position .9 * 4 = 3.6 -> 40 + .6 * (100 - 40) = 76
    assert out == {"mean": 40.0, "p50": 30.0, "p90": pytest.approx(76.0), "max": 100.0}
    assert all(type(v) is float for v in out.values())
    even = es.length_stats([4, 1, 3, 2])  # unsorted input; even count: median between 2 and 3
    assert even["p50"] == 2.5 and even["max"] == 4.0
    assert even["p90"] == pytest.approx(statistics.quantiles([4, 1, 3, 2], n=10, method="inclusive")[8])


def test_length_stats_edges():
    assert es.length_stats([7]) == {"mean": 7.0, "p50": 7.0, "p90": 7.0, "max": 7.0}
    assert es.length_stats([5, 5, 5]) == {"mean": 5.0, "p50": 5.0, "p90": 5.0, "max": 5.0}


@pytest.mark.parametrize(("counts", "bad"), [([], "empty"), ([3, -1], "-1"), ([1, float("nan")], "nan")])
def test_length_stats_rejects(counts, bad):
    with pytest.raises(ValueError, match=bad):
        es.length_stats(counts)
