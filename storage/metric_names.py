"""Every metric segflow writes: its namespaced name, the flat name runs stored before namespaces, and what
it measures. docs/metrics.md is generated from ALL_METRICS (`python -m storage.metric_names`; a test keeps
it current).

    qualified("clipfrac") == "actor/clipfrac"      flat("actor/clipfrac") == flat("clipfrac") == "clipfrac"

Stages build their metric dicts with the flat names, the short keys the flow and the health checks index by.
storage/metrics.py stores the namespaced name in the METRICS files' `name` column and reads either form back
as flat, and the catalog's `metrics` view shows namespaced names for old and new runs alike.

A flat name missing from the list maps to `other/<name>` instead of raising: a stage that gains a metric must
not fail a run at its last write, after the work is done. The tests fail on any `other/` name instead (every
metrics file of the end-to-end runs, and the literal keys of the stages' source), so none goes undocumented.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tasks.algos.grading import STATUSES
from tasks.datasets.rows import SKIP_REASONS

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
UNLISTED = "other"  # the namespace of a flat name missing from ALL_METRICS
PLACEHOLDER = "<k>"  # in the names of a family of metrics: any non-negative integer (`replay/buffer_age_<k>`)

# Namespace -> what its metrics describe, in the order the documentation lists them.
NAMESPACES = {
    "data": "prepared prompts (`prepare_dataset`, iteration 0)",
    "sft": "the tiny model's warm start (`warm_start`, iteration 0)",
    "rollout": "sampled responses (`generate_rollouts`, and `tree_rollouts` for SPO-tree)",
    "reward": "graded responses and their groups (`grade`, and `tree_rollouts` for SPO-tree leaves)",
    "kl": "divergence from the reference policy (`reference_logprobs`, `train_policy`)",
    "spo": "SPO-chain segments and their Monte Carlo values (`spo_values`)",
    "tree": "SPO-tree trees and edges (`tree_rollouts`, `compute_advantages`)",
    "replay": "SPO-tree's replay buffer of edges (`replay_buffer`)",
    "adv": "advantages of the responses, or of SPO-tree's kept edges (`compute_advantages`)",
    "actor": "the policy update (`train_policy`); per-token figures are per optimiser step, averaged over steps",
    "health": "signs of a broken update that the health checks read (`train_policy`)",
    "eval": "held-out evaluation of the policy after iteration k, 0 = start (`evaluate`)",
    "perf": "seconds and throughput of the stages' own work",
}


@dataclass(frozen=True)
class Metric:
    """One metric, or a family of them when the names hold PLACEHOLDER (one per value of a config-sized range)."""

    name: str  # namespaced, as stored: "actor/clipfrac"
    legacy: str  # flat, as stored before namespaces and as stages key it: "clipfrac"
    description: str  # meaning and unit

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def is_family(self) -> bool:
        return PLACEHOLDER in self.legacy

    @cached_property
    def legacy_regex(self) -> str:
        r"""A family's flat names as a regular expression (Python re and DuckDB's RE2 alike), the integer
        captured: "buffer_age_<k>" -> r"buffer_age_(\d+)"."""
        return re.escape(self.legacy).replace(re.escape(PLACEHOLDER), r"(\d+)")

    @cached_property
    def name_regex(self) -> str:
        return re.escape(self.name).replace(re.escape(PLACEHOLDER), r"(\d+)")


def _m(legacy: str, name: str, description: str) -> Metric:
    return Metric(name, legacy, description)


def _data() -> list[Metric]:
    out = []
    for split in ("train", "test"):
        out += [
            _m(f"{split}_prompts", f"data/{split}_prompts", f"prompts kept in the {split} split (count)"),
            _m(
                f"{split}_dropped_too_long",
                f"data/{split}_dropped_too_long",
                f"{split} prompts dropped for exceeding data.max_prompt_tokens (count)",
            ),
            _m(
                f"{split}_skipped_bad_rows",
                f"data/{split}_skipped_bad_rows",
                f"{split} rows skipped under data.on_bad_row='skip', all reasons (count)",
            ),
        ]
        out += [
            _m(
                f"{split}_skipped_{reason}",
                f"data/{split}_skipped_{reason}",
                f"{split} rows skipped for reason `{reason}` (count)",
            )
            for reason in SKIP_REASONS
        ]
    return out


# Graded statuses other than `ok` (tasks/algos/grading.py STATUSES): share of responses with that status.
_STATUS_FRACTIONS = [
    _m("frac_truncated", "rollout/truncated", "share of responses cut at rollout.max_tokens (graded `truncated`)")
] + [
    _m(f"frac_{s}", f"reward/frac_{s}", f"share of responses graded `{s}`")
    for s in STATUSES
    if s not in ("ok", "truncated")
]

ADV_HIST_BINS = 10  # tasks/algos/metrics.py advantage_metrics(bins=10)

ALL_METRICS: tuple[Metric, ...] = (
    *_data(),
    _m("sft_loss", "sft/loss", "SFT cross-entropy on completion tokens, mean of the last 50 steps (nats/token)"),
    _m("sft_steps", "sft/steps", "SFT optimiser steps (warm_start.steps)"),
    _m("parameters", "sft/parameters", "parameters of the tiny model (count)"),
    _m("sft_reused", "sft/reused", "1 when the warm start was reused from an earlier run's build, 0 when built"),
    _m("samples", "rollout/samples", "responses sampled this iteration (count)"),
    _m("generated_tokens", "rollout/generated_tokens", "completion tokens sampled (count; trees: all nodes)"),
    _m("mean_completion_tokens", "rollout/mean_completion_tokens", "completion tokens per response (mean)"),
    _m("frac_finish_length", "rollout/finish_length", "share of responses that stopped at max_tokens"),
    _m("rollout_engines", "rollout/engines", "engine replicas that sampled (rollout.shards)"),
    *_STATUS_FRACTIONS,
    _m("reward_mean", "reward/mean", "reward per response (mean)"),
    _m("accuracy", "reward/accuracy", "share of responses graded `ok`"),
    _m("groups", "reward/groups", "prompts graded, each a group of samples (count)"),
    _m("frac_zero_std_groups", "reward/frac_zero_std_groups", "share of groups whose rewards are all equal"),
    _m("frac_groups_any_correct", "reward/frac_groups_any_correct", "share of groups with a correct response"),
    _m(
        "frac_ok_wrong_steps",
        "reward/frac_ok_wrong_steps",
        "arith: share of correct responses whose worked steps are wrong",
    ),
    _m(
        "kl_ref_sampled_per_token",
        "kl/ref_sampled_per_token",
        "KL(policy || reference) on the sampled tokens, per completion token (nats)",
    ),
    _m(
        "kl_ref_sampled_per_response",
        "kl/ref_sampled_per_response",
        "KL(policy || reference) on the sampled tokens, summed per response (nats, mean over responses)",
    ),
    _m("kl_ref", "kl/ref", "KL to the reference in the loss, per trained token (nats; train.kl_coef > 0)"),
    _m("segments_per_response", "spo/segments_per_response", "segments a response is cut into (mean)"),
    _m("cutpoints_per_response", "spo/cutpoints_per_response", "cutpoints per response (mean)"),
    _m("frac_tokens_cutpoint", "spo/frac_tokens_cutpoint", "share of completion tokens that are cutpoints"),
    _m("mc_prefixes", "spo/mc_prefixes", "segment-boundary prefixes needing a Monte Carlo value (count)"),
    _m("mc_prefixes_unique", "spo/mc_prefixes_unique", "distinct prefixes sampled after deduplication (count)"),
    _m("mc_dedup_savings", "spo/mc_dedup_savings", "share of prefixes whose samples a shared prefix paid for"),
    _m("mc_settled_early", "spo/mc_settled_early", "share of sampled prefixes that stopped at spo.mc_samples_min"),
    _m("mc_rollouts", "spo/mc_rollouts", "Monte Carlo continuations sampled (count)"),
    _m("mc_generated_tokens", "spo/mc_generated_tokens", "Monte Carlo continuation tokens sampled (count)"),
    _m("mc_trained_samples", "spo/mc_trained_samples", "Monte Carlo continuations that train (spo.mc_train; count)"),
    _m(
        "mc_tokens_per_trained_token",
        "spo/mc_tokens_per_trained_token",
        "Monte Carlo tokens per token that trains (cost ratio)",
    ),
    _m("trees", "tree/trees", "trees grown, one per question (count)"),
    _m("nodes_per_tree", "tree/nodes_per_tree", "nodes per tree, root excluded (mean)"),
    _m("leaves_per_tree", "tree/leaves_per_tree", "leaves per tree (mean)"),
    _m("early_leaves_per_tree", "tree/early_leaves_per_tree", "leaves that finished above the last level (mean)"),
    _m("truncated_leaves_per_tree", "tree/truncated_leaves_per_tree", "leaves cut at max_tokens per tree (mean)"),
    _m("mean_leaf_response_tokens", "tree/mean_leaf_response_tokens", "response tokens per leaf, root to leaf (mean)"),
    _m("kept_edges", "tree/kept_edges", "edges kept for training after tree.drop_zero (count)"),
    _m("frac_edges_kept", "tree/frac_edges_kept", "share of non-root edges kept"),
    _m("edges_added", "replay/edges_added", "edges added to the buffer this iteration (count)"),
    _m("edges_expired", "replay/edges_expired", "edges dropped for exceeding tree.buffer_age (count)"),
    _m("edges_trained", "replay/edges_trained", "edges taken from the buffer to train (count)"),
    _m("trained_edge_tokens", "replay/trained_edge_tokens", "completion tokens of the trained edges (count)"),
    _m("questions_trained", "replay/questions_trained", "distinct questions among the trained edges (count)"),
    _m("buffer_size", "replay/buffer_size", "edges left in the buffer after this iteration (count)"),
    _m(
        "buffer_age_<k>",
        "replay/buffer_age_<k>",
        "edges trained or left in the buffer that were added k iterations ago (count; k < tree.buffer_age)",
    ),
    _m("adv_mean", "adv/mean", "advantage (mean)"),
    _m("adv_std", "adv/std", "advantage (standard deviation, population)"),
    _m("adv_min", "adv/min", "advantage (minimum)"),
    _m("adv_max", "adv/max", "advantage (maximum)"),
    _m("frac_adv_zero", "adv/frac_zero", "share of advantages exactly 0 (no learning signal)"),
    *(
        _m(
            f"adv_hist_{i:02d}",
            f"adv/hist_{i:02d}",
            f"advantages in bin {i} of {ADV_HIST_BINS} equal-width bins over [adv/min, adv/max] (count)",
        )
        for i in range(ADV_HIST_BINS)
    ),
    _m("loss", "actor/loss", "policy loss per optimiser step (mean)"),
    _m("clipfrac", "actor/clipfrac", "share of trained tokens whose ratio was clipped (any side)"),
    _m("clipfrac_upper", "actor/clipfrac_upper", "share of trained tokens clipped above 1 + train.clip_eps_high"),
    _m("clipfrac_lower", "actor/clipfrac_lower", "share of trained tokens clipped below 1 - train.clip_eps"),
    _m(
        "clipfrac_dual",
        "actor/clipfrac_dual",
        "share of trained tokens cut by dual-clip (A < 0, ratio > train.dual_clip_c)",
    ),
    _m("ratio_mean", "actor/ratio_mean", "importance ratio pi / pi_old per trained token (mean)"),
    _m("approx_kl", "actor/approx_kl", "KL(pi_old || pi) estimate per trained token (nats)"),
    _m("grad_norm", "actor/grad_norm", "gradient norm before clipping (mean over steps)"),
    _m("lr", "actor/lr", "learning rate after the last step"),
    _m("entropy", "actor/entropy", "policy entropy per completion token before the update (nats)"),
    _m("logprob_gap_mean", "actor/logprob_gap_mean", "|trainer - sampler log-prob| per token (mean; ~0 = agree)"),
    _m("logprob_gap_max", "actor/logprob_gap_max", "|trainer - sampler log-prob| (maximum over tokens)"),
    _m("train_samples", "actor/samples", "sequences trained on (count)"),
    _m("optimizer_steps", "actor/optimizer_steps", "optimiser steps taken (count; skipped steps excluded)"),
    _m("trained_tokens", "actor/trained_tokens", "tokens that carried gradient, summed over steps (count)"),
    _m("frac_tokens_trained", "actor/frac_tokens_trained", "share of completion tokens kept by the p < rho mask"),
    _m("trainable_parameters", "actor/trainable_parameters", "parameters that train (count; LoRA: adapters)"),
    _m("world_size", "actor/world_size", "training processes (train.processes > 1 only)"),
    _m("skipped_steps", "health/skipped_steps", "steps skipped for a non-finite loss or gradient (count)"),
    _m("consecutive_skips", "health/consecutive_skips", "skipped steps in a row at the end (carried on)"),
    _m(
        "skipped_micro_batches",
        "health/skipped_micro_batches",
        "micro-batches skipped for a ratio over train.skip_ratio_above (count)",
    ),
    _m("frac_master_changed", "health/frac_master_changed", "share of trained weights this update changed"),
    _m("ranks_in_sync", "health/ranks_in_sync", "1 when every training process ended on the same weights"),
    _m("eval_accuracy", "eval/accuracy", "greedy held-out accuracy (share graded `ok`)"),
    _m("eval_reward_mean", "eval/reward_mean", "greedy held-out reward (mean)"),
    _m("eval_frac_truncated", "eval/truncated", "share of greedy answers cut at max_tokens"),
    _m("eval_mean_tokens", "eval/mean_tokens", "greedy answer tokens (mean)"),
    _m("eval_problems", "eval/problems", "held-out problems evaluated (count)"),
    _m("eval_avg_at_k", "eval/avg_at_k", "share of sampled answers correct, k per problem (eval.samples > 0)"),
    _m("eval_pass_at_k", "eval/pass_at_k", "share of problems with a correct sampled answer among k"),
    _m("eval_k", "eval/k", "sampled answers per problem (eval.samples)"),
    _m("generation_seconds", "perf/generation_seconds", "seconds sampling responses (or trees)"),
    _m("tokens_per_second", "perf/generation_tokens_per_second", "sampled tokens per second of generation"),
    _m("engine_start_seconds", "perf/engine_start_seconds", "seconds starting the engine (0 when running)"),
    _m("weight_load_seconds", "perf/weight_load_seconds", "seconds loading new weights into the engine"),
    _m("sft_seconds", "perf/sft_seconds", "seconds of warm-start SFT"),
    _m("spo_prob_seconds", "perf/spo_prob_seconds", "seconds teacher-forcing probabilities for SPO cutpoints"),
    _m("mc_seconds", "perf/mc_seconds", "seconds sampling Monte Carlo continuations"),
    _m("mc_tokens_per_second", "perf/mc_tokens_per_second", "Monte Carlo tokens per second of sampling"),
    _m("mc_engine_start_seconds", "perf/mc_engine_start_seconds", "engine start seconds of spo_values"),
    _m("mc_weight_load_seconds", "perf/mc_weight_load_seconds", "weight load seconds of spo_values"),
    _m("train_seconds", "perf/train_seconds", "seconds of the policy update"),
    _m("train_tokens_per_second", "perf/train_tokens_per_second", "trained tokens per second of update"),
    _m("train_launch_seconds", "perf/train_launch_seconds", "seconds launching and joining training processes"),
    _m("eval_generation_seconds", "perf/eval_generation_seconds", "seconds sampling held-out answers"),
    _m("eval_engine_start_seconds", "perf/eval_engine_start_seconds", "engine start seconds of evaluate"),
    _m("eval_weight_load_seconds", "perf/eval_weight_load_seconds", "weight load seconds of evaluate"),
    _m(
        "generated_tokens_per_sample",
        "perf/generated_tokens_per_sample",
        "rollout + Monte Carlo tokens per training sample (the flow's table; not stored)",
    ),
)

_BY_LEGACY = {m.legacy: m for m in ALL_METRICS if not m.is_family}
_BY_NAME = {m.name: m for m in ALL_METRICS if not m.is_family}
FAMILIES = tuple(m for m in ALL_METRICS if m.is_family)
_LISTED = {**{m.name: m for m in ALL_METRICS}, **{m.legacy: m for m in ALL_METRICS}}  # families' templates too


def _in_family(name: str, namespaced: bool) -> tuple[Metric, str] | None:
    """(family, its integer as text) when `name` is one of a family's names, in the form asked for."""
    for fam in FAMILIES:
        hit = re.fullmatch(fam.name_regex if namespaced else fam.legacy_regex, name)
        if hit:
            return fam, hit.group(1)
    return None


def qualified(name: str) -> str:
    """The namespaced name of a flat metric name: "clipfrac" -> "actor/clipfrac", "buffer_age_3" ->
    "replay/buffer_age_3"; a name not in ALL_METRICS -> "other/<name>". A name that is already namespaced (has
    a "/") is returned as it is."""
    if "/" in name:
        return name
    if name in _BY_LEGACY:
        return _BY_LEGACY[name].name
    found = _in_family(name, namespaced=False)
    return found[0].name.replace(PLACEHOLDER, found[1]) if found else f"{UNLISTED}/{name}"


def flat(name: str) -> str:
    """The flat name of a metric given in either form: "actor/clipfrac" or "clipfrac" -> "clipfrac";
    "other/x" -> "x". A namespaced name not in the list keeps its namespace."""
    if name in _BY_NAME:
        return _BY_NAME[name].legacy
    found = _in_family(name, namespaced=True)
    if found:
        return found[0].legacy.replace(PLACEHOLDER, found[1])
    return name.removeprefix(f"{UNLISTED}/")


def describe(name: str) -> Metric | None:
    """The listed metric (or family) of a name in either form, else None."""
    found = _LISTED.get(name)
    if found is None and (hit := _in_family(name, namespaced="/" in name)):
        found = hit[0]
    return found


def render() -> str:
    """docs/metrics.md: one table per namespace, in NAMESPACES order."""
    lines = [
        "# Metrics reference",
        "",
        "Generated from `storage/metric_names.py` by `python -m storage.metric_names` (a test keeps it current).",
        "Metrics files (`iterations/<k>/metrics-<stage>.parquet`, `eval/<k>/metrics-eval.parquet`) store the",
        "namespaced name; runs written before namespaces store the flat name, and `segflow sql` (view `metrics`),",
        '`segflow report` and `segflow compare` read both. `segflow sql "select * from metric_names"` lists',
        "this table. A name missing here would read as `other/<name>`; `<k>` in a name stands for one metric per",
        "integer k.",
        "",
    ]
    for ns, about in NAMESPACES.items():
        lines += [f"## `{ns}/`", "", about[0].upper() + about[1:] + ".", ""]
        lines += ["| name | flat name (older runs) | meaning (unit) |", "|---|---|---|"]
        lines += [
            f"| `{m.name}` | `{m.legacy}` | {m.description.replace('|', chr(92) + '|')} |"
            for m in ALL_METRICS
            if m.namespace == ns
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    DOC.write_text(render())
    sys.stdout.write(f"wrote {DOC}\n")
