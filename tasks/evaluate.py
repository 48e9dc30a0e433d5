"""Stage: evaluate. Greedy decoding of held-out problems on the live engine, graded like training."""
from __future__ import annotations

import time

from prefect import task

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import EVAL_RESULTS, PROMPTS
from tasks.algos.metrics import grade_metrics
from tasks.common import STAGE, StageOutput
from tasks.engine import Request, get_engine
from tasks.graders import grade_all, scheme_of
from tasks.models import engine_dtype


@task(name="evaluate", **STAGE)
def evaluate(cfg: Config, layout: RunLayout, policy: FileRef, test: FileRef, iteration: int,
             code_version: str) -> StageOutput:
    prompts = read_parquet(test, PROMPTS)
    if cfg.eval.limit:
        prompts = prompts.slice(0, cfg.eval.limit)
    ids = prompts["prompt_token_ids"].to_pylist()
    engine, timings = get_engine(policy.path, cfg.rollout, engine_dtype(cfg), cfg.run.seed)
    requests = [Request(p, 0, min(cfg.eval.max_tokens, cfg.rollout.max_model_len - len(p))) for p in ids]
    t0 = time.perf_counter()
    outs = engine.generate(requests, temperature=0.0, top_p=1.0, stop=cfg.rollout.stop)
    gen_seconds = time.perf_counter() - t0
    grades = grade_all(cfg.data.task, [o.text for o in outs], prompts["reference"].to_pylist(),
                       [o.finish_reason for o in outs], scheme_of(cfg.reward))
    rows = [
        {"run_id": layout.run_id, "iteration": iteration, "split": cfg.data.test_split, "prompt_id": pid,
         "sample_index": 0, "num_tokens": len(o.token_ids), "score": g.score, "status": g.status,
         "completion_text": o.text}
        for pid, o, g in zip(prompts["prompt_id"].to_pylist(), outs, grades)
    ]
    ref = write_parquet(rows, EVAL_RESULTS, layout.eval_results(iteration))
    m = grade_metrics([g.score for g in grades], [g.status for g in grades])
    metrics = write_metrics(layout.eval_metrics(iteration), layout.run_id, iteration, "eval", {
        "eval_accuracy": m["accuracy"], "eval_reward_mean": m["reward_mean"], "eval_frac_truncated": m["frac_truncated"],
        "eval_mean_tokens": sum(len(o.token_ids) for o in outs) / max(1, len(outs)), "eval_problems": len(outs),
        "eval_generation_seconds": gen_seconds, **{f"eval_{k}": v for k, v in timings.items()},
    })
    return StageOutput(artifact=ref, metrics=metrics)
