"""Batch statistics reported per iteration (pure numpy)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from tasks.algos.grading import STATUSES


def grade_metrics(scores: Sequence[float], statuses: Sequence[str]) -> dict[str, float]:
    n = max(1, len(statuses))
    counts = Counter(statuses)
    out = {"reward_mean": float(np.nanmean(scores)) if len(scores) else 0.0, "accuracy": counts["ok"] / n}
    out.update({f"frac_{s}": counts[s] / n for s in STATUSES if s != "ok"})
    return out


def step_metrics(statuses: Sequence[str], steps_ok: Sequence[bool]) -> dict[str, float]:
    """frac_ok_wrong_steps: share of correct answers (status ok) whose worked steps are wrong (arith only)."""
    ok = [good for status, good in zip(statuses, steps_ok) if status == "ok"]
    return {"frac_ok_wrong_steps": sum(not good for good in ok) / max(1, len(ok))}


def group_metrics(scores: Sequence[float], groups: Sequence[Hashable]) -> dict[str, float]:
    """frac_zero_std_groups: share of prompts whose samples all scored the same (no learning signal)."""
    by: dict[Hashable, list[float]] = {}
    for s, g in zip(scores, groups):
        by.setdefault(g, []).append(s)
    zero = sum(1 for v in by.values() if np.nanstd(v) == 0)
    solved = sum(1 for v in by.values() if np.nanmax(v) > 0)
    return {
        "groups": len(by),
        "frac_zero_std_groups": zero / max(1, len(by)),
        "frac_groups_any_correct": solved / max(1, len(by)),
    }


def advantage_metrics(adv: Sequence[float], bins: int = 10) -> dict[str, float]:
    a = np.asarray(adv, dtype=float)
    if a.size == 0:
        return {"adv_mean": 0.0, "adv_std": 0.0}
    out = {
        "adv_mean": float(a.mean()),
        "adv_std": float(a.std()),
        "adv_min": float(a.min()),
        "adv_max": float(a.max()),
        "frac_adv_zero": float(np.mean(a == 0)),
    }
    lo, hi = float(a.min()), float(a.max())
    if hi > lo:
        # Equal-width bins over [adv_min, adv_max]; bin i covers adv_min + i * (adv_max - adv_min) / bins.
        counts, _ = np.histogram(a, bins=bins, range=(lo, hi))
        out.update({f"adv_hist_{i:02d}": float(c) for i, c in enumerate(counts)})
    return out
