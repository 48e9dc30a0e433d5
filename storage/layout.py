"""The run directory layout: every path segflow writes is built here and nowhere else.

<runs_dir>/<run_id>/
    config.yaml                      resolved config, written before any work starts
    run.parquet                      one row describing the run            (catalog view `runs`)
    data/prompts-<split>.parquet     prepared prompts                      (`prompts`)
    models/warm_start -> ../../shared/warm_start/<key>   SFT'd tiny model: a link to the shared one below
    iterations/<k>/rollouts.parquet  sampled responses of iteration k      (`rollouts`)
    iterations/<k>/grades.parquet                                          (`grades`)
    iterations/<k>/ref_logprobs.parquet reference-model log-probs + KL, when train.kl_coef > 0 (`ref_logprobs`)
    iterations/<k>/advantages.parquet                                      (`advantages`)
    iterations/<k>/mc_rollouts.parquet   SPO-chain Monte Carlo continuations (`mc_rollouts`)
    iterations/<k>/segments.parquet      SPO-chain segments with values  (`segments`)
    iterations/<k>/segment_advantages.parquet                              (`segment_advantages`)
    iterations/<k>/tree_nodes.parquet    SPO-tree nodes with tokens and leaf grades (`tree_nodes`)
    iterations/<k>/tree_advantages.parquet node values and edge advantages          (`tree_advantages`)
    iterations/<k>/replay_buffer.parquet edges left in the buffer after iteration k (`replay_buffer`)
    iterations/<k>/train_edges.parquet   edges trained in iteration k              (`train_edges`)
    iterations/<k>/metrics-<stage>.parquet                                 (`metrics`)
    checkpoints/<k>/                 policy after training in iteration k (HF directory + optimizer)
    eval/<k>/results.parquet         evaluation of the policy after iteration k (0 = start) (`eval_results`)
    eval/<k>/metrics-eval.parquet                                          (`metrics`)
    summary.json

<runs_dir>/shared/                   built once, used by every run that needs it (not a run: no config.yaml)
    warm_start/<key>/                SFT'd tiny model (HF directory) + warm_start.json (its inputs and metrics);
                                     <key> digests those inputs (tasks/prepare.warm_start_inputs)

<runs_dir>/evals/<eval_id>/            a `segflow eval` evaluation (EvalLayout)
    spec.json                        what was evaluated: checkpoints, datasets, k, budgets, seed, prices
    <checkpoint>/<dataset>/<budget>/samples.parquet   graded answers             (`eval_samples`)
    <checkpoint>/<dataset>/<budget>/metrics.json      metrics with standard errors
    summary.json                     every metrics row, paired comparisons, frontier cost-of-pass
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

# Catalog view -> glob relative to the runs directory. The single source for where each table lives.
TABLE_GLOBS = {
    "runs": "*/run.parquet",
    "prompts": "*/data/prompts-*.parquet",
    "rollouts": "*/iterations/*/rollouts.parquet",
    "grades": "*/iterations/*/grades.parquet",
    "ref_logprobs": "*/iterations/*/ref_logprobs.parquet",
    "advantages": "*/iterations/*/advantages.parquet",
    "mc_rollouts": "*/iterations/*/mc_rollouts.parquet",
    "segments": "*/iterations/*/segments.parquet",
    "segment_advantages": "*/iterations/*/segment_advantages.parquet",
    "tree_nodes": "*/iterations/*/tree_nodes.parquet",
    "tree_advantages": "*/iterations/*/tree_advantages.parquet",
    "replay_buffer": "*/iterations/*/replay_buffer.parquet",
    "train_edges": "*/iterations/*/train_edges.parquet",
    "train_samples": "*/iterations/*/train_samples.parquet",
    "metrics": "*/**/metrics-*.parquet",
    "eval_results": "*/eval/*/results.parquet",
    "eval_samples": "evals/**/samples.parquet",
}


# `<runs_dir>/shared/`: artifacts several runs share. No file in it matches a TABLE_GLOBS pattern and it holds
# no config.yaml or summary.json, so the catalog and every command that lists runs pass it by.
SHARED_DIR = "shared"


def _k(iteration: int) -> str:
    return f"{iteration:04d}"


class RunLayout(BaseModel):
    """Paths of one run. A pydantic model so it hashes stably as a Prefect task input."""

    model_config = ConfigDict(frozen=True)
    runs_dir: str
    run_id: str

    @property
    def root(self) -> Path:
        return Path(self.runs_dir) / self.run_id

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_table(self) -> Path:
        return self.root / "run.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def invocations(self) -> Path:
        """One line per invocation that took the run's lock: the counter in the flow run's name (`<run_id>#2`)."""
        return self.root / "invocations.log"

    def prompts(self, split: str) -> Path:
        return self.root / "data" / f"prompts-{split}.parquet"

    @property
    def warm_start(self) -> Path:
        """The run's link to the shared warm start it started from (`shared_warm_start`)."""
        return self.root / "models" / "warm_start"

    def shared_warm_start(self, key: str) -> Path:
        """The warm start built from the inputs digested as `key`, shared by every run of this runs directory."""
        return Path(self.runs_dir) / SHARED_DIR / "warm_start" / key

    def iteration_dir(self, iteration: int) -> Path:
        return self.root / "iterations" / _k(iteration)

    def rollouts(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "rollouts.parquet"

    def grades(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "grades.parquet"

    def ref_logprobs(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "ref_logprobs.parquet"

    def advantages(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "advantages.parquet"

    def mc_rollouts(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "mc_rollouts.parquet"

    def segments(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "segments.parquet"

    def segment_advantages(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "segment_advantages.parquet"

    def tree_nodes(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "tree_nodes.parquet"

    def tree_advantages(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "tree_advantages.parquet"

    def replay_buffer(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "replay_buffer.parquet"

    def train_edges(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "train_edges.parquet"

    def train_samples(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "train_samples.parquet"

    def metrics(self, iteration: int, stage: str) -> Path:
        return self.iteration_dir(iteration) / f"metrics-{stage}.parquet"

    def checkpoint(self, iteration: int) -> Path:
        return self.root / "checkpoints" / _k(iteration)

    def eval_results(self, iteration: int) -> Path:
        return self.root / "eval" / _k(iteration) / "results.parquet"

    def eval_metrics(self, iteration: int) -> Path:
        return self.root / "eval" / _k(iteration) / "metrics-eval.parquet"


class EvalLayout(BaseModel):
    """Paths of one `segflow eval` evaluation."""

    model_config = ConfigDict(frozen=True)
    runs_dir: str
    eval_id: str

    @property
    def root(self) -> Path:
        return Path(self.runs_dir) / "evals" / self.eval_id

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def cell(self, checkpoint: str, dataset: str, budget: int) -> Path:
        return self.root / checkpoint / dataset / str(budget)
