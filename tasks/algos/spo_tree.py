"""SPO-tree (Guo et al. 2025, "Segment Policy Optimization", spo.md §1.2, §2.2): tree shape, node values,
edge advantages, and the replay buffer's selection rule. Pure numpy/python: the numpy twin of
storage/sql/adv_spo_tree.sql and storage/sql/replay_take.sql.

A tree per question: the root is the prompt; level d gives every open node `branching[d]` children of at
most `segment_tokens` new tokens (the last level runs to the response budget). A child that stops early
is a leaf; a child that fills its budget is expanded at the next level unless no room is left, in which
case it is a truncated leaf (scored with the truncation penalty, never graded: spo.md §8 item 6).

Nodes are given as flat arrays in any order: `parent[i]` is the index of node i's parent (-1 for a
root), `score[i]` the reward of a leaf (NaN for internal nodes and for leaves without a finite grade).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

# |V(node) - V(parent)| at or below this counts as zero: the edge's advantage is exactly 0 (and the
# "drop zero-advantage edges" rule drops it), so values computed as the same mean in a different order
# never keep a 1e-17 edge. Decided before any division: with tree.sibling_std a 5.6e-17 difference over
# a sibling std of 0 would otherwise become 5.6e-9 and pass. adv_spo_tree.sql uses the same 1e-9.
ZERO_ADVANTAGE = 1e-9


def child_budget(depth: int, levels: int, segment_tokens: int, response_room: int, context_room: int) -> int:
    """Tokens a child at tree level `depth` (0 = children of the root) may generate.

    Interior levels get `segment_tokens`, the last level the rest of the response budget; both are
    capped by what the context still holds (spo.md §1.2: min(M, context - len(prefix))).
    """
    cap = response_room if depth == levels - 1 else min(segment_tokens, response_room)
    return max(0, min(cap, context_room))


def expands(
    depth: int,
    levels: int,
    finish_reason: str,
    generated: int,
    budget: int,
    segment_tokens: int,
    response_room_after: int,
    context_room_after: int,
) -> bool:
    """Does a child get children of its own at the next level?

    Only when it filled a full interior segment (finish 'length' with `segment_tokens` tokens) and both
    the response budget and the context still have room. Anything else is a leaf: stopped early
    (finish 'stop'), or cut by a budget it could not extend (a truncated leaf).
    """
    return (
        depth < levels - 1
        and finish_reason == "length"
        and generated == budget == segment_tokens
        and response_room_after > 0
        and context_room_after > 0
    )


def _children(parent: Sequence[int]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(parent):
        if p >= 0:
            kids[p].append(i)
    return kids


def node_values(parent: Sequence[int], score: Sequence[float], mode: str = "leaves") -> np.ndarray:
    """V(node) for every node, shape [n_nodes]; NaN where no leaf below has a finite score.

    mode 'leaves': the mean reward of all leaves below the node (an unbiased Monte Carlo value of its
    prefix; the improved default). mode 'children': the mean of the children's values, recursively
    (the reference's rule: an early leaf weighs as much as a whole subtree). Children without a value
    are left out of their parent's mean.
    """
    if mode not in ("leaves", "children"):
        raise ValueError(f"tree value mode {mode!r}; known: leaves, children")
    n = len(parent)
    kids = _children(parent)
    score = np.asarray(score, dtype=float)
    value = np.full(n, np.nan)
    total = np.zeros(n)  # leaves mode: sum and count of finite leaf scores below
    count = np.zeros(n)
    order = _bottom_up(parent)
    for i in order:
        if i not in kids:
            if np.isfinite(score[i]):
                value[i], total[i], count[i] = score[i], score[i], 1.0
            continue
        if mode == "leaves":
            total[i] = sum(total[c] for c in kids[i])
            count[i] = sum(count[c] for c in kids[i])
            value[i] = total[i] / count[i] if count[i] else np.nan
        else:
            vals = [value[c] for c in kids[i] if np.isfinite(value[c])]
            value[i] = float(np.mean(vals)) if vals else np.nan
    return value


def _bottom_up(parent: Sequence[int]) -> list[int]:
    """Node indices ordered deepest first, so every child comes before its parent."""
    depth = [0] * len(parent)
    for i in range(len(parent)):
        j, d = i, 0
        while parent[j] >= 0:
            j, d = parent[j], d + 1
        depth[i] = d
    return sorted(range(len(parent)), key=lambda i: -depth[i])


def edge_advantages(
    parent: Sequence[int], value: Sequence[float], sibling_std: bool = False, eps: float = 1e-8
) -> np.ndarray:
    """A(n) = V(n) - V(parent(n)), optionally / (population std of n's siblings' values (n included) + eps).

    Shape [n_nodes]; NaN for roots and wherever a value is unknown (spo.md §2.2, adv_method rloo / grpo).
    A difference |V(n) - V(parent)| <= ZERO_ADVANTAGE gives exactly 0, before any division.
    """
    value = np.asarray(value, dtype=float)
    adv = np.full(len(parent), np.nan)
    kids = _children(parent)
    for p, cs in kids.items():
        vals = value[cs]
        spread = float(np.std(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else np.nan
        for c in cs:
            a = value[c] - value[p]
            if abs(a) <= ZERO_ADVANTAGE:
                adv[c] = 0.0
            else:
                adv[c] = a / (spread + eps) if sibling_std else a
    return adv


def kept_edges(parent: Sequence[int], adv: Sequence[float], drop_zero: bool = True) -> np.ndarray:
    """Which nodes become training samples: non-roots with a finite advantage, non-zero if `drop_zero`.

    `adv` comes from edge_advantages, which has already made every near-zero difference exactly 0.
    """
    a = np.asarray(adv, dtype=float)
    keep = (np.asarray(parent) >= 0) & np.isfinite(a)
    return keep & (a != 0.0) if drop_zero else keep


def replay_select(
    added: Sequence[int],
    question: Sequence[str],
    priority: Sequence[str],
    iteration: int,
    max_age: int,
    per_question: int,
    per_iteration: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The replay buffer's rule for one iteration (spo.md §2.2, App. D). Returns (live, taken) masks.

    An edge added at iteration a has age `iteration - a`; it is live while age < max_age. Of the live
    edges, each question offers its `per_question` lowest-priority ones (priority = a per-iteration
    random key); of those, the `per_iteration` lowest-priority are taken (all when None). Taken edges
    leave the buffer; live edges not taken stay for the next iteration.
    """
    added = np.asarray(added)
    live = iteration - added < max_age
    taken = np.zeros(len(added), dtype=bool)
    by_q: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(live):
        by_q[question[i]].append(int(i))
    offered = [i for ids in by_q.values() for i in sorted(ids, key=lambda i: priority[i])[:per_question]]
    offered.sort(key=lambda i: priority[i])
    taken[offered if per_iteration is None else offered[:per_iteration]] = True
    return live, taken
