"""Which tokens train: SPO's probability mask (spo.md §3.2), the one Python form of the rule.

A token trains iff p_old < rho, p_old = the probability the pre-update policy gave it (exp of its old
log-prob); with rho = None (train.prob_mask_rho null) there is no mask and every token trains. A token
with p_old == rho does not train. The SQL form is storage/sql/prob_mask.sql (rho a bound parameter);
tests/test_prob_mask.py checks the two agree.
"""

from __future__ import annotations


def trains(p_old, rho: float | None):
    """Elementwise p_old < rho, or all True when rho is None.

    p_old: a float, or a numpy array / torch tensor [...] of probabilities; returns a bool of its shape.
    """
    if rho is None:
        # All True in p_old's own type and shape, NaN included (x == x is False only for NaN).
        return (p_old == p_old) | (p_old != p_old)
    return p_old < rho


def trained_count(p_old, rho: float | None) -> int:
    """How many of the tokens of p_old (a numpy array / torch tensor [T]) train: sum of trains(p_old, rho)."""
    return int(trains(p_old, rho).sum())
