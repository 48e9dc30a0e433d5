"""SPO-chain Monte Carlo cost: token-id prefix continuation with dedup vs decoded-text prefixes one by one.

    .venv/bin/python bench/mc_cost.py [--prompts 32] [--samples 8] [--mc 4] [--interval 2] [--rounds 3]

Rollouts of the embedded tiny model (briefly SFT-trained) give the boundary prefixes of SPO-chain
(cutpoints p < 0.9 from the sampler's log-probs, a boundary every `interval` cutpoints). Both
methods produce N continuations for every boundary, on the same in-process vLLM engine:
  * segflow: the prefixes as token ids, identical ones deduplicated, all in one batch through
    tasks.engines.live.continue_prefixes (the engine's prefix cache shares each prefix's prefill);
  * reference-style: each boundary's prefix decoded to text and submitted as its own request batch
    (n = N), one boundary after another, no dedup (spo.md §2.1, §8 items 1, 2, 5).
Rounds alternate the two methods. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from tasks.engines.vllm_engine import vllm_env_defaults  # noqa: E402

vllm_env_defaults()  # before anything imports vllm

from report import write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--mc", type=int, default=4)
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()

    from tiny import sft_tiny_model

    from configs.schema import RolloutSection
    from tasks.algos.spo_chain import boundaries
    from tasks.engines.base import Request
    from tasks.engines.live import continue_prefixes
    from tasks.engines.vllm_engine import VLLMEngine

    model_dir, tok, examples, _ = sft_tiny_model()
    engine = VLLMEngine(str(model_dir), RolloutSection(), "float32", 0)

    prompts = [examples[i][0] for i in range(opts.prompts)]
    reqs = [
        Request(p, seed=i * opts.samples + s, max_tokens=opts.max_tokens)
        for i, p in enumerate(prompts)
        for s in range(opts.samples)
    ]
    outs = engine.generate(reqs, temperature=1.0, top_p=1.0, progress=False)
    # every (response, boundary) prefix and its remaining token budget
    items = []
    for r, o in zip(reqs, outs):
        for b in boundaries([math.exp(x) for x in o.logprobs], 0.9, opts.interval):
            if b >= 0:
                items.append((list(r.prompt_token_ids), o.token_ids[: b + 1], opts.max_tokens - (b + 1)))

    def ours() -> int:
        unique = {}
        for p, c, budget in items:
            unique.setdefault((tuple(p), tuple(c)), (p + c, budget))
        keys = sorted(unique)
        res = continue_prefixes(
            engine,
            [unique[k][0] for k in keys],
            opts.mc,
            seed_key=("mc",),
            max_tokens=[unique[k][1] for k in keys],
            temperature=1.0,
            top_p=1.0,
            prefix_keys=[str(k) for k in keys],
        )
        return sum(len(x.token_ids) for group in res for x in group)

    def reference() -> int:
        from vllm import SamplingParams

        n_tok = 0
        for i, (p, c, budget) in enumerate(items):
            text = tok.decode(p) + tok.decode(c)  # the reference decodes and re-tokenises every prefix
            params = SamplingParams(n=opts.mc, temperature=1.0, top_p=1.0, max_tokens=budget, seed=i)
            out = engine.llm.generate([text], params, use_tqdm=False)
            n_tok += sum(len(x.token_ids) for x in out[0].outputs)
        return n_tok

    ours(), reference()  # warm-up
    times: dict[str, list[float]] = {"segflow": [], "reference": []}
    tokens: dict[str, int] = {}
    for r in range(opts.rounds):
        for name, fn in (("segflow", ours), ("reference", reference)):
            engine.llm.reset_prefix_cache()  # each method starts cold
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r} {name}: {times[name][-1]:.2f} s, {tokens[name]} tokens", flush=True)
    unique = len({(tuple(p), tuple(c)) for p, c, _ in items})
    ratios = [ref / ours_ for ours_, ref in zip(times["segflow"], times["reference"])]
    lines = [
        "| method | prefixes submitted | seconds per round | median s | MC tokens (last round) |",
        "|---|---|---|---|---|",
        f"| segflow: token ids, dedup, one batch | {unique} | {', '.join(f'{x:.2f}' for x in times['segflow'])} | "
        f"{statistics.median(times['segflow']):.2f} | {tokens['segflow']} |",
        f"| reference-style: decoded text, one by one | {len(items)} | "
        f"{', '.join(f'{x:.2f}' for x in times['reference'])} | {statistics.median(times['reference']):.2f} | "
        f"{tokens['reference']} |",
        "",
        f"Speed-up per round: {', '.join(f'{x:.2f}' for x in ratios)}; median **{statistics.median(ratios):.2f}x** "
        f"(target ≥ 1.5x). {opts.prompts} prompts x {opts.samples} samples, N = {opts.mc}, interval "
        f"{opts.interval}, rho 0.9, temperature 1.0, tiny Qwen2 after 200 SFT steps; {len(items)} boundary "
        f"prefixes, {unique} distinct. Seconds per MC value: "
        f"{statistics.median(times['segflow']) / max(1, len(items)) * 1e3:.2f} ms vs "
        f"{statistics.median(times['reference']) / max(1, len(items)) * 1e3:.2f} ms.",
    ]
    write_section("SPO-chain Monte Carlo cost", "\n".join(lines))
    engine.shutdown()


if __name__ == "__main__":
    main()
