"""Stage: compute_advantages. Runs storage/sql/adv_<estimator>.sql in DuckDB over one iteration's files.

advantage_table() is the whole computation, config -> SQL parameters -> table. The Prefect task and
`segflow advantages` both call it, so recomputing a run's iteration is the run's own computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
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
from tasks.algos.registry import Family
from tasks.common import STAGE, StageOutput
from tasks.train_samples import rollout_samples, write_train_samples


def kl_in_reward(cfg: Config) -> bool:
    """The KL penalty is subtracted from each score before the estimator (else it is in the loss, or off)."""
    return cfg.train.kl_coef > 0 and cfg.train.kl_placement == "reward"


def sql_params(cfg: Config) -> dict:
    """Named SQL parameters: the advantage section, plus the KL-in-reward coefficient."""
    return {**cfg.advantage.model_dump(), "kl_reward_coef": cfg.train.kl_coef if kl_in_reward(cfg) else 0.0}


def segment_sql_params(cfg: Config) -> dict:
    """Named parameters of adv_spo_chain.sql: the spo section, and the probability mask's rho (None = off)."""
    return {"normalize": cfg.spo.normalize, "rho": cfg.train.prob_mask_rho, "whiten_eps": cfg.spo.whiten_eps}


def tree_sql_params(t: TreeSection) -> dict:
    """Named parameters of adv_spo_tree.sql: the tree section's value and advantage rules."""
    return {"value_mode": t.value, "sibling_std": t.sibling_std, "eps": t.eps, "drop_zero": t.drop_zero}


def tree_metrics(table) -> dict[str, float]:
    """Kept edges and the advantage distribution over them (the edges that can train)."""
    non_root = sum(1 for d in table["depth"].to_pylist() if d > 0)
    kept = table.filter(table["kept"])
    return {
        **advantage_metrics(kept["advantage"].to_pylist()),
        "kept_edges": kept.num_rows,
        "frac_edges_kept": kept.num_rows / max(1, non_root),
    }


@dataclass(frozen=True)
class AdvantageInputs:
    """The files one iteration's advantages are computed from; each estimator family reads its own.

    rollouts + grades: response-level estimators (and `kl`, ref_logprobs.parquet, when the KL penalty is in
    the reward); segments: spo_chain (segments.parquet); nodes: spo_tree (tree_nodes.parquet).
    """

    rollouts: Path | None = None
    grades: Path | None = None
    kl: Path | None = None
    segments: Path | None = None
    nodes: Path | None = None


# Each file the stage can read: the run's path for it, and what it is (for messages).
FILES = {
    "rollouts": (RunLayout.rollouts, "rollouts.parquet"),
    "grades": (RunLayout.grades, "grades.parquet"),
    "kl": (RunLayout.ref_logprobs, "ref_logprobs.parquet, read with train.kl_coef > 0 and kl_placement='reward'"),
    "segments": (RunLayout.segments, "segments.parquet"),
    "nodes": (RunLayout.tree_nodes, "tree_nodes.parquet"),
}


def needed_files(cfg: Config) -> tuple[str, ...]:
    """The AdvantageInputs fields cfg's estimator reads (Config allows a KL in the reward for the response
    family only)."""
    return cfg.advantage.spec.inputs + (("kl",) if kl_in_reward(cfg) else ())


def run_inputs(cfg: Config, layout: RunLayout, iteration: int) -> AdvantageInputs:
    """The files of a run's iteration that the flow hands this stage (the upstream stages write them there)."""
    return AdvantageInputs(**{name: FILES[name][0](layout, iteration) for name in needed_files(cfg)})


# Each family's advantages file: the run's path for it, and its schema.
ARTIFACTS = {
    Family.RESPONSE: (RunLayout.advantages, ADVANTAGES),
    Family.SEGMENT: (RunLayout.segment_advantages, SEGMENT_ADVANTAGES),
    Family.TREE: (RunLayout.tree_advantages, TREE_ADVANTAGES),
}


def artifact_of(cfg: Config, layout: RunLayout, iteration: int) -> tuple[Path, pa.Schema]:
    """Where the stage writes an iteration's advantages, and the file's schema."""
    path, schema = ARTIFACTS[cfg.advantage.spec.family]
    return path(layout, iteration), schema


def advantage_table(cfg: Config, files: AdvantageInputs) -> pa.Table:
    """The advantages of cfg.advantage.estimator over `files`, every parameter taken from `cfg`.

    Returns schema TREE_ADVANTAGES (spo_tree), SEGMENT_ADVANTAGES (spo_chain) or ADVANTAGES (the rest).
    Raises ValueError naming the missing file when `files` lacks what the estimator reads.
    """
    est = cfg.advantage.estimator
    missing = [name for name in needed_files(cfg) if getattr(files, name) is None]
    if missing:
        raise ValueError(f"advantage.estimator={est!r} needs " + " and ".join(f"{n} ({FILES[n][1]})" for n in missing))
    # The flow hands the KL file over exactly when the penalty is in the reward; given otherwise, it would
    # be ignored without a word.
    if files.kl is not None and "kl" not in needed_files(cfg):
        raise ValueError(
            f"{files.kl}: a KL file is read only with the penalty in the reward, but train.kl_coef="
            f"{cfg.train.kl_coef} and train.kl_placement={cfg.train.kl_placement!r}"
        )
    family = cfg.advantage.spec.family
    if family is Family.TREE:
        return compute_tree_advantages(est, files.nodes, tree_sql_params(cfg.tree))
    if family is Family.SEGMENT:
        return compute_segment_advantages(est, files.segments, segment_sql_params(cfg))
    return run_sql(est, files.rollouts, files.grades, sql_params(cfg), kl=files.kl)


def _path(ref: FileRef | None) -> Path | None:
    return Path(ref.path) if ref is not None else None


@task(name="compute_advantages", **STAGE)
def compute_advantages(
    cfg: Config,
    layout: RunLayout,
    iteration: int,
    code_version: str,
    rollouts: FileRef | None = None,
    grades: FileRef | None = None,
    nodes: FileRef | None = None,
    segments: FileRef | None = None,
    reference: FileRef | None = None,
    continuations: FileRef | None = None,
) -> StageOutput:
    """The iteration's advantages (`artifact`) and, for the response and segment families, its training
    samples (`side`, TRAIN_SAMPLES; SPO-tree's come from replay_buffer).

    Each family passes what it has: rollouts + grades (response; `reference` the reference log-probs when
    train.kl_coef > 0, read into the rewards or the samples by train.kl_placement), rollouts + segments
    (SPO-chain's spo_values output; `continuations` its Monte Carlo rollouts when spo.mc_train), or nodes
    (SPO-tree's tree_nodes)."""
    files = AdvantageInputs(
        rollouts=_path(rollouts),
        grades=_path(grades),
        kl=_path(reference) if kl_in_reward(cfg) else None,
        segments=_path(segments),
        nodes=_path(nodes),
    )
    table = advantage_table(cfg, files)
    path, schema = artifact_of(cfg, layout, iteration)
    ref = write_parquet(table, schema, path)
    family = cfg.advantage.spec.family
    values = tree_metrics(table) if family is Family.TREE else advantage_metrics(table["advantage"].to_pylist())
    metrics = write_metrics(layout.metrics(iteration, "advantage"), layout.run_id, iteration, "advantage", values)
    if family is Family.TREE:  # its samples are the replay buffer's taken edges
        return StageOutput(artifact=ref, metrics=metrics)
    rows = rollout_samples(
        cfg,
        rollouts.path,
        ref.path,
        reference=None if reference is None or kl_in_reward(cfg) else reference.path,
        segments=_path(segments),
        continuations=_path(continuations),
    )
    samples = write_train_samples(layout.train_samples(iteration), layout.run_id, iteration, rows)
    return StageOutput(artifact=ref, metrics=metrics, side=samples)
