"""Stage: evaluate. Held-out problems on the live engine, graded like training: greedy decoding, plus
`eval.samples` sampled answers per problem (avg@k, the paper's GSM8K "pass@1", and pass@k)."""
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
from tasks.algos.seeding import derive_seed
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
    ids, pids = prompts["prompt_token_ids"].to_pylist(), prompts["prompt_id"].to_pylist()
    refs = prompts["reference"].to_pylist()
    engine, timings = get_engine(policy.path, cfg.rollout, engine_dtype(cfg), cfg.run.seed)
    budget = [min(cfg.eval.max_tokens, cfg.rollout.max_model_len - len(p)) for p in ids]
    t0 = time.perf_counter()
    greedy = engine.generate([Request(p, 0, b) for p, b in zip(ids, budget)], temperature=0.0, top_p=1.0,
                             stop=cfg.rollout.stop)
    # The same seeds at every iteration, so evaluations of successive checkpoints are paired.
    keys = [(i, s) for i in range(len(ids)) for s in range(cfg.eval.samples)]
    sampled = engine.generate([Request(ids[i], derive_seed(layout.run_id, "eval", pids[i], s), budget[i])
                               for i, s in keys], temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                              stop=cfg.rollout.stop) if keys else []
    gen_seconds = time.perf_counter() - t0
    outs = greedy + sampled
    index = [(i, 0, "greedy") for i in range(len(ids))] + [(i, s, "sampled") for i, s in keys]
    grades = grade_all(cfg.data.task, [o.text for o in outs], [refs[i] for i, _, _ in index],
                       [o.finish_reason for o in outs], scheme_of(cfg.reward))
    rows = [
        {"run_id": layout.run_id, "iteration": iteration, "split": cfg.data.test_split, "prompt_id": pids[i],
         "decoding": mode, "sample_index": s, "num_tokens": len(o.token_ids), "score": g.score, "status": g.status,
         "completion_text": o.text}
        for (i, s, mode), o, g in zip(index, outs, grades)
    ]
    ref = write_parquet(rows, EVAL_RESULTS, layout.eval_results(iteration))
    g0 = grades[: len(ids)]
    m = grade_metrics([g.score for g in g0], [g.status for g in g0])
    values = {
        "eval_accuracy": m["accuracy"], "eval_reward_mean": m["reward_mean"], "eval_frac_truncated": m["frac_truncated"],
        "eval_mean_tokens": sum(len(o.token_ids) for o in greedy) / max(1, len(greedy)), "eval_problems": len(ids),
        "eval_generation_seconds": gen_seconds, **{f"eval_{k}": v for k, v in timings.items()},
    }
    if keys:
        ok = [g.status == "ok" for g in grades[len(ids):]]
        solved = {i for (i, _), hit in zip(keys, ok) if hit}
        values.update(eval_avg_at_k=sum(ok) / len(ok), eval_pass_at_k=len(solved) / len(ids),
                      eval_k=float(cfg.eval.samples))
    metrics = write_metrics(layout.eval_metrics(iteration), layout.run_id, iteration, "eval", values)
    return StageOutput(artifact=ref, metrics=metrics)
