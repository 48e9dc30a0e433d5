"""Task: eval_checkpoint. One (checkpoint, dataset, context budget) cell of a `segflow eval` evaluation.

Prompts are rendered with the checkpoint's own tokenizer (and the dataset's template); the context
budget B limits both the total length and the new tokens, as lighteval's max_model_length =
max_new_tokens (spo.md §7): a problem's answer may use B - len(prompt) tokens, and prompts that leave
no room are skipped and counted. Answers are sampled and graded by the same code as in-run evaluation
(tasks/evaluate.py::sample_and_grade). Writes samples.parquet and metrics.json (tasks/algos/eval_summary.py).
"""

from __future__ import annotations

import json
import time

from prefect import task

from configs.schema import DataSection, RewardSection, RolloutSection
from storage.handles import FileRef, atomic_write_text
from storage.layout import EvalLayout
from storage.parquet import write_parquet
from storage.schemas import EVAL_SAMPLES
from tasks.algos.eval_summary import summarize
from tasks.common import STAGE, StageOutput
from tasks.datasets.graders import scheme_of
from tasks.datasets.loader import load_records
from tasks.engines.live import get_engine
from tasks.evaluate import sample_and_grade
from tasks.models import dtype_name
from tasks.tokens import encode_prompt, load_tokenizer, render_prompt


@task(name="eval_checkpoint", **STAGE)
def eval_checkpoint(
    layout: EvalLayout,
    checkpoint: FileRef,
    label: str,
    dataset: str,
    data: DataSection,
    budget: int,
    rollout: RolloutSection,
    samples: int,
    seed: int,
    limit: int | None,
    prices: tuple[float, float],
    code_version: str,
) -> StageOutput:
    """`rollout` carries the engine settings (max_model_len >= every budget), temperature and top-p."""
    tok = load_tokenizer(checkpoint.path)
    records = load_records(data, data.test_split)[:limit] if limit else load_records(data, data.test_split)
    ids, refs, pids, skipped = [], [], [], 0
    for r in records:
        p = encode_prompt(render_prompt(r["question"], data, tok), data, tok)
        if len(p) >= budget:
            skipped += 1
            continue
        ids.append(p)
        refs.append(r["reference"])
        pids.append(r["prompt_id"])
    if not ids:
        raise ValueError(f"dataset {dataset!r}: every one of {len(records)} prompts is at least budget={budget} tokens")
    engine, timings = get_engine(checkpoint.path, rollout, dtype_name(), seed)
    t0 = time.perf_counter()
    answers = sample_and_grade(
        engine,
        ids,
        refs,
        [budget - len(p) for p in ids],
        samples=samples,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        seed_key=(seed, dataset, "eval"),
        prompt_ids=pids,
        stop=rollout.stop,
        task=data.task,
        scheme=scheme_of(RewardSection()),
    )
    seconds = time.perf_counter() - t0
    rows = [
        {
            "eval_id": layout.eval_id,
            "checkpoint": label,
            "dataset": dataset,
            "budget": budget,
            "prompt_id": pids[a.pop("i")],
            **a,
        }
        for a in answers
    ]
    cell = layout.cell(label, dataset, budget)
    ref = write_parquet(rows, EVAL_SAMPLES, cell / "samples.parquet")
    metrics = {
        **summarize(rows, *prices),
        "prompts_skipped_too_long": float(skipped),
        "generation_seconds": seconds,
        "generated_tokens": float(sum(a["num_tokens"] for a in rows)),
        "engines": float(engine.replicas),  # `segflow eval --shards`
        **{k: float(v) for k, v in timings.items()},
    }
    atomic_write_text(cell / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    return StageOutput(artifact=ref, metrics=FileRef.of(cell / "metrics.json"))
