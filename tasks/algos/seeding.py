"""Deterministic seeds and prompt schedules (house rule 7): derived with hashlib, never from global RNG state."""

from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, e.g. derive_seed(run_id, iteration, prompt_id, sample_index)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def iteration_prompts(n_prompts: int, per_iteration: int, iteration: int, seed: int) -> list[int]:
    """Indices of the `per_iteration` distinct prompts used by `iteration` (1-based).

    The prompts form a stream of epochs, each a seeded permutation of range(n_prompts); iteration i reads
    positions [(i-1) * b, i * b) of it (b = per_iteration). An iteration that straddles an epoch boundary
    takes the tail of epoch e, then the first prompts of epoch e+1's permutation that the tail does not
    already hold, so its prompts stay distinct (a plain read could meet a prompt twice, once in each
    epoch). Every other iteration reads the stream exactly as before. The next iteration reads on from its
    own start position as usual; a prompt can then come up again one iteration later, never twice in one.

    Coverage: the iterations that touch an epoch's positions draw every prompt at least once, and an
    epoch's positions draw none more than twice. Depends only on its arguments, so a resumed run picks the
    same prompts. Shape: a list of b indices in [0, n_prompts).
    """
    if n_prompts <= 0:
        raise ValueError("no training prompts")
    if per_iteration > n_prompts:
        raise ValueError(
            f"rollout.prompts_per_iteration={per_iteration} is more than the {n_prompts} training "
            f"prompts: an iteration's prompts are distinct, so lower it to at most {n_prompts}"
        )
    if per_iteration < 1 or iteration < 1:
        raise ValueError(f"iteration={iteration}, per_iteration={per_iteration}: both start at 1")
    epoch, offset = divmod((iteration - 1) * per_iteration, n_prompts)
    tail = epoch_permutation(n_prompts, epoch, seed)[offset : offset + per_iteration]
    if len(tail) == per_iteration:
        return tail
    drawn = set(tail)
    fill = [i for i in epoch_permutation(n_prompts, epoch + 1, seed) if i not in drawn]
    return tail + fill[: per_iteration - len(tail)]


def epoch_permutation(n_prompts: int, epoch: int, seed: int) -> list[int]:
    """The seeded order of range(n_prompts) for one epoch (0-based) of the prompt stream."""
    perm = list(range(n_prompts))
    random.Random(derive_seed("epoch", seed, epoch)).shuffle(perm)
    return perm
