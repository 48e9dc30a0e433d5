"""Stage: reference_logprobs. Log-probs of every rollout under the reference (start) policy, and the
per-response KL estimate to it. Runs only when a KL penalty is configured (train.kl_coef > 0).

The KL penalty then needs no second model inside the trainer: placed in the reward, the advantage SQL
subtracts kl_coef * kl from the score; placed in the loss, the trainer reads `ref_logprobs` per token.
The summed KL uses the sampler's log-probs for log pi (they equal the trainer's on the same weights,
see metric logprob_gap_mean), so this pass needs only the reference model.
"""

from __future__ import annotations

from prefect import task

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import REF_LOGPROBS, ROLLOUTS
from tasks.common import STAGE, StageOutput
from tasks.progress import bar


@task(name="reference_logprobs", **STAGE)
def reference_logprobs(
    cfg: Config, layout: RunLayout, reference: FileRef, rollouts: FileRef, iteration: int, code_version: str
) -> StageOutput:
    import torch

    from tasks.algos.policy_loss import kl_estimate
    from tasks.teacher_forcing import policy_logprobs

    r = read_parquet(rollouts, ROLLOUTS)
    prompts, comps = r["prompt_token_ids"].to_pylist(), r["completion_token_ids"].to_pylist()
    sampled = r["sampling_logprobs"].to_pylist()
    with bar(f"reference log-probs {iteration}", len(comps)) as advance:
        ref_rows = policy_logprobs(cfg, reference.path, prompts, comps, on_batch=lambda n: advance(n, ""))
    kls = [
        float(
            kl_estimate(
                torch.tensor(lp, dtype=torch.float32), torch.tensor(ref, dtype=torch.float32), cfg.train.kl_estimator
            ).sum()
        )
        if ref
        else 0.0
        for lp, ref in zip(sampled, ref_rows)
    ]
    rows = [
        {
            "run_id": layout.run_id,
            "iteration": iteration,
            "prompt_id": p,
            "sample_index": i,
            "ref_logprobs": ref,
            "kl": kl,
        }
        for p, i, ref, kl in zip(r["prompt_id"].to_pylist(), r["sample_index"].to_pylist(), ref_rows, kls)
    ]
    ref = write_parquet(rows, REF_LOGPROBS, layout.ref_logprobs(iteration))
    n_tok = sum(len(x) for x in ref_rows)
    metrics = write_metrics(
        layout.metrics(iteration, "reference"),
        layout.run_id,
        iteration,
        "reference",
        {
            "kl_ref_sampled_per_token": sum(kls) / max(1, n_tok),
            "kl_ref_sampled_per_response": sum(kls) / max(1, len(kls)),
        },
    )
    return StageOutput(artifact=ref, metrics=metrics)
