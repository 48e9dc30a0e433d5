"""Stage: compute_advantages. Runs storage/sql/adv_<estimator>.sql in DuckDB over rollouts + grades."""
from __future__ import annotations

from prefect import task

from configs.schema import Config, TreeSection
from storage.advantages import compute_advantages as run_sql
from storage.advantages import compute_segment_advantages, compute_tree_advantages
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import write_parquet
from storage.schemas import ADVANTAGES, SEGMENT_ADVANTAGES, TREE_ADVANTAGES
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


def tree_sql_params(t: TreeSection) -> dict:
    """Named parameters of adv_spo_tree.sql: the tree section's value and advantage rules."""
    return {"value_mode": t.value, "sibling_std": t.sibling_std, "eps": t.eps, "drop_zero": t.drop_zero}


def tree_metrics(table) -> dict[str, float]:
    """Kept edges and the advantage distribution over them (the edges that can train)."""
    non_root = sum(1 for d in table["depth"].to_pylist() if d > 0)
    kept = table.filter(table["kept"])
    return {**advantage_metrics(kept["advantage"].to_pylist()), "kept_edges": kept.num_rows,
            "frac_edges_kept": kept.num_rows / max(1, non_root)}


@task(name="compute_advantages", **STAGE)
def compute_advantages(cfg: Config, layout: RunLayout, rollouts: FileRef, grades: FileRef, reference: FileRef | None,
                       segments: FileRef | None, iteration: int, code_version: str) -> StageOutput:
    """`reference` is the reference log-probs file when the KL penalty is in the reward, else None;
    `segments` the spo_values output for a segment estimator (SPO-chain), else None. For SPO-tree
    `rollouts` is the tree_nodes file."""
    if cfg.advantage.estimator == "spo_tree":
        table = compute_tree_advantages(rollouts.path, tree_sql_params(cfg.tree))
        ref = write_parquet(table, TREE_ADVANTAGES, layout.tree_advantages(iteration))
        metrics = write_metrics(layout.metrics(iteration, "advantage"), layout.run_id, iteration, "advantage",
                                tree_metrics(table))
        return StageOutput(artifact=ref, metrics=metrics)
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
