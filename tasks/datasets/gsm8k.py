"""GSM8K: grade-school word problems. The dataset's answer is a worked solution ending `#### <number>`;
the number after `####` is the reference and the rest the solution. Graded numerically
(tasks/algos/grading.py: `####`, then "the answer is", then the last number)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tasks.algos.grading import Grade, RewardScheme, grade_numeric, reference_from_solution
from tasks.datasets.rows import BadRow, show, text_field

if TYPE_CHECKING:
    from configs.schema import DataSection


def reference(row: dict, cfg: DataSection, solution: str, where: str) -> tuple[str, str]:
    """(reference, solution) of a row: an answer holding `####` is the solution, its tail the reference."""
    answer = text_field(row, cfg.answer_field, where)
    if "####" in answer:
        solution, answer = solution or answer, reference_from_solution(answer)
        if not answer:
            raise BadRow(
                where, "empty_field", f"field {cfg.answer_field!r} has nothing after '####' ({show(solution[-60:])})"
            )
    return answer, solution


def grade(
    responses: Sequence[str], references: Sequence[str], finish_reasons: Sequence[str], scheme: RewardScheme
) -> list[Grade]:
    return [grade_numeric(r, ref, f, scheme) for r, ref, f in zip(responses, references, finish_reasons)]


def extra_metrics(statuses: Sequence[str], texts: Sequence[str], solutions: Sequence[str]) -> dict[str, float]:
    """None: a GSM8K problem has many valid solutions, so steps are not compared."""
    return {}
