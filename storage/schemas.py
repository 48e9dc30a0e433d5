"""pyarrow schemas of every artifact. One row per ... is stated on each.

Every table carries `run_id` (and `iteration` where it applies) so the catalog can union all runs.
"""

from __future__ import annotations

import pyarrow as pa

_ids = pa.list_(pa.int32())

# One row per run (written when the run starts).
RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("preset", pa.string()),
        ("estimator", pa.string()),
        ("task", pa.string()),
        ("model", pa.string()),
        ("created_at", pa.timestamp("s", tz="UTC")),
        ("config_json", pa.string()),
    ]
)

# One row per prompt of a split.
PROMPTS = pa.schema(
    [
        ("run_id", pa.string()),
        ("split", pa.string()),
        ("prompt_id", pa.string()),
        ("question", pa.string()),
        ("reference", pa.string()),  # ground-truth final answer, as the grader compares it
        ("solution", pa.string()),  # worked solution when the dataset has one (used for SFT), else ""
        ("prompt_text", pa.string()),
        ("prompt_token_ids", _ids),
    ]
)

# One row per sampled response.
ROLLOUTS = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("policy_version", pa.int32()),  # the iteration whose weights sampled it (0 = start model)
        ("seed", pa.int64()),
        ("prompt_token_ids", _ids),
        ("completion_token_ids", _ids),
        ("sampling_logprobs", pa.list_(pa.float32())),  # per completion token, see logprobs_mode
        ("logprobs_mode", pa.string()),  # "processed_logprobs": after temperature, as sampled
        ("finish_reason", pa.string()),  # stop | length
        ("completion_text", pa.string()),  # decoded once for grading and reading; token ids are the truth
    ]
)

# One row per graded response.
GRADES = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("score", pa.float64()),
        ("status", pa.string()),  # ok | wrong | no_answer | parse_error | timeout | truncated
        ("extracted", pa.string()),
    ]
)

# One row per response: its scalar advantage, broadcast over its tokens by the trainer.
ADVANTAGES = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("estimator", pa.string()),
        ("advantage", pa.float64()),
    ]
)

# One row per response: log-probs of its completion tokens under the reference model (the run's
# start policy) and the summed KL estimate to it, when a KL penalty is configured (train.kl_coef > 0).
REF_LOGPROBS = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("ref_logprobs", pa.list_(pa.float32())),
        ("kl", pa.float64()),  # sum over tokens of train.kl_estimator(log pi_sampler - log pi_ref)
    ]
)

# One row per SPO-chain segment of a response (spo_values stage): its token span [start, end), its
# low-probability tokens and the values at both ends (NaN = unknown).
SEGMENTS = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),  # a response's, or a Monte Carlo continuation's (with prefix_id)
        # null for a response's segment; a trained Monte Carlo continuation's prefix (spo.mc_train), whose one
        # segment spans the continuation's tokens with V(prefix) -> its reward
        ("prefix_id", pa.string()),
        ("segment_index", pa.int32()),
        ("start_token", pa.int32()),
        ("end_token", pa.int32()),
        ("num_cutpoints", pa.int32()),
        ("cutpoints", pa.list_(pa.int32())),  # their response-token indices (segflow segments highlights them)
        ("v_start", pa.float64()),  # V(prefix before the segment): group mean, MC mean, or NaN
        ("n_start", pa.int32()),  # samples behind v_start
        ("v_end", pa.float64()),  # V(prefix after it): MC mean, or the response's own reward for the last one
        ("n_end", pa.int32()),
    ]
)

# One row per segment: its advantage (compute_advantages, storage/sql/adv_spo_chain.sql).
SEGMENT_ADVANTAGES = pa.schema(
    [f for f in SEGMENTS if f.name not in ("n_start", "n_end", "cutpoints")] + [pa.field("advantage", pa.float64())]
)

# One row per Monte Carlo continuation of a deduplicated boundary prefix (SPO-chain values).
MC_ROLLOUTS = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("prefix_id", pa.string()),  # hash of (prompt token ids, response prefix token ids)
        ("prompt_id", pa.string()),
        ("prefix_tokens", pa.int32()),  # response tokens in the prefix (position + 1)
        ("prefix_token_ids", _ids),  # prompt + response prefix: what the continuation was sampled from
        ("sample_index", pa.int32()),
        ("seed", pa.int64()),
        ("completion_token_ids", _ids),
        ("sampling_logprobs", pa.list_(pa.float32())),
        ("finish_reason", pa.string()),
        ("score", pa.float64()),
        ("status", pa.string()),
    ]
)

# One row per SPO-tree node (tree_rollouts stage), roots included. A node's tokens are its own segment;
# its prefix is the prompt + its ancestors' tokens, and [token_start, token_end) is its span in the response.
TREE_NODES = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("policy_version", pa.int32()),
        ("prompt_id", pa.string()),
        ("node_id", pa.string()),  # <prompt_id>/<child index>/... ; the root is <prompt_id>
        ("parent_id", pa.string()),  # null for the root
        ("depth", pa.int32()),  # 0 = root (the prompt)
        ("child_index", pa.int32()),
        ("token_start", pa.int32()),
        ("token_end", pa.int32()),
        ("token_ids", _ids),
        ("sampling_logprobs", pa.list_(pa.float32())),
        ("seed", pa.int64()),
        ("finish_reason", pa.string()),  # stop | length; null for the root
        ("is_leaf", pa.bool_()),
        ("score", pa.float64()),  # leaf reward (truncated leaves: reward.truncated); NaN for interior nodes
        ("status", pa.string()),  # grade status of a leaf; null for interior nodes
    ]
)

# One row per tree node: value, advantage of the edge into it, and whether it trains (adv_spo_tree.sql).
TREE_ADVANTAGES = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("prompt_id", pa.string()),
        ("node_id", pa.string()),
        ("parent_id", pa.string()),
        ("depth", pa.int32()),
        ("is_leaf", pa.bool_()),
        ("n_leaves", pa.int64()),  # leaves with a finite score below the node
        ("value", pa.float64()),
        ("parent_value", pa.float64()),
        ("sibling_std", pa.float64()),
        ("advantage", pa.float64()),  # null for roots
        ("kept", pa.bool_()),
    ]
)

# One row per edge waiting in the SPO-tree replay buffer after an iteration: a self-contained training sample.
REPLAY_BUFFER = pa.schema(
    [
        ("run_id", pa.string()),
        ("added_iteration", pa.int32()),
        ("policy_version", pa.int32()),
        ("prompt_id", pa.string()),
        ("node_id", pa.string()),
        ("depth", pa.int32()),
        ("advantage", pa.float64()),
        ("prefix_token_ids", _ids),  # prompt + the ancestors' tokens
        ("completion_token_ids", _ids),  # the node's own tokens
        ("sampling_logprobs", pa.list_(pa.float32())),  # at generation time (pi_old of the ratio)
    ]
)

# One row per edge trained in an iteration: a buffer row + when it was taken, its age, its normalised advantage.
TRAIN_EDGES = pa.schema(
    [
        *REPLAY_BUFFER,
        pa.field("iteration", pa.int32()),
        pa.field("age", pa.int32()),
        pa.field("train_advantage", pa.float64()),
    ]
)

# One row per sequence an iteration trains (tasks/train_samples.py, the trainer's only input): a response, an
# SPO-chain Monte Carlo continuation, or an SPO-tree edge. Written by compute_advantages (replay_buffer for
# SPO-tree). Lists are float64 so the Python floats the trainer gets round-trip exactly.
_floats = pa.list_(pa.float64())
TRAIN_SAMPLES = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("source", pa.string()),  # response | continuation | edge
        ("prompt_id", pa.string()),  # a response's or an edge's question; null for a continuation
        ("sample_index", pa.int32()),  # a response's or a continuation's; null for an edge
        ("prefix_id", pa.string()),  # a continuation's boundary prefix (MC_ROLLOUTS.prefix_id), else null
        ("node_id", pa.string()),  # an edge's node (TREE_NODES.node_id), else null
        ("prefix_token_ids", pa.list_(pa.int64())),  # prompt (+ response prefix / ancestors' tokens)
        ("completion_token_ids", pa.list_(pa.int64())),  # the tokens that carry gradient
        ("sampling_logprobs", _floats),  # per completion token, as sampled
        ("advantage", pa.float64()),  # broadcast over the tokens when token_advantages is null
        ("token_advantages", _floats),  # per completion token (SPO-chain), else null
        ("ref_logprobs", _floats),  # reference policy, per token, when the KL penalty is in the loss, else null
    ]
)

# One row per (iteration, metric name). Long format so any new metric is just new rows.
METRICS = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("stage", pa.string()),
        ("name", pa.string()),
        ("value", pa.float64()),
    ]
)

# The columns of one graded evaluation answer (shared by in-run evaluations and `segflow eval`).
_EVAL_ANSWER = [
    ("prompt_id", pa.string()),
    ("decoding", pa.string()),  # greedy | sampled (k per problem at the eval temperature)
    ("sample_index", pa.int32()),
    ("prompt_tokens", pa.int32()),
    ("num_tokens", pa.int32()),  # response tokens
    ("finish_reason", pa.string()),
    ("score", pa.float64()),
    ("status", pa.string()),
    ("extracted", pa.string()),  # the answer the grader read ("" when none): maj@k votes on it
    ("completion_text", pa.string()),
]

# One row per (problem, sample) of an evaluation inside a training run.
EVAL_RESULTS = pa.schema([("run_id", pa.string()), ("iteration", pa.int32()), ("split", pa.string()), *_EVAL_ANSWER])

# One row per (checkpoint, dataset, context budget, problem, sample) of a `segflow eval` evaluation.
EVAL_SAMPLES = pa.schema(
    [
        ("eval_id", pa.string()),
        ("checkpoint", pa.string()),
        ("dataset", pa.string()),
        ("budget", pa.int32()),
        *_EVAL_ANSWER,
    ]
)

# The summary.json fields the runs view carries (flows/rl_train.py writes the file when a run finishes).
SUMMARY = pa.schema(
    [
        ("run_id", pa.string()),
        ("iterations_completed", pa.int32()),
        ("initial_eval_accuracy", pa.float64()),
        ("final_eval_accuracy", pa.float64()),
        ("wall_seconds", pa.float64()),
    ]
)

# One row per (finished run, health-check finding): the `health` view, read from summary.json (no file of
# its own, so not in ALL). tasks/algos/health.py.
HEALTH = pa.schema(
    [
        ("run_id", pa.string()),
        ("finding", pa.string()),
        ("first_message", pa.string()),
        ("iterations", pa.list_(pa.int32())),
    ]
)

ALL = {
    "runs": RUNS,
    "prompts": PROMPTS,
    "rollouts": ROLLOUTS,
    "grades": GRADES,
    "advantages": ADVANTAGES,
    "segments": SEGMENTS,
    "segment_advantages": SEGMENT_ADVANTAGES,
    "mc_rollouts": MC_ROLLOUTS,
    "ref_logprobs": REF_LOGPROBS,
    "tree_nodes": TREE_NODES,
    "tree_advantages": TREE_ADVANTAGES,
    "replay_buffer": REPLAY_BUFFER,
    "train_edges": TRAIN_EDGES,
    "train_samples": TRAIN_SAMPLES,
    "metrics": METRICS,
    "eval_results": EVAL_RESULTS,
    "eval_samples": EVAL_SAMPLES,
}
