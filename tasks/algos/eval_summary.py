"""Evaluation metrics of one (checkpoint, dataset, budget) from its per-sample results, with standard errors.

Input rows are the eval samples table's (prompt_id, decoding 'greedy' | 'sampled', sample_index,
prompt_tokens, num_tokens, status, extracted). A sample is correct when its status is 'ok'. Standard
errors are over problems (tasks/algos/eval_stats.py). pass@k uses the unbiased estimator for every
k <= n samples; avg@k is the paper's GSM8K "pass@1" (mean accuracy over k samples).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from tasks.algos.eval_stats import (
    avg_at_k,
    cost_of_pass,
    length_stats,
    maj_at_k,
    mean_attempt_cost,
    mean_with_se,
    pass_at_k_curve,
)


def _by_problem(rows: Sequence[dict], decoding: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["decoding"] == decoding:
            out[r["prompt_id"]].append(r)
    for v in out.values():
        v.sort(key=lambda r: r["sample_index"])
    return dict(sorted(out.items()))


def per_problem_scores(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """prompt id -> {'greedy': 0/1, 'avg': fraction of sampled answers correct} (the paired-comparison unit)."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for pid, rs in _by_problem(rows, "greedy").items():
        out[pid]["greedy"] = float(rs[0]["status"] == "ok")
    for pid, rs in _by_problem(rows, "sampled").items():
        out[pid]["avg"] = float(np.mean([r["status"] == "ok" for r in rs]))
    return dict(out)


def summarize(rows: Sequence[dict], price_in_per_mtok: float = 0.0, price_out_per_mtok: float = 0.0) -> dict:
    """Every metric of the eval issue for one result set. Keys ending in `_se` are standard errors.

    greedy_accuracy; avg_at_k; pass_at_<k> for k = 1..n; maj_at_<k> for k in {1, 2, 4, ..., n}; truncation
    rate and response-length distribution (over all samples); mean cost per attempt and cost-of-pass
    (from the sampled answers when there are any, else greedy).
    """
    out: dict[str, float] = {}
    greedy = _by_problem(rows, "greedy")
    if greedy:
        out["problems"] = float(len(greedy))
        out["greedy_accuracy"], out["greedy_accuracy_se"] = mean_with_se(
            [rs[0]["status"] == "ok" for rs in greedy.values()]
        )
    sampled = _by_problem(rows, "sampled")
    if sampled:
        n = min(len(rs) for rs in sampled.values())  # every problem gets the same k; guard anyway
        correct = [[r["status"] == "ok" for r in rs[:n]] for rs in sampled.values()]
        out["k"] = float(n)
        out["avg_at_k"], out["avg_at_k_se"] = avg_at_k(np.array(correct, dtype=int))
        for k, (m, se) in pass_at_k_curve([sum(c) for c in correct], n).items():
            out[f"pass_at_{k}"], out[f"pass_at_{k}_se"] = m, se
        answers = [[r["extracted"] or None for r in rs[:n]] for rs in sampled.values()]
        for k in sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n}):
            out[f"maj_at_{k}"], out[f"maj_at_{k}_se"] = maj_at_k(answers, correct, k)
    all_rows = [r for rs in (sampled or greedy).values() for r in rs]
    if all_rows:
        out["truncation_rate"] = float(np.mean([r["status"] == "truncated" for r in all_rows]))
        out.update({f"length_{k}": v for k, v in length_stats([r["num_tokens"] for r in all_rows]).items()})
        cost = mean_attempt_cost(
            [r["prompt_tokens"] for r in all_rows],
            [r["num_tokens"] for r in all_rows],
            price_in_per_mtok,
            price_out_per_mtok,
        )
        accuracy = out["avg_at_k"] if sampled else out["greedy_accuracy"]
        out["cost_per_attempt"] = cost
        out["cost_of_pass"] = cost_of_pass(cost, accuracy)
    return out


def table_columns(k: int, priced: bool) -> list[tuple[str, str]]:
    """(header, summarize key) of the eval table, the k in the headers: greedy; avg@k, pass@k, maj@k when k > 0
    sampled answers were drawn (`avg@4` reads avg_at_k, `pass@4` pass_at_4, `maj@4` maj_at_4); cost-of-pass
    only when a price was given (priced), since with both prices 0 every cost is 0 and says nothing."""
    cols = [("greedy", "greedy_accuracy")]
    if k > 0:
        cols += [(f"avg@{k}", "avg_at_k"), (f"pass@{k}", f"pass_at_{k}"), (f"maj@{k}", f"maj_at_{k}")]
    if priced:
        cols.append(("cost-of-pass", "cost_of_pass"))
    return cols
