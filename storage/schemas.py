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

# One row per (problem, sample) of an evaluation.
EVAL_RESULTS = pa.schema(
    [
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("split", pa.string()),
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("num_tokens", pa.int32()),
        ("score", pa.float64()),
        ("status", pa.string()),
        ("completion_text", pa.string()),
    ]
)

ALL = {
    "runs": RUNS,
    "prompts": PROMPTS,
    "rollouts": ROLLOUTS,
    "grades": GRADES,
    "advantages": ADVANTAGES,
    "ref_logprobs": REF_LOGPROBS,
    "metrics": METRICS,
    "eval_results": EVAL_RESULTS,
}
