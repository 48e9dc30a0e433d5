"""Stage: grade. Scores every rollout against its prompt's reference answer."""
from __future__ import annotations

from prefect import task

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import GRADES, PROMPTS, ROLLOUTS
from tasks.algos.arith import steps_match
from tasks.algos.metrics import grade_metrics, group_metrics, step_metrics
from tasks.common import STAGE, StageOutput
from tasks.graders import grade_all, scheme_of


def references(prompts: FileRef, column: str = "reference") -> dict[str, str]:
    t = read_parquet(prompts, PROMPTS)
    return dict(zip(t["prompt_id"].to_pylist(), t[column].to_pylist()))


@task(name="grade", **STAGE)
def grade(cfg: Config, layout: RunLayout, rollouts: FileRef, train: FileRef, iteration: int,
          code_version: str) -> StageOutput:
    r = read_parquet(rollouts, ROLLOUTS)
    refs = references(train)
    pids = r["prompt_id"].to_pylist()
    grades = grade_all(cfg.data.task, r["completion_text"].to_pylist(), [refs[p] for p in pids],
                       r["finish_reason"].to_pylist(), scheme_of(cfg.reward))
    rows = [
        {"run_id": layout.run_id, "iteration": iteration, "prompt_id": p, "sample_index": s,
         "score": g.score, "status": g.status, "extracted": g.extracted}
        for p, s, g in zip(pids, r["sample_index"].to_pylist(), grades)
    ]
    ref = write_parquet(rows, GRADES, layout.grades(iteration))
    scores, statuses = [g.score for g in grades], [g.status for g in grades]
    values = {**grade_metrics(scores, statuses), **group_metrics(scores, pids)}
    if cfg.data.task == "arith":  # its worked solution is unique, so unfaithful chains are measurable
        solutions = references(train, "solution")
        pairs = [(status, steps_match(text, solutions[p]))
                 for status, text, p in zip(statuses, r["completion_text"].to_pylist(), pids) if solutions.get(p)]
        if pairs:
            values |= step_metrics(*zip(*pairs))
    metrics = write_metrics(layout.metrics(iteration, "grade"), layout.run_id, iteration, "grade", values)
    return StageOutput(artifact=ref, metrics=metrics)
