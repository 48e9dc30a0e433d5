"""Every advantage estimator, declared once: its family, SQL file, numpy twin and config section.

The family decides how a run makes the estimator's inputs and trains on its output; flows, stages, the
CLI and the config ask the spec (spec_of(name), or cfg.advantage.spec) instead of testing names:

  response  one advantage per response from rollouts + grades (GRPO and kin); parameters in `advantage`
  segment   per-segment advantages from Monte Carlo values over segments.parquet (SPO-chain); `spo`
  tree      edge advantages from tree rollouts and a replay buffer over tree_nodes.parquet (SPO-tree); `tree`

Stdlib only, so configs/schema.py and storage import it without pulling the numpy core in; the twin is
named as "module:function" (tests/test_estimator_registry.py resolves every one).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import Enum


class Family(Enum):
    RESPONSE = "response"
    SEGMENT = "segment"
    TREE = "tree"


# The files of an iteration (tasks/advantage.FILES keys) each family's advantage stage reads.
INPUTS: dict[Family, tuple[str, ...]] = {
    Family.RESPONSE: ("rollouts", "grades"),
    Family.SEGMENT: ("segments",),
    Family.TREE: ("nodes",),
}


@dataclass(frozen=True)
class EstimatorSpec:
    name: str
    family: Family
    section: str  # the Config section holding its parameters (a bare `segflow advantages --set` key goes there)
    twin: str  # "module:function" of the numpy twin the SQL file is tested against

    @property
    def sql_file(self) -> str:
        """Its file under storage/sql (house rule 2: the config name is the file name)."""
        return f"adv_{self.name}.sql"

    @property
    def inputs(self) -> tuple[str, ...]:
        """The iteration files its advantage stage reads (before an optional KL-in-reward file)."""
        return INPUTS[self.family]

    @property
    def reads_segments(self) -> bool:
        """SPO-chain: a spo_values stage writes segments (Monte Carlo values, cutpoints); advantages are per
        segment, spread over tokens; only it can train its continuations (spo.mc_train)."""
        return self.family is Family.SEGMENT

    @property
    def grows_trees(self) -> bool:
        """SPO-tree: iterations are tree_rollouts -> advantages -> replay_buffer -> train, and train the
        replay buffer's taken edges (prefix = prompt + ancestors), not responses."""
        return self.family is Family.TREE

    @property
    def monte_carlo_values(self) -> bool:
        """SPO (either family): values come from sampled rollouts, not groups, so spo.normalize whitens the
        advantages and a KL penalty can only be in the loss."""
        return self.family is not Family.RESPONSE


def _response(name: str) -> EstimatorSpec:
    return EstimatorSpec(name, Family.RESPONSE, "advantage", f"tasks.algos.estimators:{name}")


REGISTRY: dict[str, EstimatorSpec] = {
    s.name: s
    for s in (
        *map(_response, ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "rec", "opmd", "asymre")),
        EstimatorSpec("spo_chain", Family.SEGMENT, "spo", "tasks.algos.spo_chain:segment_advantages"),
        EstimatorSpec("spo_tree", Family.TREE, "tree", "tasks.algos.spo_tree:edge_advantages"),
    )
}
ESTIMATORS = tuple(REGISTRY)  # the names advantage.estimator accepts


def spec_of(name: str) -> EstimatorSpec:
    """The registered spec of estimator `name`; ValueError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"estimator {name!r} is not registered; known: {', '.join(sorted(REGISTRY))}") from None


def names(family: Family) -> tuple[str, ...]:
    """The registered estimators of one family, in registry order."""
    return tuple(s.name for s in REGISTRY.values() if s.family is family)


def twin(name: str):
    """The numpy twin of estimator `name` (its spec's "module:function"), imported on first use."""
    module, fn = spec_of(name).twin.split(":")
    return getattr(importlib.import_module(module), fn)
