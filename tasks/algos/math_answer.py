"""MATH answer extraction (spec §7): what a response commits to as its final answer, and how it is
normalised and bounded before math-verify sees it.

Priority: "final answer is $X$. I hope" -> last \\boxed{X} (or \\fbox) -> "the answer is X" -> last number.
Braces are matched, so nested answers like \\boxed{\\frac{1}{2}} come out whole. The last-number
fallback takes a whole numeric token (tasks/algos/grading.py `last_numeric_token`), so `1/2` is not 2.

Normalisation (`normalize_math_answer`, for the answer and the reference alike): characters that
render as nothing are deleted and U+2212 is `-` (tasks/algos/answer_text.py); LaTeX spacing (`\\,`
`\\:` `\\;` `\\>` `\\!` `\\ ` `~` `\\quad` `\\qquad` `\\thinspace`... `\\hspace{..}`, and thin/no-break
spaces) is removed, except that between two letters it becomes one space (`\\sin\\,x` stays `\\sin x`)
and between two digits it stays a space unless a group of exactly 3 digits follows (`1\\,000` is 1000,
the way `1{,}000` is). `\\\\` (a matrix row break) is never touched.

Bounds (`answer_too_large`): math-verify misreads deep nesting (a 200-deep `\\frac{1}{...}` chain
parses as 1/2; parentheses ~80 deep come out wrong too) and how deep it gets before its own timeout
depends on the machine's load, so a verdict would too. Above MAX_NESTING or MAX_ANSWER_CHARS the
answer is `parse_error` before math-verify runs, whatever the load.
"""

from __future__ import annotations

import re
from collections import deque

from tasks.algos.answer_text import GROUP_SPACES, drop_invisible
from tasks.algos.grading import last_numeric_token

# Bracket depth ({ ( [ against } ) ], \{ and \left( included) above which an answer is not parsed.
# MATH-500 answers reach 2 and its worked solutions 4; math-verify still parses 100-deep \frac chains
# correctly but misreads ~80-deep parentheses and times out on 20-deep bare braces (measured 2026-12,
# math-verify 0.9.0), so 20 keeps a wide margin on both sides.
MAX_NESTING = 20
# Characters of an extracted answer above which it is not parsed: the longest MATH-500 answer has 53;
# the bound keeps one answer's math-verify time well inside the per-item timeout.
MAX_ANSWER_CHARS = 2000

_FINAL = re.compile(r"final answer is:?\s*\$(.+?)\$\.?\s*I hope", re.IGNORECASE | re.DOTALL)
_HOPE = re.compile(r"\$\.?\s*I hope", re.IGNORECASE)  # how every _FINAL match ends
_ANSWER_IS = re.compile(r"the answer is[:\s]*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)

# A LaTeX spacing command: one of the control symbols, a named space (not a prefix of a longer
# command name), or an explicit \hspace/\mspace; `~` is a no-break space.
_SPACE_CMD = (
    r"\\[,:;>! ]|~|\\(?:qquad|quad|thinspace|medspace|thickspace|enspace|enskip|negthinspace"
    r"|negmedspace|negthickspace|nobreakspace|space)(?![a-zA-Z])|\\[hm]space\*?\{[^{}]*+\}"
)
# `\\\\` first, so the second backslash of a row break is never read as the start of `\ `; then a run
# of spacing commands, special spaces and plain blanks (possessive: one pass, no backtracking).
_SPACING_RUN = re.compile(rf"\\\\|(?:[ \t]|[{GROUP_SPACES}]|{_SPACE_CMD})++")
_THREE_DIGITS = re.compile(r"\d{3}(?!\d)")


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} / \\fbox{...} (or `\\boxed 5`), braces matched; None if absent."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx:]
    rest = rest[len("\\boxed") :] if rest.startswith("\\boxed") else rest[len("\\fbox") :]
    if rest.startswith(" "):
        m = re.match(r"\s*([^\s$]+)", rest)
        return m.group(1) if m else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i]
    return None  # unbalanced: treated as no answer


def final_answers(text: str) -> list[str]:
    """`_FINAL.findall(text)`, in linear time.

    Each "final answer is $" with no `$. I hope` after it makes the lazy `(.+?)` scan to the end of
    the text, so k such openings cost O(k * n): a 50 kB response took seconds and a 1 MB one tens of
    minutes (found by bench/grader_fuzz.py). Every match ends with a `_HOPE` marker, so searching only
    up to the end of the last marker gives the same matches while an opening scans at most to that end.
    """
    last = deque(_HOPE.finditer(text), maxlen=1)
    return _FINAL.findall(text, 0, last[0].end()) if last else []


def extract_math_answer(text: str) -> str | None:
    text = drop_invisible(text)  # a zero-width character must not hide a \boxed or split a number
    m = final_answers(text)
    if m:
        final = m[-1].strip()
        return (last_boxed(final) or final).strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    m = _ANSWER_IS.findall(text)
    if m:
        return m[-1].strip().strip("$")
    token = last_numeric_token(text)
    if token is None:
        return None
    # As LaTeX: no `$` currency sign, and digit groups split by a space joined (math-verify reads
    # `1 000` as 1*0).
    return re.sub(rf"(?<=\d)[ {GROUP_SPACES}](?=\d{{3}})", "", token.replace("$", ""))


def _spacing(m: re.Match) -> str:
    run = m.group(0)
    if run == "\\\\" or not run.strip(" \t"):
        return run  # a row break, or plain blanks only: left to math-verify as before
    text, start, end = m.string, m.start(), m.end()
    before, after = text[start - 1 : start], text[end : end + 1]
    if before.isdigit() and after.isdigit():
        return "" if _THREE_DIGITS.match(text, end) else " "
    return " " if before.isalpha() and after.isalpha() else ""


def normalize_math_answer(answer: str) -> str:
    """The answer as math-verify should see it (rules in the module docstring).

    `"1\\,000"` -> `"1000"`; `"\\u200f42"` -> `"42"`; `"\\u22125"` -> `"-5"`; `"\\sin\\,x"` -> `"\\sin x"`;
    `"10,\\!080"` -> `"10,080"`; `"1 \\\\ 2"` unchanged.
    """
    answer = drop_invisible(answer).replace("\u2212", "-")
    return _SPACING_RUN.sub(_spacing, answer).strip()


def nesting_depth(text: str) -> int:
    """Deepest bracket nesting in `text`: `{ ( [` open and `} ) ]` close (so `[0, 1)` is depth 1)."""
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]" and depth:
            depth -= 1
    return deepest


def answer_too_large(answer: str) -> str | None:
    """Why `answer` is past the bounds math-verify is trusted with (module docstring); None if within."""
    if len(answer) > MAX_ANSWER_CHARS:
        return f"{len(answer)} characters, over MAX_ANSWER_CHARS={MAX_ANSWER_CHARS}"
    depth = nesting_depth(answer)
    if depth > MAX_NESTING:
        return f"brackets nested {depth} deep, over MAX_NESTING={MAX_NESTING}"
    return None
