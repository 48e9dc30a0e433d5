import pytest

from tasks.algos.grading import RewardScheme, extract_numeric_answer, grade_numeric, parse_whole_number
from tasks.algos.math_answer import (
    MAX_ANSWER_CHARS,
    MAX_NESTING,
    answer_too_large,
    extract_math_answer,
    last_boxed,
    nesting_depth,
    normalize_math_answer,
)

S = RewardScheme()


@pytest.mark.parametrize(
    "response,reference,status",
    [
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
    ],
)
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
    assert parse_whole_number("5 dollars") == parse_whole_number("5")


def test_huge_input_is_fine():
    assert grade_numeric("1+" * 50_000 + "\n#### 9", "9", "stop", S).status == "ok"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed 5 is it", "5"),
        ("\\fbox{x+1}", "x+1"),
        ("\\boxed{unbalanced", None),
        ("nothing", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_math_extraction_priority():
    assert extract_math_answer("Therefore, the final answer is: $\\boxed{12}$. I hope it is correct.") == "12"
    assert extract_math_answer("blah \\boxed{3} ... the answer is 4.") == "3"
    assert extract_math_answer("the answer is 4.") == "4"
    assert extract_math_answer("we get 7 and 9") == "9"


# ---- issue 27 item 1: the whole final answer must be one number (regressions, named after each case)


def status(response: str, reference: str) -> str:
    return grade_numeric(response, reference, "stop", S).status


def test_gsm8k_fraction_is_not_its_numerator():
    assert status("#### 1/2", "1") == "parse_error"


def test_gsm8k_scientific_notation_is_its_value_not_its_mantissa():
    assert status("#### 1.5e3", "1.5") == "wrong"
    assert status("#### 1.5e3", "1500") == "ok"


def test_gsm8k_power_is_not_its_base():
    assert status("#### 2^10", "2") == "parse_error"


def test_gsm8k_factorial_is_not_its_operand():
    assert status("#### 5!", "5") == "parse_error"


def test_gsm8k_ratio_is_not_its_first_term():
    assert status("#### 3:2", "3") == "parse_error"


def test_gsm8k_hex_literal_is_not_zero():
    assert status("#### 0x1F", "0") == "parse_error"
    assert status("#### 0xFF", "0") == "parse_error"  # all letters: must not pass as 0 with a unit "xFF"


def test_gsm8k_unicode_minus_is_a_negative_number():
    assert status("#### \u22125", "5") == "wrong"
    assert status("#### \u22125", "-5") == "ok"
    assert status("#### \u20137", "-7") == "ok"  # an en dash, as a word processor writes it


@pytest.mark.parametrize("space", ["\u00a0", "\u2009", "\u202f"])
def test_gsm8k_no_break_space_digit_groups_are_one_number(space):
    text = f"#### 1{space}234{space}567"
    assert status(text, "1") == "wrong"
    assert status(text, "1234567") == "ok"


def test_gsm8k_zero_width_space_inside_a_number_joins_it():
    assert status("#### 4\u200b2", "4") == "wrong"
    assert status("#### 4\u200b2", "42") == "ok"
    assert status("#### \u200f42\u200e", "42") == "ok"  # direction marks around it


def test_gsm8k_answer_is_fallback_reads_the_whole_fraction():
    assert status("The answer is 1/2.", "1") == "parse_error"


def test_gsm8k_last_number_fallback_reads_the_whole_token():
    assert status("so we get 1/2", "2") == "parse_error"
    assert status("so we get 2^10", "10") == "parse_error"
    assert status("so 10-3 = 7. Then 10-3", "-3") == "wrong"  # a minus between digits is not a sign


@pytest.mark.parametrize(
    "answer,reference",
    [
        ("18 dollars", "18"),
        ("18 cm", "18"),
        ("18cm", "18"),
        ("18%", "18"),
        ("$18.00", "18"),
        ("18.", "18"),
        ("18 dollars.", "18"),
        ("**18**", "18"),
        ("$18$", "18"),
        ("\\boxed{18}", "18"),
        ("18 km/h", "18"),
        ("18/hour", "18"),
        ("18 cm^2", "18"),
        ("1,234", "1234"),
        ("1 000", "1000"),
        ("1'000", "1000"),
        ("1_000", "1000"),
        ("-$5", "-5"),
        ("$ -5", "-5"),
        ("18.0", "18"),
        (".5", "0.5"),
        ("00042", "42"),
    ],
)
def test_units_currency_groups_and_full_stop_still_match(answer, reference):
    assert status(f"Some work.\n#### {answer}", reference) == "ok"


@pytest.mark.parametrize(
    "answer", ["12 and 13", "3 5", "1,23", "1,2345", "--5", "5 - 3", "x = 12", "12 (twelve)", "1.2.3", "1,234 567"]
)
def test_more_than_one_number_or_a_mix_is_a_parse_error(answer):
    assert status(f"#### {answer}", "12") == "parse_error"


@pytest.mark.parametrize(
    "text,value",
    [
        ("1,234,567.25", "1234567.25"),
        ("\u22121\u00a0000", "-1000"),
        ("1.5E+3", "1500"),
        ("2e-2", "0.02"),
        ("$1,000 per week", "1000"),
        ("18 sq. ft.", "18"),
        ("\uff0d7", "-7"),
        ("٣", "3"),
    ],
)
def test_parse_whole_number_values(text, value):
    from decimal import Decimal

    assert parse_whole_number(text) == Decimal(value)


def test_reference_that_is_not_one_number_is_bad_input():
    with pytest.raises(ValueError, match=r"reference answer '1/2' is not one number"):
        grade_numeric("#### 1", "1/2", "stop", S)


def test_math_last_number_fallback_keeps_the_whole_fraction():
    assert extract_math_answer("so we get 1/2") == "1/2"
    assert extract_math_answer("so we get 1\u00a0000 apples") == "1000"
    assert extract_math_answer("the \\bo\u200bxed{4\u200b2}") == "42"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1\\,000", "1000"),
        ("1\\;000\\;000", "1000000"),
        ("1~000", "1000"),
        ("1\\ 000", "1000"),
        ("1\u202f000", "1000"),
        ("10,\\!080", "10,080"),
        ("\\$32,\\!348", "\\$32,348"),
        ("\\sin\\,x", "\\sin x"),
        ("x\\quad y", "x y"),
        ("1\\,5", "1 5"),
        ("2\\,x", "2x"),
        ("\\frac{1}{2}\\,\\text{m}", "\\frac{1}{2}\\text{m}"),
        ("\\hspace{1em}3", "3"),
        ("\u200f42\u200e", "42"),
        ("\u22125", "-5"),
        ("1 + 2", "1 + 2"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("\\\\\\,x", "\\\\x"),  # a row break, then a thin space: the break stays whole
    ],
)
def test_normalize_math_answer(text, expected):
    assert normalize_math_answer(text) == expected


def test_nesting_bounds_leave_every_math500_fixture_answer_alone():
    import json
    from pathlib import Path

    rows = [json.loads(x) for x in (Path(__file__).parent / "fixtures/math500/test.jsonl").read_text().splitlines()]
    assert rows and all(answer_too_large(normalize_math_answer(r["answer"])) is None for r in rows)
    assert max(nesting_depth(r["answer"]) for r in rows) <= MAX_NESTING // 5
    assert nesting_depth("[0, 1)") == 1 and nesting_depth("\\{1,\\{2\\}\\}") == 2 and nesting_depth(")(") == 1
    assert answer_too_large("(" * (MAX_NESTING + 1) + ")" * (MAX_NESTING + 1)).startswith("brackets nested 21 deep")
    assert (
        answer_too_large("1" * (MAX_ANSWER_CHARS + 1)) == f"{MAX_ANSWER_CHARS + 1} characters, over "
        f"MAX_ANSWER_CHARS={MAX_ANSWER_CHARS}"
    )
