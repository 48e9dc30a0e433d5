"""The prompt schedule (tasks/algos/seeding.py::iteration_prompts): distinct prompts in every iteration,
epoch coverage, and the same draws as the original stream wherever an iteration stays inside one epoch."""

import random
from collections import Counter

import pytest

from tasks.algos.seeding import derive_seed, iteration_prompts


def old_iteration_prompts(n_prompts: int, per_iteration: int, iteration: int, seed: int) -> list[int]:
    """The schedule before issue 28, kept verbatim: position p of the stream is epoch p // n's permutation
    at p % n. It could meet a prompt twice when an iteration straddled an epoch boundary."""
    start = (iteration - 1) * per_iteration
    out: list[int] = []
    while len(out) < min(per_iteration, n_prompts):
        epoch, offset = divmod(start + len(out), n_prompts)
        perm = list(range(n_prompts))
        random.Random(derive_seed("epoch", seed, epoch)).shuffle(perm)
        out.append(perm[offset])
    return out


def straddles(n: int, b: int, it: int) -> bool:
    start = (it - 1) * b
    return start // n != (start + b - 1) // n


SIZES = [(n, b) for n in range(1, 13) for b in range(1, n + 1)]
ITERATIONS = range(1, 41)


def test_issue_example_has_no_duplicate():
    assert old_iteration_prompts(100, 7, 58, 1) == [6, 72, 4, 37, 30, 82, 6]  # the bug, reproduced
    got = iteration_prompts(100, 7, 58, 1)
    assert len(set(got)) == 7 and got[:6] == [6, 72, 4, 37, 30, 82]  # epoch 3's tail is kept


@pytest.mark.parametrize("seed", [0, 1])
def test_every_iteration_draws_distinct_prompts_exhaustively(seed):
    for n, b in SIZES:
        for it in ITERATIONS:
            got = iteration_prompts(n, b, it, seed)
            assert len(got) == b and len(set(got)) == b and all(0 <= i < n for i in got), (n, b, it)


@pytest.mark.parametrize("seed", [0, 1])
def test_draws_are_unchanged_inside_an_epoch(seed):
    changed = 0
    for n, b in SIZES:
        for it in ITERATIONS:
            old, new = old_iteration_prompts(n, b, it, seed), iteration_prompts(n, b, it, seed)
            if not straddles(n, b, it):
                assert new == old, (n, b, it)
            else:
                b_tail = n - ((it - 1) * b) % n
                assert new[:b_tail] == old[:b_tail], (n, b, it)  # the tail of the old epoch is kept as is
                changed += new != old
    assert changed > 0  # the exhaustive sizes do meet straddles where the old draw had a duplicate


@pytest.mark.parametrize("seed", [0, 1])
def test_each_epoch_is_covered(seed):
    """Count the prompts drawn at each epoch's stream positions [e n, (e+1) n): none more than twice, and the
    iterations that touch those positions draw every prompt (what a straddle's fill skips, it drew itself)."""
    for n, b in SIZES:
        draws = [iteration_prompts(n, b, it, seed) for it in ITERATIONS]
        stream = [i for d in draws for i in d]
        for e in range(len(stream) // n):
            counts = Counter(stream[e * n : (e + 1) * n])
            assert max(counts.values()) <= 2, (n, b, e)
            touching = {i for it, d in enumerate(draws) if it * b < (e + 1) * n and (it + 1) * b > e * n for i in d}
            assert touching == set(range(n)), (n, b, e)
        assert set(stream[:n]) == set(range(n))  # the first epoch is exactly one permutation


def test_pure_function_of_its_arguments():
    assert iteration_prompts(100, 7, 58, 1) == iteration_prompts(100, 7, 58, 1)
    assert iteration_prompts(100, 7, 58, 1) != iteration_prompts(100, 7, 58, 2)
    # Order of calls does not matter (no state): a resumed run at iteration 58 draws what a full run drew.
    full = [iteration_prompts(30, 8, it, 3) for it in range(1, 20)]
    assert [iteration_prompts(30, 8, it, 3) for it in reversed(range(1, 20))][::-1] == full


def test_more_prompts_per_iteration_than_prompts_is_an_error():
    with pytest.raises(ValueError, match=r"^rollout\.prompts_per_iteration=8 is more than the 5 training prompts"):
        iteration_prompts(5, 8, 1, seed=0)
    assert sorted(iteration_prompts(5, 5, 3, seed=0)) == [0, 1, 2, 3, 4]  # b = n: every prompt, every iteration
    with pytest.raises(ValueError, match="no training prompts"):
        iteration_prompts(0, 1, 1, seed=0)
    with pytest.raises(ValueError, match="iteration=0"):
        iteration_prompts(5, 2, 0, seed=0)
