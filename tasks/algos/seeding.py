"""Deterministic seeds and prompt schedules (house rule 7): derived with hashlib, never from global RNG state."""
from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, e.g. derive_seed(run_id, iteration, prompt_id, sample_index)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def iteration_prompts(n_prompts: int, per_iteration: int, iteration: int, seed: int) -> list[int]:
    """Indices of the prompts used by `iteration` (1-based): epochs of seeded permutations, no repeats
    within an epoch. Depends only on its arguments, so a resumed run picks the same prompts."""
    if n_prompts <= 0:
        raise ValueError("no training prompts")
    start = (iteration - 1) * per_iteration
    out: list[int] = []
    while len(out) < min(per_iteration, n_prompts):
        epoch, offset = divmod(start + len(out), n_prompts)
        perm = list(range(n_prompts))
        random.Random(derive_seed("epoch", seed, epoch)).shuffle(perm)
        out.append(perm[offset])
    return out
