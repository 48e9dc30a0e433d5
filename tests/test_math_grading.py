"""MATH grading through math-verify in the killable worker pool."""

import math
import time

import pytest

from tasks.algos.grading import RewardScheme
from tasks.datasets.math import VerifierPool, grade_math_batch

S = RewardScheme()


def slow_when_told(gold: str, pred: str) -> str:
    """A verifier that hangs on one input, standing in for a pathological expression."""
    if pred == "hang":
        time.sleep(600)
    return "ok" if gold == pred else "wrong"


@pytest.fixture(scope="module")
def pool():
    return VerifierPool(workers=2, timeout=20.0)


@pytest.mark.parametrize(
    "response,reference",
    [
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
        ("so the angle is \\boxed{90}", "90^\\circ"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{-3}", "-3"),
        ("\\boxed{(3,\\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("Therefore, the final answer is: $\\boxed{\\sqrt{2}}$. I hope it is correct.", "\\sqrt{2}"),
        ("the answer is 12.", "12"),
    ],
)
def test_equivalent_forms_are_correct(pool, response, reference):
    [g] = grade_math_batch([response], [reference], ["stop"], S, pool)
    assert (g.status, g.score) == ("ok", 1.0), g


@pytest.mark.parametrize(
    "response,reference",
    [
        ("\\boxed{0.51}", "\\frac{1}{2}"),
        ("\\boxed{-3}", "3"),
        ("\\boxed{(3,\\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{x+1}", "x-1"),
    ],
)
def test_near_misses_are_wrong(pool, response, reference):
    [g] = grade_math_batch([response], [reference], ["stop"], S, pool)
    assert g.status == "wrong" and g.score == 0.0


def test_empty_malformed_truncated_and_huge(pool):
    grades = grade_math_batch(
        ["", "\\boxed{", "\\boxed{1/2}", "x" * 200_000 + " \\boxed{7}", "\\boxed{\\text{}}"],
        ["1", "1", "\\frac{1}{2}", "7", "2"],
        ["stop", "stop", "length", "stop", "stop"],
        RewardScheme(truncated=-1.0),
        pool,
    )
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
    import tasks.datasets.math as mg

    monkeypatch.setattr(mg.VerifierPool, "run", lambda self, pairs: ["timeout"] * len(pairs))
    [g] = grade_math_batch(["\\boxed{1}"], ["1"], ["stop"], S)
    assert g.status == "timeout" and math.isnan(g.score)


# ---- issue 27 item 2: spacing, invisible characters, power towers, deep nesting (regressions)


def never_called(gold: str, pred: str) -> str:
    raise AssertionError(f"math-verify was asked about {pred[:40]!r}")


def test_math_latex_thin_space_in_a_number_is_ok(pool):
    [g] = grade_math_batch(["\\boxed{1\\,000}"], ["1000"], ["stop"], S, pool)
    assert (g.status, g.score, g.extracted) == ("ok", 1.0, "1000")


def test_math_direction_mark_before_the_answer_is_ok(pool):
    [g] = grade_math_batch(["\\boxed{\u200f42}"], ["42"], ["stop"], S, pool)
    assert (g.status, g.score) == ("ok", 1.0)


@pytest.mark.parametrize(
    "response,reference,expected",
    [
        ("\\boxed{1\\;000\\;000}", "1000000", "ok"),
        ("\\boxed{1~000}", "1000", "ok"),
        ("\\boxed{1\\ 000}", "1000", "ok"),
        ("\\boxed{1\u2009000}", "1000", "ok"),  # a thin space character
        ("\\boxed{\\frac{\\,1}{2\\quad}}", "\\frac{1}{2}", "ok"),
        ("\\boxed{\u22125}", "-5", "ok"),
        ("\\boxed{\u22125}", "5", "wrong"),
        ("\\boxed{1\\,000}", "100", "wrong"),
        ("\\boxed{4\u200b2}", "42", "ok"),
        ("so we get 1/2", "2", "wrong"),  # the last-number fallback reads 1/2 whole, not its 2
    ],
)
def test_math_spacing_and_invisible_characters(pool, response, reference, expected):
    [g] = grade_math_batch([response], [reference], ["stop"], S, pool)
    assert g.status == expected, g


def test_math_power_tower_equal_to_its_reference_is_never_wrong(pool):
    grades = grade_math_batch(
        ["\\boxed{2^{2^{2^{2^{2}}}}}", "\\boxed{4^{32768}}", "\\boxed{2^{2^{2^{2^{2}}}}}"],
        ["2^{65536}", "2^{65536}", "2^{65535}"],
        ["stop"] * 3,
        S,
        pool,
    )
    assert [g.status for g in grades][:2] in (
        ["ok", "ok"],
        ["ok", "timeout"],
        ["timeout", "ok"],
        ["timeout", "timeout"],
    )
    assert grades[0].status == "ok"  # exact integer arithmetic decides it in well under a second
    assert grades[2].status == "wrong"  # and an unequal one is still wrong


def frac_chain(depth: int) -> str:
    """1/(1/(...1/2)): 2 when depth is even."""
    return "\\frac{1}{" * depth + "2" + "}" * depth


def test_math_frac_chain_200_deep_is_parse_error_whatever_the_load():
    # math-verify reads this chain as 1/2 (a silent `wrong`) or times out, depending on load; the
    # bound answers first, so the verifier is never asked and the grade is the same on any machine.
    for timeout in (0.001, 60.0):
        [g] = grade_math_batch(
            ["\\boxed{" + frac_chain(200) + "}"],
            ["2"],
            ["stop"],
            S,
            VerifierPool(workers=1, timeout=timeout, func=never_called),
        )
        assert (g.status, g.score) == ("parse_error", 0.0)


def test_math_frac_chain_within_the_bound_is_graded_by_value(pool):
    grades = grade_math_batch(
        ["\\boxed{" + frac_chain(10) + "}", "\\boxed{" + frac_chain(9) + "}"], ["2", "2"], ["stop"] * 2, S, pool
    )
    assert [g.status for g in grades] == ["ok", "wrong"]


def test_math_reference_past_the_bounds_is_bad_input():
    with pytest.raises(
        ValueError,
        match=r"reference answer .* is too large to grade: brackets nested 30 deep, "
        r"over MAX_NESTING=20",
    ):
        grade_math_batch(["\\boxed{2}"], [frac_chain(30)], ["stop"], S, VerifierPool(workers=1, func=never_called))


def test_math_answer_too_long_is_parse_error():
    [g] = grade_math_batch(
        ["\\boxed{" + "1+" * 1500 + "1}"], ["3001"], ["stop"], S, VerifierPool(workers=1, func=never_called)
    )
    assert g.status == "parse_error"


def test_exact_compare_decides_only_exact_numbers():
    from math_verify import parse

    from tasks.datasets.math import exact_compare

    def p(latex: str):
        return parse("\\boxed{" + latex + "}")[0]

    assert exact_compare(p("2^{65536}"), p("2^{2^{2^{2^{2}}}}")) == "ok"  # 2^(2^16), exactly
    assert exact_compare(p("2^{65536}"), p("2^{65536}+1")) == "wrong"
    assert exact_compare(p("2^{-3}"), p("\\frac{1}{8}")) == "ok"
    assert exact_compare(p("2^{65536}"), p("2^{2^{2^{2^{2^{2}}}}}")) == "timeout"  # 2^(2^65536): past MAX_EXACT_BITS
    assert exact_compare(p("x"), p("2^{2^{2^{2^{2^{2}}}}}")) is None  # a symbol: math-verify's verdict stands
    assert exact_compare(p("\\sqrt{2}"), p("2^{1/2}")) is None  # not an integer power
