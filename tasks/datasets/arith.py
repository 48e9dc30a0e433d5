"""The synthetic arith task: generated running sums (`a + b - c ...`, tasks/algos/arith.py), answered in
GSM8K's format and graded numerically. Its worked solution is unique, so a response's steps can be checked
against it: `extra_metrics` measures unfaithful chains (right answer, wrong steps)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tasks.algos import arith
from tasks.algos.grading import Grade, RewardScheme, grade_numeric
from tasks.algos.metrics import step_metrics
from tasks.datasets.rows import text_field

if TYPE_CHECKING:
    from configs.schema import DataSection


def synthetic_records(cfg: DataSection, split: str) -> list[dict]:
    """The generated problems of `split` (data.arith: sizes, operands, seed) as records."""
    a = cfg.arith
    problems = arith.generate(a.n_train + a.n_test, a.min_terms, a.max_terms, a.max_operand, a.seed)
    train, test = arith.split(problems, a.n_test)
    chosen = train if split == cfg.train_split else test
    return [
        {
            "prompt_id": f"arith-{split}-{i:05d}",
            "question": p.question,
            "reference": str(p.answer),
            "solution": p.solution,
        }
        for i, p in enumerate(chosen)
    ]


def reference(row: dict, cfg: DataSection, solution: str, where: str) -> tuple[str, str]:
    """(reference, solution) of a row: the answer field as it is (arith is synthetic, so only for symmetry)."""
    return text_field(row, cfg.answer_field, where), solution


def grade(
    responses: Sequence[str], references: Sequence[str], finish_reasons: Sequence[str], scheme: RewardScheme
) -> list[Grade]:
    return [grade_numeric(r, ref, f, scheme) for r, ref, f in zip(responses, references, finish_reasons)]


def extra_metrics(statuses: Sequence[str], texts: Sequence[str], solutions: Sequence[str]) -> dict[str, float]:
    """Step faithfulness (tasks/algos/metrics.step_metrics) over the responses whose prompt has a worked solution."""
    pairs = [(status, arith.steps_match(text, sol)) for status, text, sol in zip(statuses, texts, solutions) if sol]
    return step_metrics(*zip(*pairs)) if pairs else {}
