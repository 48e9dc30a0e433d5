"""Stage: compute_advantages. Runs storage/sql/adv_<estimator>.sql in DuckDB over rollouts + grades."""
from __future__ import annotations

from prefect import task

from configs.schema import Config
from storage.advantages import compute_advantages as run_sql
from storage.advantages import compute_segment_advantages
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import write_parquet
from storage.schemas import ADVANTAGES, SEGMENT_ADVANTAGES
from tasks.algos.metrics import advantage_metrics
from tasks.common import STAGE, StageOutput


def sql_params(cfg: Config) -> dict:
    """Named SQL parameters: the advantage section, plus the KL-in-reward coefficient."""
    in_reward = cfg.train.kl_coef > 0 and cfg.train.kl_placement == "reward"
    return {**cfg.advantage.model_dump(), "kl_reward_coef": cfg.train.kl_coef if in_reward else 0.0}


def segment_sql_params(cfg: Config) -> dict:
    """Named parameters of adv_spo_chain.sql: the spo section, and whether the probability mask is on."""
    return {"normalize": cfg.spo.normalize, "masked": cfg.train.prob_mask_rho is not None,
            "whiten_eps": cfg.spo.whiten_eps}


@task(name="compute_advantages", **STAGE)
def compute_advantages(cfg: Config, layout: RunLayout, rollouts: FileRef, grades: FileRef, reference: FileRef | None,
                       segments: FileRef | None, iteration: int, code_version: str) -> StageOutput:
    """`reference` is the reference log-probs file when the KL penalty is in the reward, else None;
    `segments` the spo_values output for a segment estimator (SPO-chain), else None."""
    if segments is not None:
        table = compute_segment_advantages(cfg.advantage.estimator, segments.path, segment_sql_params(cfg))
        ref = write_parquet(table, SEGMENT_ADVANTAGES, layout.segment_advantages(iteration))
    else:
        table = run_sql(cfg.advantage.estimator, rollouts.path, grades.path, sql_params(cfg),
                        kl=reference.path if reference is not None else None)
        ref = write_parquet(table, ADVANTAGES, layout.advantages(iteration))
    metrics = write_metrics(layout.metrics(iteration, "advantage"), layout.run_id, iteration, "advantage",
                            advantage_metrics(table["advantage"].to_pylist()))
    return StageOutput(artifact=ref, metrics=metrics)
