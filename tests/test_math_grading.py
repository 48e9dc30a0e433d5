"""MATH grading through math-verify in the killable worker pool."""
import math
import time

import pytest

from tasks.algos.grading import RewardScheme
from tasks.math_grading import VerifierPool, grade_math_batch

S = RewardScheme()


def slow_when_told(gold: str, pred: str) -> str:
    """A verifier that hangs on one input, standing in for a pathological expression."""
    if pred == "hang":
        time.sleep(600)
    return "ok" if gold == pred else "wrong"


@pytest.fixture(scope="module")
def pool():
    return VerifierPool(workers=2, timeout=20.0)


@pytest.mark.parametrize("response,reference", [
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
    ("so the angle is \\boxed{90}", "90^\\circ"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{-3}", "-3"),
    ("\\boxed{(3,\\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("Therefore, the final answer is: $\\boxed{\\sqrt{2}}$. I hope it is correct.", "\\sqrt{2}"),
    ("the answer is 12.", "12"),
])
def test_equivalent_forms_are_correct(pool, response, reference):
    [g] = grade_math_batch([response], [reference], ["stop"], S, pool)
    assert (g.status, g.score) == ("ok", 1.0), g


@pytest.mark.parametrize("response,reference", [
    ("\\boxed{0.51}", "\\frac{1}{2}"),
    ("\\boxed{-3}", "3"),
    ("\\boxed{(3,\\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{x+1}", "x-1"),
])
def test_near_misses_are_wrong(pool, response, reference):
    [g] = grade_math_batch([response], [reference], ["stop"], S, pool)
    assert g.status == "wrong" and g.score == 0.0


def test_empty_malformed_truncated_and_huge(pool):
    grades = grade_math_batch(
        ["", "\\boxed{", "\\boxed{1/2}", "x" * 200_000 + " \\boxed{7}", "\\boxed{\\text{}}"],
        ["1", "1", "\\frac{1}{2}", "7", "2"], ["stop", "stop", "length", "stop", "stop"], RewardScheme(truncated=-1.0),
        pool)
    assert [g.status for g in grades] == ["no_answer", "no_answer", "truncated", "ok", "parse_error"]
    assert grades[2].score == -1.0


def test_a_hanging_verifier_times_out_and_the_rest_still_grade():
    pool = VerifierPool(workers=2, timeout=3.0, func=slow_when_told)
    t0 = time.perf_counter()
    out = pool.run([("1", "1"), ("1", "hang"), ("2", "3"), ("4", "4"), ("5", "5")])
    assert out == ["ok", "timeout", "wrong", "ok", "ok"]
    assert time.perf_counter() - t0 < 60


def slow_start() -> None:
    time.sleep(4.0)  # a worker that takes longer to start than the per-item timeout


def test_slow_worker_start_does_not_count_against_the_item_timeout():
    pool = VerifierPool(workers=1, timeout=1.0, func=slow_when_told, initializer=slow_start)
    assert pool.run([("1", "1"), ("2", "3")]) == ["ok", "wrong"]


def test_timeout_grade_is_nan_not_zero(monkeypatch):
    import tasks.math_grading as mg

    monkeypatch.setattr(mg.VerifierPool, "run", lambda self, pairs: ["timeout"] * len(pairs))
    [g] = grade_math_batch(["\\boxed{1}"], ["1"], ["stop"], S)
    assert g.status == "timeout" and math.isnan(g.score)
