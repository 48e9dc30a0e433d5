"""Stage: grade. Scores every rollout against its prompt's reference answer."""

from __future__ import annotations

from prefect import task

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import GRADES, PROMPTS, ROLLOUTS
from tasks.algos.metrics import grade_metrics, group_metrics
from tasks.common import STAGE, StageOutput
from tasks.datasets.graders import grade_all, scheme_of
from tasks.datasets.registry import task_module


def by_prompt(prompts, column: str) -> dict[str, str]:
    """prompt_id -> `column` of a prompts table (schema PROMPTS)."""
    return dict(zip(prompts["prompt_id"].to_pylist(), prompts[column].to_pylist()))


@task(name="grade", **STAGE)
def grade(
    cfg: Config, layout: RunLayout, rollouts: FileRef, train: FileRef, iteration: int, code_version: str
) -> StageOutput:
    r = read_parquet(rollouts, ROLLOUTS)
    prompts = read_parquet(train, PROMPTS)
    refs = by_prompt(prompts, "reference")
    pids, texts = r["prompt_id"].to_pylist(), r["completion_text"].to_pylist()
    grades = grade_all(
        cfg.data.task, texts, [refs[p] for p in pids], r["finish_reason"].to_pylist(), scheme_of(cfg.reward)
    )
    rows = [
        {
            "run_id": layout.run_id,
            "iteration": iteration,
            "prompt_id": p,
            "sample_index": s,
            "score": g.score,
            "status": g.status,
            "extracted": g.extracted,
        }
        for p, s, g in zip(pids, r["sample_index"].to_pylist(), grades)
    ]
    ref = write_parquet(rows, GRADES, layout.grades(iteration))
    scores, statuses = [g.score for g in grades], [g.status for g in grades]
    values = {**grade_metrics(scores, statuses), **group_metrics(scores, pids)}
    solutions = by_prompt(prompts, "solution")  # what only some tasks can measure (arith: step faithfulness)
    values |= task_module(cfg.data.task).extra_metrics(statuses, texts, [solutions.get(p) or "" for p in pids])
    metrics = write_metrics(layout.metrics(iteration, "grade"), layout.run_id, iteration, "grade", values)
    return StageOutput(artifact=ref, metrics=metrics)
