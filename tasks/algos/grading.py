"""Answer extraction and grading for numeric tasks (the synthetic arith task and GSM8K).

Every grade is a (score, status) pair; a failure is a status, never a silent 0.
Status: ok | wrong | no_answer | parse_error | timeout | truncated.

GSM8K extraction (spec §7): the text after the last `####` (to the end of its line). Fallbacks, in
order, when there is no `####`: "the answer is X", then the last number in the text, where X and
"number" are a whole numeric token (`1/2`, `2^10`, `0x1F` stay whole, so they are not read as 1, 2, 0).

The final answer must then be ONE number as a whole (`parse_whole_number`), after normalisation:
invisible characters deleted and Unicode minus/dashes read as `-` (tasks/algos/answer_text.py), a
wrapping `**...**`, `$...$`, `\\(...\\)` or `\\boxed{...}` removed, `$` and a sign in front, digit-group
separators (`,` `'` `_`, a space or a thin/no-break/narrow space, between groups of exactly 3 digits),
a decimal part and an exponent (`1.5e3` is 1500), then optional trailing unit words (`dollars`, `cm^2`,
`km/h`, `/hour`, `%`, `°C`) and full stops. Anything else (`1/2`, `2^10`, `5!`, `3:2`, `0x1F`, `12 and 13`)
is `parse_error`. The match is exact numeric equality (so `18`, `18.0`, `$18` and `18 dollars` agree).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from tasks.algos.answer_text import GROUP_SPACES, plain_numeric_text

STATUSES = ("ok", "wrong", "no_answer", "parse_error", "timeout", "truncated")

# A number as a whole: digit groups of exactly 3 after the first (one separator kind throughout, the
# backreference), or plain digits; a decimal part; an exponent. Possessive quantifiers where no
# backtracking is ever needed, so a long non-number fails in linear time.
_SEP = "[,'_ " + GROUP_SPACES + "]"
_NUM = rf"(?:\d{{1,3}}(?P<sep>{_SEP})\d{{3}}(?:(?P=sep)\d{{3}})*+(?!\d)|\d++)(?:\.\d++)?|\.\d++"
# A unit word: letters or % or °, optionally squared/cubed and abbreviated with a full stop. Words are
# separated by spaces or a `/` (and a rate may start with one), so `18 dollars`, `18cm`, `18 km/h`,
# `18/hour`, `18 sq. ft.` and `18%` parse, while `5!`, `3:2`, `2^10` and `12 and 13` do not; nor does a
# radix prefix (`0x1F`, `0xFF`, `0b1`: the lookahead before the number, as `xFF` alone would pass as a unit).
_UNIT_WORD = r"(?:[^\W\d_]|[%°])++(?:\^[23]|[²³])?\.?"
_WHOLE = re.compile(
    rf"(?P<s1>[-+]?)\s*+\$?\s*+(?P<s2>[-+]?)\s*+(?!0[xXbBoO][0-9a-fA-F])(?P<num>{_NUM})"
    r"(?P<exp>[eE][-+]?\d++)?"
    rf"(?:\s*+(?:/\s*+)?{_UNIT_WORD}(?:(?:\s++|\s*+/\s*+){_UNIT_WORD})*+)?"
)
_WRAPPERS = (("**", "**"), ("$", "$"), ("\\(", "\\)"), ("\\boxed{", "}"), ("\\text{", "}"))

# A whole numeric token in running text, for the fallbacks: a number and whatever number-like text is
# glued to it (`1/2`, `2^10`, `1.5e3`, `1.5E+3`, `3:2`, `0x1F`), but not the sentence punctuation after it
# (an inner `.,'_/^:!` must be followed by a letter or digit), and digit groups split by one space.
# A sign counts only where no letter or digit precedes it: `10-3` ends with 3, not -3.
_TOKEN = (
    r"(?:(?<![^\W_])[-+])?\$?(?:\d|\.\d)"
    rf"(?:[^\W_]|[.,'_/^:!](?=[^\W_])|(?<=[eE])[-+](?=\d)|[%°]|[ {GROUP_SPACES}](?=\d{{3}}(?!\d)))*+"
)
_TOKEN_RE = re.compile(_TOKEN)
# `[:\s]*+(?:\$\s*+)?` is possessive and never next to another whitespace run: with two adjacent runs
# ("answer is" + n spaces + a non-number) the engine tried every split of the spaces, O(n^2) per
# occurrence (a 50 kB response took minutes; found by bench/grader_fuzz.py).
_ANSWER_IS = re.compile(rf"answer is[:\s]*+(?:\$\s*+)?({_TOKEN})", re.IGNORECASE)


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


def _unwrap(text: str) -> str:
    """`**18**`, `$18$`, `\\(18\\)`, `\\boxed{18}`, `$\\boxed{18}$` -> `18`: up to 3 layers, outermost
    first (a bound, so that `**` * 10^6 costs 3 copies, not 10^6)."""
    for _ in range(3):
        for left, right in _WRAPPERS:
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : -len(right)].strip()
                break
        else:
            break
    return text


def parse_whole_number(text: str) -> Decimal | None:
    """The number `text` is as a whole (rule in the module docstring); None if it is not one number.

    `"$1,234.50"` -> 1234.50; `"\u22125"` -> -5; `"1\u00a0234\u00a0567"` -> 1234567; `"18 dollars."` -> 18;
    `"1.5e3"` -> 1500; `"1/2"`, `"2^10"`, `"5!"`, `"3:2"`, `"0x1F"`, `"--5"` -> None.
    """
    text = _unwrap(plain_numeric_text(text).strip().replace("\\$", "$").replace("\\%", "%")).rstrip(". ")
    m = _WHOLE.fullmatch(text)
    if m is None or (m["s1"] and m["s2"]):
        return None
    digits = m["num"].replace(m["sep"], "") if m["sep"] else m["num"]
    try:
        value = Decimal(digits + (m["exp"] or ""))
    except InvalidOperation:
        return None
    return -value if "-" in (m["s1"], m["s2"]) else value


def extract_numeric_answer(response: str) -> str | None:
    """The answer string a response commits to, by the documented priority; None if it has none.

    The response is first read through `plain_numeric_text`, so an invisible character cannot split
    (or hide) a number and a Unicode minus is a `-`.
    """
    response = plain_numeric_text(response)
    if "####" in response:
        tail = response.rsplit("####", 1)[1].strip()
        line = tail.splitlines()[0] if tail else ""
        return line.strip()
    last = deque(_ANSWER_IS.finditer(response), maxlen=1)  # the last match, in one pass
    if last:
        return last[0].group(1)
    return last_numeric_token(response)


def last_numeric_token(text: str) -> str | None:
    """The last whole numeric token in `text` (`_TOKEN`): `"so 5+8 = 13."` -> `"13"`, `"we get 1/2"` -> `"1/2"`."""
    last = deque(_TOKEN_RE.finditer(text), maxlen=1)
    return last[0].group(0) if last else None


def grade_numeric(response: str, reference: str, finish_reason: str, scheme: RewardScheme) -> Grade:
    if finish_reason == "length":
        # A response cut by the token budget scores the penalty even if it happens to contain the answer.
        return Grade(scheme.truncated, "truncated", "")
    extracted = extract_numeric_answer(response)
    if extracted is None or extracted == "":
        return Grade(scheme.no_answer, "no_answer", "")
    got = parse_whole_number(extracted)
    if got is None:
        return Grade(scheme.no_answer, "parse_error", extracted)
    want = parse_whole_number(reference)
    if want is None:
        raise ValueError(
            f"reference answer {reference!r} is not one number (tasks/algos/grading.py: parse_whole_number)"
        )
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
