"""Synthetic multi-step integer arithmetic in GSM8K's answer format.

A problem is a chain `a+b-c+d` of single-digit operands. The worked solution keeps a running
total, one step per line, and ends with `#### N`:

    3+5-2+7        ->   3+5=8
                        8-2=6
                        6+7=13
                        #### 13
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ArithProblem:
    question: str
    solution: str
    answer: int


def solve(operands: list[int], ops: list[str]) -> ArithProblem:
    total = operands[0]
    lines = []
    for op, x in zip(ops, operands[1:]):
        new = total + x if op == "+" else total - x
        lines.append(f"{total}{op}{x}={new}")
        total = new
    question = str(operands[0]) + "".join(f"{op}{x}" for op, x in zip(ops, operands[1:]))
    return ArithProblem(question=question, solution="\n".join(lines) + f"\n#### {total}", answer=total)


def worked_steps(text: str) -> list[str]:
    """The response's non-empty lines without spaces: the steps and the `####` line, comparable as text."""
    return [line.replace(" ", "") for line in text.splitlines() if line.strip()]


def steps_match(response: str, solution: str) -> bool:
    """Does the response carry the worked solution's running total, step by step, to its answer?

    The synthetic task's solution is unique (one running total, one line per operation), so a response
    with the right final answer but other steps reached it by luck or by a shortcut: outcome reward
    credits such unfaithful chains too (the grade stage reports how often, `frac_ok_wrong_steps`).
    """
    return worked_steps(response) == worked_steps(solution)


def generate(n: int, min_terms: int, max_terms: int, max_operand: int, seed: int) -> list[ArithProblem]:
    """`n` distinct problems, deterministic in `seed`. Raises if the space has fewer than `n` problems."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[ArithProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"could not draw {n} distinct problems with terms {min_terms}-{max_terms}, "
                f"operands 0-{max_operand}; widen the task"
            )
        k = rng.randint(min_terms, max_terms)
        operands = [rng.randint(0, max_operand) for _ in range(k)]
        ops = [rng.choice("+-") for _ in range(k - 1)]
        p = solve(operands, ops)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def split(problems: list[ArithProblem], n_test: int) -> tuple[list[ArithProblem], list[ArithProblem]]:
    """Held-out split: the first `n_test` problems; questions never overlap because generation dedups."""
    return problems[n_test:], problems[:n_test]
