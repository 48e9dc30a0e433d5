import pytest

from tasks.algos.grading import RewardScheme, extract_numeric_answer, grade_numeric, parse_number
from tasks.algos.math_answer import extract_math_answer, last_boxed

S = RewardScheme()


@pytest.mark.parametrize("response,reference,status", [
    ("3+5=8\n#### 8", "8", "ok"),
    ("#### 1,234", "1234", "ok"),
    ("#### $18.00", "18", "ok"),
    ("#### -7", "-7", "ok"),
    ("#### 7", "-7", "wrong"),
    ("The answer is 42.", "42", "ok"),
    ("so we get 12 apples and then 13", "13", "ok"),
    ("no digits here", "3", "no_answer"),
    ("#### ", "3", "no_answer"),
    ("#### dogs", "3", "parse_error"),
    ("", "3", "no_answer"),
])
def test_numeric_grades(response, reference, status):
    assert grade_numeric(response, reference, "stop", S).status == status


def test_truncated_scores_penalty_even_when_correct():
    g = grade_numeric("#### 8", "8", "length", RewardScheme(truncated=-0.5))
    assert (g.score, g.status) == (-0.5, "truncated")


def test_multiple_answer_guard():
    text = "#### 3\n#### 8"
    assert grade_numeric(text, "8", "stop", S).score == 1.0
    g = grade_numeric(text, "8", "stop", RewardScheme(multiple_answers=-2.0))
    assert g.score == -2.0


def test_last_hash_answer_wins_and_units_stripped():
    assert extract_numeric_answer("#### 3\nmore\n#### 5 dollars") == "5 dollars"
    assert parse_number("5 dollars") == parse_number("5")


def test_huge_input_is_fine():
    assert grade_numeric("1+" * 50_000 + "\n#### 9", "9", "stop", S).status == "ok"


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed 5 is it", "5"),
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed{unbalanced", None),
    ("nothing", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_math_extraction_priority():
    assert extract_math_answer("Therefore, the final answer is: $\\boxed{12}$. I hope it is correct.") == "12"
    assert extract_math_answer("blah \\boxed{3} ... the answer is 4.") == "3"
    assert extract_math_answer("the answer is 4.") == "4"
    assert extract_math_answer("we get 7 and 9") == "9"
