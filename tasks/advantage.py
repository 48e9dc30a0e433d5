"""Stage: compute_advantages. Runs storage/sql/adv_<estimator>.sql in DuckDB over rollouts + grades."""
from __future__ import annotations

from prefect import task

from configs.schema import Config
from storage.advantages import compute_advantages as run_sql
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import write_parquet
from storage.schemas import ADVANTAGES
from tasks.algos.metrics import advantage_metrics
from tasks.common import STAGE, StageOutput


@task(name="compute_advantages", **STAGE)
def compute_advantages(cfg: Config, layout: RunLayout, rollouts: FileRef, grades: FileRef, iteration: int,
                       code_version: str) -> StageOutput:
    table = run_sql(cfg.advantage.estimator, rollouts.path, grades.path, {"eps": cfg.advantage.eps})
    ref = write_parquet(table, ADVANTAGES, layout.advantages(iteration))
    metrics = write_metrics(layout.metrics(iteration, "advantage"), layout.run_id, iteration, "advantage",
                            advantage_metrics(table["advantage"].to_pylist()))
    return StageOutput(artifact=ref, metrics=metrics)
