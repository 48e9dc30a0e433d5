"""SPO-chain: cutpoints, segment boundaries, segment advantages (spo.md §1.1, §2.1, §3.3).

Token indices are 0-based over the response. A *position* b names the state after response token
b: prefix = prompt + response[0..b]; b = -1 is the prompt alone, b = T-1 the finished response.
  cutpoints    low-probability tokens, p(y_t | s_t) < rho (probabilities at the sampling temperature)
  boundaries   b = i - 1 for every `interval`-th cutpoint i (the 1st, 1+interval-th, ...): the state
               just before the low-probability token, so every segment starts with one
  positions    [-1] + boundaries + [T-1] (deduplicated); segment j spans tokens (P[j], P[j+1]]
  advantage    A_j = V(P[j+1]) - V(P[j]); V(-1) from the prompt's group (or none, as the
               reference when the first token is not a cutpoint), V(b) by Monte Carlo, V(T-1) = reward.
  continuation with spo.mc_train, a Monte Carlo continuation of boundary prefix b also trains: one
               segment over its own tokens, A = reward - V(b) (V(b) the mean of the prefix's N samples).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np


def cutpoints(probs: Sequence[float], rho: float) -> list[int]:
    """Indices of tokens with probability < rho, ascending."""
    return [i for i, p in enumerate(probs) if p < rho]


def boundaries(probs: Sequence[float], rho: float, interval: int) -> list[int]:
    """MC boundary positions: i - 1 for the 1st, (1+interval)-th, ... cutpoint i (spo.md §1.1)."""
    if interval < 1:
        raise ValueError(f"spo.interval={interval} must be >= 1")
    return [i - 1 for i in cutpoints(probs, rho)[::interval]]


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # first token (inclusive)
    end: int  # last token + 1 (exclusive)
    start_position: int  # value position before the segment: start - 1
    end_position: int  # value position after the segment: end - 1
    num_cutpoints: int
    cutpoints: tuple[int, ...] = ()  # response-token indices of the segment's cutpoints, ascending


def segments(probs: Sequence[float], rho: float, interval: int) -> list[Segment]:
    """The segments of one response of length T = len(probs); empty for an empty response."""
    n = len(probs)
    if n == 0:
        return []
    low = cutpoints(probs, rho)
    positions = sorted({-1, *boundaries(probs, rho, interval), n - 1})
    out = []
    for j, (a, b) in enumerate(zip(positions, positions[1:])):
        cut = tuple(i for i in low if a < i <= b)
        out.append(Segment(j, a + 1, b + 1, a, b, len(cut), cut))
    return out


def continuation_segment(probs: Sequence[float], rho: float, reward: float, v_prefix: float) -> Segment | None:
    """A Monte Carlo continuation as one training segment (spo.mc_train), or None if it cannot train.

    The continuation was sampled by the current policy from the boundary prefix, so it is an on-policy
    sample of the sub-problem "finish from here": its tokens get A = reward - V(prefix), the baseline
    being the mean reward of the prefix's N continuations (itself included, as GRPO's group mean).
    None when it has no token, its reward or V(prefix) is not finite, or A = 0 up to float rounding
    (every continuation of the prefix scored alike: no signal, as SPO-tree drops zero-advantage edges).
    `probs` are its sampler probabilities (at the sampling temperature); its cutpoints are the tokens with p < rho.
    """
    n = len(probs)
    if n == 0 or not (np.isfinite(reward) and np.isfinite(v_prefix)):
        return None
    # V(prefix) is a float mean: N equal non-dyadic rewards (0.1 each) average to 0.1 plus rounding, which
    # is still "all agreed". A real advantage is at least |reward step| / N, far above this tolerance.
    if math.isclose(reward, v_prefix, rel_tol=1e-9, abs_tol=1e-12):
        return None
    cut = tuple(cutpoints(probs, rho))
    return Segment(0, 0, n, -1, n - 1, len(cut), cut)


NO_VALUE = (math.nan, 0)  # (V, sample count) where no estimate exists


def finite_mean(vals: list[float]) -> tuple[float, int]:
    """(mean, count) of `vals`; NO_VALUE when empty."""
    return (sum(vals) / len(vals), len(vals)) if vals else NO_VALUE


def value_at(
    position: int, length: int, own: float, prompt: tuple[float, int], key: str | None, values: dict
) -> tuple[float, int]:
    """(V, sample count) at a boundary `position` of a response of `length` tokens (spo.md §2.1): its own
    reward at the last token, the Monte Carlo mean of prefix `key` where one was sampled, else (the prompt,
    position -1) `prompt`: the group's mean reward, or NO_VALUE when V(prompt) is unknown."""
    if position == length - 1:
        return own, 1
    if key is None:
        return prompt
    return values[key]


def agreed(scores: dict[str, list[float]]) -> set[str]:
    """Adaptive N (spo.mc_samples_min): the prefixes whose first continuations all scored the same finite
    reward, so they take it as V and get no more samples. A failed grade (NaN) never agrees.

    The stopping rule looks at the data, so V is biased toward 0 and 1 against a fixed N: by
    (N - k)/N * p(1 - p) * (p^(k-1) - (1-p)^(k-1)) for true value p and k first samples (0.048 at k = 2,
    N = 4, p = 0.8), the price of the saved samples.
    """
    return {k for k, v in scores.items() if v and all(math.isfinite(x) for x in v) and max(v) == min(v)}


def segment_advantages(v_start: np.ndarray, v_end: np.ndarray) -> np.ndarray:
    """A = V(end) - V(start); 0 where the start value is unknown (NaN) - the numpy twin of adv_spo_chain.sql."""
    v_start, v_end = np.asarray(v_start, dtype=float), np.asarray(v_end, dtype=float)
    return np.where(np.isnan(v_start) | np.isnan(v_end), 0.0, v_end - v_start)


def whiten(adv: np.ndarray, weights: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(A - mean) / sqrt(var + eps), mean and population variance weighted by `weights` (trained tokens
    per segment). Segments with weight 0 train no token and are left unchanged."""
    adv, w = np.asarray(adv, dtype=float), np.asarray(weights, dtype=float)
    if w.sum() <= 0:
        return adv.copy()
    mu = (w * adv).sum() / w.sum()
    var = (w * (adv - mu) ** 2).sum() / w.sum()
    return np.where(w > 0, (adv - mu) / np.sqrt(var + eps), adv)


def token_advantages(
    length: int, segs: Sequence[tuple[int, int, float]], keep: Collection[int] | None = None
) -> list[float]:
    """Per-token advantages of a response from (start, end, advantage) segments; uncovered tokens get 0.

    With `keep` (spo.high_prob_advantage=zero: the cutpoints), every other token gets 0, as the reference's
    generator zeroes the advantage of tokens with p >= rho (spo.md §2.1) before the trainer whitens.
    """
    out = [0.0] * length
    for start, end, a in segs:
        out[start:end] = [a] * (end - start)
    if keep is not None:
        out = [a if i in keep else 0.0 for i, a in enumerate(out)]
    return out
