"""Evaluation throughput vs raw generation throughput on the embedded default model.

    .venv/bin/python bench/eval_throughput.py [--problems 256] [--samples 8] [--rounds 3]

One in-process vLLM engine, the tiny model after 200 SFT steps, the arith test problems. Each round
measures, in alternating order and with the prefix cache reset before each:
  * raw: engine.generate on the evaluation's requests (greedy + k sampled per problem), nothing else;
  * eval: the whole per-cell evaluation path of `segflow eval` minus Prefect: sample_and_grade (the same
    generation, grading), the samples Parquet write, and every metric with its standard error (summarize).
Throughput = generated tokens / seconds; the ratio eval / raw is the share left after grading and
bookkeeping. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from tasks.engines.vllm_engine import vllm_env_defaults  # noqa: E402

vllm_env_defaults()  # before anything imports vllm

from report import write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=256)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()

    from tiny import sft_tiny_model

    from configs.schema import ArithSection, RewardSection, RolloutSection
    from storage.parquet import write_parquet
    from storage.schemas import EVAL_SAMPLES
    from tasks.algos import arith
    from tasks.algos.eval_summary import summarize
    from tasks.datasets.graders import scheme_of
    from tasks.engines.base import Request
    from tasks.engines.vllm_engine import VLLMEngine
    from tasks.evaluate import sample_and_grade

    model_dir, tok, _, _ = sft_tiny_model()
    rollout = RolloutSection()
    engine = VLLMEngine(str(model_dir), rollout, "float32", 0)
    a = ArithSection()
    _, test = arith.split(
        arith.generate(a.n_train + a.n_test, a.min_terms, a.max_terms, a.max_operand, a.seed), a.n_test
    )
    problems = (test * (opts.problems // len(test) + 1))[: opts.problems]
    ids = [tok(p.question + "\n")["input_ids"] for p in problems]
    refs = [str(p.answer) for p in problems]
    pids = [f"p{i}" for i in range(len(ids))]
    budgets = [rollout.max_model_len - len(p) for p in ids]
    out_dir = Path(tempfile.mkdtemp())

    def raw() -> int:
        greedy = engine.generate(
            [Request(p, 0, b) for p, b in zip(ids, budgets)], temperature=0.0, top_p=1.0, progress=False
        )
        sampled = engine.generate(
            [Request(ids[i], 1000 * i + s, budgets[i]) for i in range(len(ids)) for s in range(opts.samples)],
            temperature=0.6,
            top_p=0.95,
            progress=False,
        )
        return sum(len(o.token_ids) for o in greedy + sampled)

    def evaluation() -> int:
        answers = sample_and_grade(
            engine,
            ids,
            refs,
            budgets,
            samples=opts.samples,
            temperature=0.6,
            top_p=0.95,
            seed_key=("bench",),
            prompt_ids=pids,
            stop=(),
            task="arith",
            scheme=scheme_of(RewardSection()),
        )
        rows = [
            {
                "eval_id": "bench",
                "checkpoint": "tiny",
                "dataset": "arith",
                "budget": rollout.max_model_len,
                "prompt_id": pids[x.pop("i")],
                **x,
            }
            for x in answers
        ]
        write_parquet(rows, EVAL_SAMPLES, out_dir / "samples.parquet")
        summarize(rows, 0.1, 0.4)
        return sum(r["num_tokens"] for r in rows)

    raw(), evaluation()  # warm-up
    rates: dict[str, list[float]] = {"raw": [], "eval": []}
    for r in range(opts.rounds):
        for name, fn in (("raw", raw), ("eval", evaluation)) if r % 2 == 0 else (("eval", evaluation), ("raw", raw)):
            engine.llm.reset_prefix_cache()
            t0 = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t0))
            print(f"round {r} {name}: {rates[name][-1]:.0f} tokens/s", flush=True)
    ratios = [e / w for e, w in zip(rates["eval"], rates["raw"])]
    lines = [
        (
            "| round | raw generation, tokens/s | evaluation (generate + grade + Parquet + metrics), tokens/s "
            "| eval ÷ raw |"
        ),
        "|---|---|---|---|",
    ]
    lines += [f"| {i} | {w:.0f} | {e:.0f} | {e / w:.2f} |" for i, (w, e) in enumerate(zip(rates["raw"], rates["eval"]))]
    lines += [
        "",
        f"Evaluation keeps **{statistics.median(ratios):.0%}** of raw generation throughput (median of "
        f"{', '.join(f'{x:.2f}' for x in ratios)}; target ≥ 80%). {opts.problems} arith problems, greedy + "
        f"{opts.samples} samples at T 0.6 / top-p 0.95, tiny Qwen2 after 200 SFT steps, in-process vLLM on CPU.",
    ]
    write_section("Evaluation throughput", "\n".join(lines))
    engine.shutdown()


if __name__ == "__main__":
    main()
