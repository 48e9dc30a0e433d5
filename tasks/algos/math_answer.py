"""MATH answer extraction (spec §7): what a response commits to as its final answer.

Priority: "final answer is $X$. I hope" -> last \\boxed{X} (or \\fbox) -> "the answer is X" -> last number.
Braces are matched, so nested answers like \\boxed{\\frac{1}{2}} come out whole.
"""
from __future__ import annotations

import re

_FINAL = re.compile(r"final answer is:?\s*\$(.+?)\$\.?\s*I hope", re.IGNORECASE | re.DOTALL)
_HOPE = re.compile(r"\$\.?\s*I hope", re.IGNORECASE)  # how every _FINAL match ends
_ANSWER_IS = re.compile(r"the answer is[:\s]*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} / \\fbox{...} (or `\\boxed 5`), braces matched; None if absent."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx:]
    rest = rest[len("\\boxed"):] if rest.startswith("\\boxed") else rest[len("\\fbox"):]
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
    last = None
    for last in _HOPE.finditer(text):
        pass
    return _FINAL.findall(text, 0, last.end()) if last else []


def extract_math_answer(text: str) -> str | None:
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
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else None
