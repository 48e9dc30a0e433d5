"""Grade responses by task name, with the same code for the pipeline, eval and `segflow grade`.

The grader itself is the task module's `grade` (tasks/datasets/<task>.py); this checks the inputs
once for every task and turns the config's reward section into a RewardScheme.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tasks.algos.grading import Grade, RewardScheme
from tasks.datasets.registry import task_module

if TYPE_CHECKING:
    from configs.schema import RewardSection


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


def grade_all(
    task: str, responses: Sequence[str], references: Sequence[str], finish_reasons: Sequence[str], scheme: RewardScheme
) -> list[Grade]:
    """One Grade per response, by task `task`'s grader; ValueError for an unknown task or a non-string input."""
    check_texts(responses, references)
    return task_module(task).grade(responses, references, finish_reasons, scheme)
