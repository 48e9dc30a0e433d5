"""Response-level advantage estimators: the numpy reference of storage/sql/adv_<name>.sql.

Shapes: `scores` [N] float (NaN or inf = failed/unscorable grade), `groups` [N] hashable prompt ids.
Conventions shared by every estimator here (also stated in each SQL file's header):
  * group statistics use only finite scores; a NaN/inf score gets advantage 0;
  * std is the population std (ddof=0), as in the SPO reference's GRPO; eps is added to the std;
  * a singleton group, or a group whose scores are all equal, gets advantage 0.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import numpy as np


def _group_index(groups: Sequence[Hashable]) -> tuple[np.ndarray, int]:
    _, inv = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return inv, int(inv.max()) + 1 if len(inv) else 0


def _group_stats(scores: np.ndarray, groups: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-response (group mean, group population std, group count of valid scores)."""
    inv, g = _group_index(groups)
    valid = np.isfinite(scores)
    x = np.where(valid, scores, 0.0)
    n = np.bincount(inv, weights=valid.astype(float), minlength=g)
    s = np.bincount(inv, weights=x, minlength=g)
    mean = np.divide(s, n, out=np.zeros(g), where=n > 0)
    dev = np.where(valid, scores - mean[inv], 0.0)
    var = np.divide(np.bincount(inv, weights=dev**2, minlength=g), n, out=np.zeros(g), where=n > 0)
    return mean[inv], np.sqrt(var)[inv], n[inv]


def grpo(scores: np.ndarray, groups: Sequence[Hashable], eps: float = 1e-6) -> np.ndarray:
    """GRPO (Shao et al. 2024): (r_i - mean_g) / (std_g + eps), population std."""
    scores = np.asarray(scores, dtype=float)
    mean, std, n = _group_stats(scores, groups)
    adv = (scores - mean) / (std + eps)
    return np.where(~np.isfinite(scores) | (n < 2), 0.0, adv)


def dr_grpo(scores: np.ndarray, groups: Sequence[Hashable], eps: float = 1e-6) -> np.ndarray:
    """Dr. GRPO (Liu et al. 2025): r_i - mean_g, no std division."""
    scores = np.asarray(scores, dtype=float)
    mean, _, n = _group_stats(scores, groups)
    return np.where(~np.isfinite(scores) | (n < 2), 0.0, scores - mean)


def rloo(scores: np.ndarray, groups: Sequence[Hashable], eps: float = 1e-6) -> np.ndarray:
    """RLOO (Ahmadian et al. 2024): r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean_g)."""
    scores = np.asarray(scores, dtype=float)
    mean, _, n = _group_stats(scores, groups)
    safe = np.where(n < 2, 2.0, n)
    return np.where(~np.isfinite(scores) | (n < 2), 0.0, safe / (safe - 1.0) * (scores - mean))


REGISTRY: dict[str, Callable[..., np.ndarray]] = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}
