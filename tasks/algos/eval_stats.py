"""Evaluation statistics over sampled answers (pure numpy + stdlib): pass@k, avg@k, maj@k,
cost-of-pass, paired checkpoint comparison and response-length summaries.

Conventions:
  * the unit of replication is the problem: every standard error (SE) is the sample std (ddof=1) of
    per-problem values divided by sqrt(#problems), and the bootstrap resamples problems;
  * `correct` arrays are 0/1 (or bool); any other value is rejected, never coerced;
  * bad input raises ValueError naming the offending value; nothing returns NaN silently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    """[N] float array, N >= 1, all finite."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"{name} holds a non-finite value {x[bad][0]}")
    return x


def _check_binary(x: np.ndarray, name: str) -> np.ndarray:
    bad = (x != 0) & (x != 1)
    if bad.any():
        raise ValueError(f"{name} must hold only 0/1, got {x[bad].flat[0]}")
    return x


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1, computed in the product
    form of their Fig. 3, 1 - prod_{i=n-c+1..n} (1 - k/i), which avoids the huge binomials.
    Needs 0 <= c <= n and 1 <= k <= n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"c={c} must be in 0..n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in 1..n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample (the product would hit a zero factor anyway)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_with_se(values: ArrayLike) -> tuple[float, float]:
    """(mean, standard error) of [N] per-problem values; SE = std(ddof=1) / sqrt(N), and 0 when N == 1."""
    x = _as_1d(values, "values")
    if x.size == 1:
        return float(x[0]), 0.0  # ddof=1 is undefined for one problem; report no spread rather than NaN
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def pass_at_k_curve(correct_counts: Sequence[int], n: int) -> dict[int, tuple[float, float]]:
    """{k: (mean, SE) over problems of pass_at_k(n, c_i, k)} for k = 1..n.

    `correct_counts` [P]: correct samples per problem, every problem having the same n samples.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    if len(correct_counts) == 0:
        raise ValueError("correct_counts is empty")
    return {k: mean_with_se([pass_at_k(n, c, k) for c in correct_counts]) for k in range(1, n + 1)}


def avg_at_k(correct: ArrayLike) -> tuple[float, float]:
    """avg@k: (mean, SE over problems) of the per-problem accuracy; `correct` [P, k] of 0/1."""
    x = np.asarray(correct, dtype=float)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"correct must be 2-D [problems, k] with both >= 1, got shape {x.shape}")
    return mean_with_se(_check_binary(x, "correct").mean(axis=1))


def _majority(answers: Sequence[str | None]) -> int | None:
    """Index of the first sample holding the most frequent non-None answer; None if every answer is None.

    Counter keeps first-occurrence order and max() returns the first maximal key, so a tie goes to the
    answer that appeared earliest.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    return list(answers).index(max(votes, key=votes.__getitem__))


def maj_at_k(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int) -> tuple[float, float]:
    """maj@k (self-consistency, Wang et al. 2023): (mean, SE over problems) of majority-vote correctness.

    `answers` [P][n] extracted answers (None = no answer), `correct` [P][n] their grades, 1 <= k <= n.
    Per problem, the first k answers vote; None never wins (all None counts as wrong); ties go to the
    answer whose first occurrence has the smallest sample index. The vote is correct when that first
    occurrence was judged correct.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers has {len(answers)} problems but correct has {len(correct)}")
    hits = []
    for p, (ans, ok) in enumerate(zip(answers, correct)):
        if len(ans) != len(ok):
            raise ValueError(f"problem {p}: {len(ans)} answers but {len(ok)} grades")
        if not 1 <= k <= len(ans):
            raise ValueError(f"k={k} must be in 1..{len(ans)} (samples of problem {p})")
        winner = _majority(ans[:k])
        hits.append(0.0 if winner is None else float(bool(ok[winner])))
    return mean_with_se(hits)


def mean_attempt_cost(
    input_tokens: ArrayLike, output_tokens: ArrayLike, price_in_per_mtok: float, price_out_per_mtok: float
) -> float:
    """Mean cost of one attempt: mean_j (in_j * p_in + out_j * p_out) / 1e6, prices per million tokens.

    `input_tokens`, `output_tokens` [A] token counts per attempt. The per-attempt cost C_m(p) of
    Erol et al. 2025, "Cost-of-Pass: An Economic Framework for Evaluating Language Models".
    """
    tin, tout = _as_1d(input_tokens, "input_tokens"), _as_1d(output_tokens, "output_tokens")
    if tin.size != tout.size:
        raise ValueError(f"input_tokens has {tin.size} attempts but output_tokens has {tout.size}")
    for name, x in (("input_tokens", tin), ("output_tokens", tout)):
        if (x < 0).any():
            raise ValueError(f"{name} holds a negative count {x[x < 0][0]}")
    for name, price in (("price_in_per_mtok", price_in_per_mtok), ("price_out_per_mtok", price_out_per_mtok)):
        if not price >= 0:  # also rejects NaN
            raise ValueError(f"{name}={price} must be >= 0")
    return float(np.mean(tin * price_in_per_mtok + tout * price_out_per_mtok) / 1e6)


def cost_of_pass(mean_cost: float, accuracy: float) -> float:
    """Cost-of-pass v = C_m(p) / R_m(p) (Erol et al. 2025): expected spend per correct answer.

    math.inf when accuracy == 0: no amount of attempts buys a correct answer.
    """
    if not mean_cost >= 0:
        raise ValueError(f"mean_cost={mean_cost} must be >= 0")
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy={accuracy} must be in [0, 1]")
    return math.inf if accuracy == 0 else mean_cost / accuracy


def frontier_cost_of_pass(costs: dict[str, float]) -> tuple[str | None, float]:
    """Frontier cost-of-pass (Erol et al. 2025): (name, value) of the cheapest model per correct answer.

    `costs` {model name: cost-of-pass}. Ties go to the earliest name in dict order; (None, inf) when
    every cost is inf (or `costs` is empty): no model solves the task.
    """
    for name, v in costs.items():
        if not v >= 0:
            raise ValueError(f"cost-of-pass of {name!r} is {v}, must be >= 0")
    best = min(costs, key=costs.__getitem__, default=None)
    if best is None or math.isinf(costs[best]):
        return None, math.inf
    return best, float(costs[best])


def paired_bootstrap(
    a: ArrayLike, b: ArrayLike, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Paired percentile bootstrap of mean(b) - mean(a) over the same problems (Efron & Tibshirani 1993, ch. 13).

    `a`, `b` [P] per-problem scores in [0, 1] (e.g. avg@k or greedy 0/1) of two checkpoints. Problems are
    resampled with replacement, keeping each (a_i, b_i) pair together so per-problem difficulty cancels.
    Memory is O(n_boot * P). Returns mean_a, mean_b, mean_diff and the (1 - alpha) CI ci_low, ci_high.
    """
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"a has {x.size} problems but b has {y.size}")
    for name, s in (("a", x), ("b", y)):
        out = (s < 0) | (s > 1)
        if out.any():
            raise ValueError(f"{name} holds {s[out][0]}, scores must be in [0, 1]")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1)")
    d = y - x
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    lo, hi = np.quantile(d[idx].mean(axis=1), [alpha / 2, 1 - alpha / 2])
    return {
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "mean_diff": float(d.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
    }


def mcnemar(a_correct: ArrayLike, b_correct: ArrayLike) -> dict[str, float]:
    """Exact McNemar test (McNemar 1947) on paired 0/1 outcomes of two checkpoints, [P] each.

    b01 = #(a wrong, b right), b10 = #(a right, b wrong). Under H0 the b01 + b10 discordant pairs split
    Bin(b01 + b10, 1/2); p = min(1, 2 P[X <= min(b01, b10)]), and 1 with no discordant pairs. Exact
    integer arithmetic, so tiny p-values are correctly rounded instead of accumulating float error.
    """
    x, y = _as_1d(a_correct, "a_correct"), _as_1d(b_correct, "b_correct")
    if x.size != y.size:
        raise ValueError(f"a_correct has {x.size} problems but b_correct has {y.size}")
    _check_binary(x, "a_correct")
    _check_binary(y, "b_correct")
    b01, b10 = int(np.sum((x == 0) & (y == 1))), int(np.sum((x == 1) & (y == 0)))
    m = b01 + b10
    tail = sum(math.comb(m, i) for i in range(min(b01, b10) + 1))
    # int / int is correctly rounded in Python, even for 2**m far beyond the float range.
    p = min(1.0, 2 * tail / 2**m)
    return {"b01": b01, "b10": b10, "p_value": p}


def length_stats(token_counts: ArrayLike) -> dict[str, float]:
    """mean, p50, p90 (numpy's linear interpolation) and max of [N] response lengths in tokens."""
    x = _as_1d(token_counts, "token_counts")
    if (x < 0).any():
        raise ValueError(f"token_counts holds a negative count {x[x < 0][0]}")
    p50, p90 = np.percentile(x, [50, 90])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "max": float(x.max())}
