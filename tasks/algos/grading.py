"""Answer extraction and grading for numeric tasks (the synthetic arith task and GSM8K).

Every grade is a (score, status) pair; a failure is a status, never a silent 0.
Status: ok | wrong | no_answer | parse_error | timeout | truncated.

GSM8K extraction (spec §7): the text after the last `####`. Fallbacks, in order, when there is no
`####`: "the answer is X", then the last number in the text. Commas, `$`, `%` and trailing units
are stripped; the match is exact numeric equality (so `18`, `18.0` and `$18` agree).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

STATUSES = ("ok", "wrong", "no_answer", "parse_error", "timeout", "truncated")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
# `[:\s]*(?:\$\s*)?` matches the same text as the former `[:\s]*\$?\s*`, but without two adjacent
# whitespace runs: with those, "answer is" + n spaces + a non-number backtracked over every split of
# the spaces, O(n^2) per occurrence (a 50 kB response took minutes; found by bench/grader_fuzz.py).
_ANSWER_IS = re.compile(r"answer is[:\s]*(?:\$\s*)?(-?[\d,]*\.?\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class RewardScheme:
    correct: float = 1.0
    wrong: float = 0.0
    truncated: float = 0.0
    no_answer: float = 0.0
    multiple_answers: float | None = None  # SPO's guard against several `####` conclusions (paper: -2)


@dataclass(frozen=True)
class Grade:
    score: float
    status: str
    extracted: str = ""


def parse_number(text: str) -> Decimal | None:
    """`"$1,234.50"` -> Decimal('1234.50'); None when `text` holds no number."""
    m = _NUMBER.search(text.replace("$", "").replace(" ", ""))
    if m is None:
        return None
    try:
        return Decimal(m.group(0).replace(",", ""))
    except InvalidOperation:
        return None


def extract_numeric_answer(response: str) -> str | None:
    """The answer string a response commits to, by the documented priority; None if it has none."""
    if "####" in response:
        tail = response.rsplit("####", 1)[1].strip()
        line = tail.splitlines()[0] if tail else ""
        return line.strip()
    m = _ANSWER_IS.findall(response)
    if m:
        return m[-1]
    nums = _NUMBER.findall(response)
    return nums[-1] if nums else None


def grade_numeric(response: str, reference: str, finish_reason: str, scheme: RewardScheme) -> Grade:
    if finish_reason == "length":
        # A response cut by the token budget scores the penalty even if it happens to contain the answer.
        return Grade(scheme.truncated, "truncated", "")
    extracted = extract_numeric_answer(response)
    if extracted is None or extracted == "":
        return Grade(scheme.no_answer, "no_answer", "")
    got = parse_number(extracted)
    if got is None:
        return Grade(scheme.no_answer, "parse_error", extracted)
    want = parse_number(reference)
    if want is None:
        raise ValueError(f"reference answer {reference!r} holds no number")
    if scheme.multiple_answers is not None and response.count("####") > 1:
        return Grade(scheme.multiple_answers, "wrong", extracted)
    if got == want:
        return Grade(scheme.correct, "ok", extracted)
    return Grade(scheme.wrong, "wrong", extracted)


def reference_from_solution(solution: str) -> str:
    """GSM8K stores the final answer after `####` in the worked solution."""
    if "####" not in solution:
        raise ValueError(f"solution has no '####' final answer: {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")
