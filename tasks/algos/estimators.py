"""Response-level advantage estimators: the numpy reference of storage/sql/adv_<name>.sql.

Shapes: `scores` [N] float (NaN or inf = failed/unscorable grade), `groups` [N] hashable prompt ids,
`lengths` [N] completion token counts (REINFORCE++ whitening), `keys` [N] int sample seeds (the
deterministic order in which RED-Drop drops negatives). Formulas: rl_algorithms.md §A.3, §A.4, §B.1.
Conventions shared by every estimator here (also stated in each SQL file's header):
  * group statistics use only finite scores; a NaN/inf score gets advantage 0;
  * std is the population std (ddof=0), as in the SPO reference's GRPO; eps is added to the std;
  * a group with fewer than 2 finite scores gets advantage 0 (no baseline can be formed).
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence

import numpy as np

from tasks.algos.registry import twin


def _group_index(groups: Sequence[Hashable]) -> tuple[np.ndarray, int]:
    _, inv = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return inv, int(inv.max()) + 1 if len(inv) else 0


def _group_stats(scores: np.ndarray, groups: Sequence[Hashable], keep: np.ndarray | None = None):
    """Per-response (group mean, group population std, group count) over finite (and kept) scores."""
    inv, g = _group_index(groups)
    valid = np.isfinite(scores) if keep is None else np.isfinite(scores) & keep
    x = np.where(valid, scores, 0.0)
    n = np.bincount(inv, weights=valid.astype(float), minlength=g)
    s = np.bincount(inv, weights=x, minlength=g)
    mean = np.divide(s, n, out=np.zeros(g), where=n > 0)
    dev = np.where(valid, scores - mean[inv], 0.0)
    var = np.divide(np.bincount(inv, weights=dev**2, minlength=g), n, out=np.zeros(g), where=n > 0)
    return mean[inv], np.sqrt(var)[inv], n[inv]


def _finish(scores: np.ndarray, n: np.ndarray, adv: np.ndarray) -> np.ndarray:
    return np.where(~np.isfinite(scores) | (n < 2), 0.0, adv)


def grpo(scores, groups, eps: float = 1e-6) -> np.ndarray:
    """GRPO (Shao et al. 2024): (r_i - mean_g) / (std_g + eps), population std."""
    scores = np.asarray(scores, dtype=float)
    mean, std, n = _group_stats(scores, groups)
    return _finish(scores, n, (scores - mean) / (std + eps))


def dr_grpo(scores, groups) -> np.ndarray:
    """Dr. GRPO (Liu et al. 2025): r_i - mean_g, no std division."""
    scores = np.asarray(scores, dtype=float)
    mean, _, n = _group_stats(scores, groups)
    return _finish(scores, n, scores - mean)


def rloo(scores, groups) -> np.ndarray:
    """RLOO (Ahmadian et al. 2024): r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean_g)."""
    scores = np.asarray(scores, dtype=float)
    mean, _, n = _group_stats(scores, groups)
    safe = np.where(n < 2, 2.0, n)
    return _finish(scores, n, safe / (safe - 1.0) * (scores - mean))


def reinforce_pp_baseline(scores, groups, lengths, whiten_eps: float = 1e-8) -> np.ndarray:
    """REINFORCE++-baseline (OpenRLHF): x_i = r_i - mean_g, then whitened over every token of the batch.

    With an outcome reward and gamma = 1 each token of response i carries x_i, so the token-level
    mean and population variance are length-weighted: mu = sum T_i x_i / sum T_i, A_i = (x_i - mu) / sqrt(var + eps).
    Responses with advantage 0 by the shared conventions (failed grade, < 2 finite scores) are left
    out of the whitening statistics and stay 0.
    """
    scores = np.asarray(scores, dtype=float)
    mean, _, n = _group_stats(scores, groups)
    live = np.isfinite(scores) & (n >= 2)
    w = np.where(live, np.asarray(lengths, dtype=float), 0.0)
    if w.sum() <= 0:
        return np.zeros_like(scores)
    x = np.where(live, scores - mean, 0.0)
    mu = (w * x).sum() / w.sum()
    var = (w * (x - mu) ** 2).sum() / w.sum()
    return np.where(live, (x - mu) / np.sqrt(var + whiten_eps), 0.0)


def rec(scores, groups, keys, eps: float = 1e-6, rec_std_normalize: bool = False, rec_drop: str = "none") -> np.ndarray:
    """REC advantages (Yao et al. 2025, Trinity `rec`): r_i - mean_kept, optionally / (std_kept + eps).

    RED-Drop (`rec_drop='balance'`): negatives are r_i < group mean - 1e-9 * max(1, |mean|) (a stated
    tolerance for the rounded mean, RED_DROP_TOL), positives the other finite scores; when a group has more negatives
    than positives, the surplus negatives with the smallest `keys` are dropped (advantage 0) and the
    statistics are recomputed on the kept responses.
    """
    scores = np.asarray(scores, dtype=float)
    keep = np.isfinite(scores)
    if rec_drop == "balance":
        keep = keep & ~_balance_drop(scores, groups, np.asarray(keys))
    elif rec_drop != "none":
        raise ValueError(f"advantage.rec_drop={rec_drop!r} is not one of none, balance")
    mean, std, n = _group_stats(scores, groups, keep)
    adv = scores - mean
    if rec_std_normalize:
        adv = adv / (std + eps)
    return np.where(keep & (n >= 2), adv, 0.0)


# RED-Drop's sign test: r counts as negative only when r < mean - RED_DROP_TOL * max(1, |mean|). The group
# mean is rounded (mean([0.1, 0.2, 0.3]) = 0.20000000000000004), so an exact float comparison would call
# the middle response negative. The same rule and constant are in storage/sql/adv_rec.sql.
RED_DROP_TOL = 1e-9


def _balance_drop(scores: np.ndarray, groups, keys: np.ndarray) -> np.ndarray:
    mean, _, _ = _group_stats(scores, groups)
    valid = np.isfinite(scores)
    neg = valid & (scores < mean - RED_DROP_TOL * np.maximum(1.0, np.abs(mean)))
    pos = valid & ~neg
    inv, g = _group_index(groups)
    surplus = np.bincount(inv, weights=neg, minlength=g) - np.bincount(inv, weights=pos, minlength=g)
    drop = np.zeros(len(scores), dtype=bool)
    for gi in np.flatnonzero(surplus > 0):
        idx = np.flatnonzero((inv == gi) & neg)
        drop[idx[np.argsort(keys[idx], kind="stable")][: int(surplus[gi])]] = True
    return drop


def opmd(scores, groups, opmd_baseline: str = "mean", opmd_tau: float = 1.0) -> np.ndarray:
    """OPMD (Kimi k1.5; Trinity `opmd`): r_i - b, b = group mean or tau * log(mean_j exp(r_j / tau)).

    The log-avg-exp is computed stably (see _log_avg_exp): finite for any tau > 0, and exactly r for a
    group of equal scores r, so such a group gets advantage 0.
    """
    scores = np.asarray(scores, dtype=float)
    mean, _, n = _group_stats(scores, groups)
    if opmd_baseline == "mean":
        return _finish(scores, n, scores - mean)
    if opmd_baseline != "logavgexp":
        raise ValueError(f"advantage.opmd_baseline={opmd_baseline!r} is not one of mean, logavgexp")
    return _finish(scores, n, scores - _log_avg_exp(scores, groups, opmd_tau))


def _log_avg_exp(scores: np.ndarray, groups, tau: float) -> np.ndarray:
    """Per-response tau * log(mean_j exp(r_j / tau)) over the group's finite scores, shape [N].

    Stable form: b = m + tau * log(mean_j exp((r_j - m) / tau)) with m = the group's max finite score, so
    no exp overflows (the largest term is exp(0) = 1) and an all-equal group gets b = m exactly.
    Responses of a group without a finite score get NaN (they are zeroed by the conventions anyway).
    """
    inv, g = _group_index(groups)
    valid = np.isfinite(scores)
    m = np.full(g, -np.inf)
    np.maximum.at(m, inv[valid], scores[valid])
    shifted = np.where(valid, (np.where(valid, scores, 0.0) - m[inv]) / tau, -np.inf)
    total = np.bincount(inv, weights=np.exp(shifted), minlength=g)
    count = np.bincount(inv, weights=valid.astype(float), minlength=g)
    with np.errstate(divide="ignore", invalid="ignore"):
        base = m + tau * np.log(total / count)
    return base[inv]


def asymre(scores, groups, asymre_shift: float = -0.1) -> np.ndarray:
    """AsymRE (Arnal et al. 2025; Trinity `asymre`): r_i - (mean_g + shift); shift < 0 leans positive."""
    scores = np.asarray(scores, dtype=float)
    mean, _, n = _group_stats(scores, groups)
    return _finish(scores, n, scores - (mean + asymre_shift))


def compute(name: str, scores, groups, params: dict, lengths=None, keys=None) -> np.ndarray:
    """Dispatch a response-family estimator by name (its registered twin, tasks/algos/registry.py), passing
    only the parameters (and columns) it takes."""
    fn = twin(name)
    wanted = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in params.items() if k in wanted}
    if "lengths" in wanted:
        kwargs["lengths"] = lengths
    if "keys" in wanted:
        kwargs["keys"] = keys
    return fn(scores, groups, **kwargs)
