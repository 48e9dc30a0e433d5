"""Stage: generate_rollouts. n samples per prompt on the live vLLM engine, written to Parquet."""

from __future__ import annotations

import time

from prefect import task

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import PROMPTS, ROLLOUTS
from tasks.algos.seeding import derive_seed, iteration_prompts
from tasks.common import STAGE, StageOutput
from tasks.engines.base import Request
from tasks.engines.live import get_engine
from tasks.models import engine_dtype
from tasks.progress import stage


@task(name="generate_rollouts", **STAGE)
def generate_rollouts(
    cfg: Config,
    layout: RunLayout,
    policy: FileRef,
    policy_version: int,
    train: FileRef,
    iteration: int,
    code_version: str,
) -> StageOutput:
    prompts = read_parquet(train, PROMPTS)
    chosen = iteration_prompts(len(prompts), cfg.rollout.prompts_per_iteration, iteration, cfg.run.seed)
    ids = prompts["prompt_token_ids"].to_pylist()
    pids = prompts["prompt_id"].to_pylist()
    engine, timings = get_engine(policy.path, cfg.rollout, engine_dtype(cfg), cfg.run.seed)
    keys, requests = [], []
    for i in chosen:
        budget = min(cfg.rollout.max_tokens, cfg.rollout.max_model_len - len(ids[i]))
        for s in range(cfg.rollout.samples_per_prompt):
            keys.append((pids[i], s, ids[i]))
            requests.append(Request(ids[i], derive_seed(layout.run_id, iteration, pids[i], s), budget))
    t0 = time.perf_counter()
    with stage(f"rollouts iteration {iteration}", len(requests), unit="request") as progress:
        # One batched call (vLLM schedules it best whole): progress moves once, when it returns.
        outs = engine.generate(
            requests,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            stop=cfg.rollout.stop,
            progress=False,
        )
        gen_seconds = time.perf_counter() - t0
        n_tok = sum(len(o.token_ids) for o in outs)
        progress.advance(len(outs), tokens_per_s=round(n_tok / max(gen_seconds, 1e-9), 1))
    rows = [
        {
            "run_id": layout.run_id,
            "iteration": iteration,
            "prompt_id": pid,
            "sample_index": s,
            "policy_version": policy_version,
            "seed": req.seed,
            "prompt_token_ids": pids_,
            "completion_token_ids": o.token_ids,
            "sampling_logprobs": o.logprobs,
            "logprobs_mode": engine.logprobs_mode,
            "finish_reason": o.finish_reason,
            "completion_text": o.text,
        }
        for (pid, s, pids_), req, o in zip(keys, requests, outs)
    ]
    ref = write_parquet(rows, ROLLOUTS, layout.rollouts(iteration))
    metrics = write_metrics(
        layout.metrics(iteration, "rollout"),
        layout.run_id,
        iteration,
        "rollout",
        {
            **timings,
            "rollout_engines": engine.replicas,  # rollout.shards that produced this file
            "generation_seconds": gen_seconds,
            "generated_tokens": n_tok,
            "tokens_per_second": n_tok / max(gen_seconds, 1e-9),
            "samples": len(outs),
            "mean_completion_tokens": n_tok / max(1, len(outs)),
            "frac_finish_length": sum(o.finish_reason == "length" for o in outs) / max(1, len(outs)),
        },
    )
    return StageOutput(artifact=ref, metrics=metrics)
