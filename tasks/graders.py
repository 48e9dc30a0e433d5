"""Grade responses by task name, with the same code for the pipeline, eval and `segflow grade`."""
from __future__ import annotations

from typing import Sequence

from configs.schema import RewardSection
from tasks.algos.grading import Grade, RewardScheme, grade_numeric

NUMERIC_TASKS = ("arith", "gsm8k")


def scheme_of(reward: RewardSection) -> RewardScheme:
    return RewardScheme(**reward.model_dump())


def grade_all(task: str, responses: Sequence[str], references: Sequence[str], finish_reasons: Sequence[str],
              scheme: RewardScheme) -> list[Grade]:
    if task in NUMERIC_TASKS:
        return [grade_numeric(r, ref, f, scheme) for r, ref, f in zip(responses, references, finish_reasons)]
    if task == "math":
        from tasks.math_grading import grade_math_batch

        return grade_math_batch(responses, references, finish_reasons, scheme)
    raise ValueError(f"no grader for task {task!r}; known: {', '.join(NUMERIC_TASKS + ('math',))}")
