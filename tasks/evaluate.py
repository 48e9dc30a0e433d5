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
from tasks.datasets.graders import grade_all, scheme_of
from tasks.engines.base import Request
from tasks.engines.live import get_engine
from tasks.models import engine_dtype
from tasks.progress import stage


def sample_and_grade(
    engine,
    ids: list[list[int]],
    refs: list[str],
    budgets: list[int],
    *,
    samples: int,
    temperature: float,
    top_p: float,
    seed_key: tuple,
    prompt_ids: list[str],
    stop: tuple,
    task: str,
    scheme,
    label: str = "evaluate",
) -> list[dict]:
    """Greedy plus `samples` sampled answers per problem on `engine`, graded.

    Seeds derive from (*seed_key, prompt id, sample index) only, so evaluations of successive
    checkpoints are paired (common random numbers), and so are runs that share a seed_key.
    Returns one row per answer: problem index `i`, decoding, sample_index, prompt_tokens, num_tokens,
    finish_reason, score, status, extracted, completion_text.
    Progress (tasks/progress.py, named `label`) counts answers: greedy ones, then sampled ones.
    """
    keys = [(i, s) for i in range(len(ids)) for s in range(samples)]
    with stage(label, len(ids) + len(keys), unit="answer") as progress:
        greedy = engine.generate(
            [Request(p, 0, b) for p, b in zip(ids, budgets)], temperature=0.0, top_p=1.0, stop=stop, progress=False
        )
        progress.advance(len(greedy), note="greedy")
        sampled = (
            engine.generate(
                [Request(ids[i], derive_seed(*seed_key, prompt_ids[i], s), budgets[i]) for i, s in keys],
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                progress=False,
            )
            if keys
            else []
        )
        outs = greedy + sampled
        index = [(i, 0, "greedy") for i in range(len(ids))] + [(i, s, "sampled") for i, s in keys]
        grades = grade_all(
            task, [o.text for o in outs], [refs[i] for i, _, _ in index], [o.finish_reason for o in outs], scheme
        )
        greedy_ok = [g.status == "ok" for g in grades[: len(greedy)]]
        progress.advance(len(sampled), note="graded", accuracy=sum(greedy_ok) / max(1, len(greedy_ok)))
    return [
        {
            "i": i,
            "decoding": mode,
            "sample_index": s,
            "prompt_tokens": len(ids[i]),
            "num_tokens": len(o.token_ids),
            "finish_reason": o.finish_reason,
            "score": g.score,
            "status": g.status,
            "extracted": g.extracted,
            "completion_text": o.text,
        }
        for (i, s, mode), o, g in zip(index, outs, grades)
    ]


@task(name="evaluate", **STAGE)
def evaluate(
    cfg: Config, layout: RunLayout, policy: FileRef, test: FileRef, iteration: int, code_version: str
) -> StageOutput:
    prompts = read_parquet(test, PROMPTS)
    if cfg.eval.limit:
        prompts = prompts.slice(0, cfg.eval.limit)
    ids, pids = prompts["prompt_token_ids"].to_pylist(), prompts["prompt_id"].to_pylist()
    engine, timings = get_engine(policy.path, cfg.rollout, engine_dtype(cfg), cfg.run.seed)
    budget = [min(cfg.eval.max_tokens, cfg.rollout.max_model_len - len(p)) for p in ids]
    t0 = time.perf_counter()
    answers = sample_and_grade(
        engine,
        ids,
        prompts["reference"].to_pylist(),
        budget,
        samples=cfg.eval.samples,
        temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p,
        # run.seed, not the run id: runs that differ only in algorithm draw the same
        # samples for the same checkpoint (their SFT starts score identically).
        seed_key=(cfg.run.seed, "eval"),
        prompt_ids=pids,
        stop=cfg.rollout.stop,
        task=cfg.data.task,
        scheme=scheme_of(cfg.reward),
        label=f"evaluate iteration {iteration}",
    )
    gen_seconds = time.perf_counter() - t0
    rows = [
        {
            "run_id": layout.run_id,
            "iteration": iteration,
            "split": cfg.data.test_split,
            "prompt_id": pids[a.pop("i")],
            **a,
        }
        for a in answers
    ]
    ref = write_parquet(rows, EVAL_RESULTS, layout.eval_results(iteration))
    greedy = [a for a in rows if a["decoding"] == "greedy"]
    m = grade_metrics([a["score"] for a in greedy], [a["status"] for a in greedy])
    values = {
        "eval_accuracy": m["accuracy"],
        "eval_reward_mean": m["reward_mean"],
        "eval_frac_truncated": m["frac_truncated"],
        "eval_mean_tokens": sum(a["num_tokens"] for a in greedy) / max(1, len(greedy)),
        "eval_problems": len(ids),
        "eval_generation_seconds": gen_seconds,
        **{f"eval_{k}": v for k, v in timings.items()},
    }
    if cfg.eval.samples:
        ok = [a["status"] == "ok" for a in rows if a["decoding"] == "sampled"]
        solved = {a["prompt_id"] for a in rows if a["decoding"] == "sampled" and a["status"] == "ok"}
        values.update(
            eval_avg_at_k=sum(ok) / len(ok), eval_pass_at_k=len(solved) / len(ids), eval_k=float(cfg.eval.samples)
        )
    metrics = write_metrics(layout.eval_metrics(iteration), layout.run_id, iteration, "eval", values)
    return StageOutput(artifact=ref, metrics=metrics)
