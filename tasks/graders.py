"""Grade responses by task name, with the same code for the pipeline, eval and `segflow grade`."""
from __future__ import annotations

from typing import Sequence

from configs.schema import RewardSection
from tasks.algos.grading import Grade, RewardScheme, grade_numeric

NUMERIC_TASKS = ("arith", "gsm8k")


def scheme_of(reward: RewardSection) -> RewardScheme:
    return RewardScheme(**reward.model_dump())


def check_texts(responses: Sequence[object], references: Sequence[object]) -> None:
    """ValueError naming the first response or reference that is not a string (0-based index, type, value).

    A response is graded as text: `str({"a": 1})` would be graded (and could score 1.0 against a
    reference of 1), so anything else is bad input, not something to convert.
    """
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")
    for name, items in (("response", responses), ("reference", references)):
        for i, x in enumerate(items):
            if not isinstance(x, str):
                raise ValueError(f"{name} {i} (0-based) is a {type(x).__name__}, not a string: {repr(x)[:80]}")


def grade_all(task: str, responses: Sequence[str], references: Sequence[str], finish_reasons: Sequence[str],
              scheme: RewardScheme) -> list[Grade]:
    check_texts(responses, references)
    if task in NUMERIC_TASKS:
        return [grade_numeric(r, ref, f, scheme) for r, ref, f in zip(responses, references, finish_reasons)]
    if task == "math":
        from tasks.math_grading import grade_math_batch

        return grade_math_batch(responses, references, finish_reasons, scheme)
    raise ValueError(f"no grader for task {task!r}; known: {', '.join(NUMERIC_TASKS + ('math',))}")
