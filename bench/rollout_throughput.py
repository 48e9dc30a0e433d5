"""Rollout throughput: vLLM engine vs Hugging Face `generate`, same model, prompts and sampling.

    .venv/bin/python bench/rollout_throughput.py [--samples 512] [--max-tokens 48] [--rounds 3]
        [--hidden H --layers L --heads A] [--sft-steps 200]

The model shape flags measure how the ratio moves with model size (BENCHMARKS.md has 0.14M to 113M).

Both backends run in this process, alternating rounds (vLLM, HF, vLLM, HF, ...) so machine noise
hits both; the ratio of generated tokens per second is reported. The model is the embedded tiny
Qwen2 model, SFT-trained briefly so completions look like the task's. A last vLLM round runs under
cProfile and the table splits its time into model forward, sampling and vLLM's per-request
bookkeeping (the engine runs in this process, so the profile sees all of it). Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from tasks.engines.vllm_engine import vllm_env_defaults  # noqa: E402

vllm_env_defaults()  # before anything imports vllm

from report import write_section  # noqa: E402

from configs.schema import TinyModelSection  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=TinyModelSection().hidden_size)
    ap.add_argument("--layers", type=int, default=TinyModelSection().num_layers)
    ap.add_argument("--heads", type=int, default=TinyModelSection().num_heads)
    ap.add_argument(
        "--sft-steps", type=int, default=200, help="SFT steps before measuring; fewer keep larger models' set-up short"
    )
    opts = ap.parse_args()

    from tiny import sft_tiny_model

    from configs.schema import RolloutSection
    from tasks.engines.base import Request
    from tasks.engines.hf_engine import HFEngine
    from tasks.engines.vllm_engine import VLLMEngine

    shape = TinyModelSection(
        hidden_size=opts.hidden, num_layers=opts.layers, num_heads=opts.heads, intermediate_size=4 * opts.hidden
    )
    model_dir, _, examples, model = sft_tiny_model(shape, steps=opts.sft_steps)

    prompts = [examples[i % len(examples)][0] for i in range(opts.samples)]
    requests = [Request(p, seed=i, max_tokens=opts.max_tokens) for i, p in enumerate(prompts)]
    vllm = VLLMEngine(str(model_dir), RolloutSection(), "float32", 0)
    hf = HFEngine(str(model_dir), batch_size=128)
    for e in (vllm, hf):  # warm-up: first-call compilation and allocation are not throughput
        e.generate(requests[:64], temperature=1.0, top_p=1.0, progress=False)
    rates: dict[str, list[float]] = {"vllm": [], "hf": []}
    for r in range(opts.rounds):
        for name, e in (("vllm", vllm), ("hf", hf)):
            t0 = time.perf_counter()
            outs = e.generate(requests, temperature=1.0, top_p=1.0, progress=False)
            dt = time.perf_counter() - t0
            rates[name].append(sum(len(o.token_ids) for o in outs) / dt)
            print(f"round {r} {name}: {rates[name][-1]:.0f} tok/s", flush=True)
    ratios = [v / h for v, h in zip(rates["vllm"], rates["hf"])]
    profile = vllm_time_split(vllm, requests)
    lines = ["| backend | tokens/s per round | median |", "|---|---|---|"]
    for name in ("vllm", "hf"):
        lines.append(
            f"| {name} | {', '.join(f'{x:.0f}' for x in rates[name])} | {statistics.median(rates[name]):.0f} |"
        )
    lines += [
        "",
        f"vLLM / HF generate, per round: {', '.join(f'{x:.2f}' for x in ratios)}; median "
        f"**{statistics.median(ratios):.2f}x** (target ≥ 4x). {opts.samples} samples x ≤ {opts.max_tokens} "
        f"tokens, temperature 1.0, Qwen2 (hidden {opts.hidden}, {opts.layers} layers, "
        f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters) after {opts.sft_steps} SFT steps; "
        f"vLLM engine start {vllm.start_seconds:.1f} s, HF load "
        f"{hf.start_seconds:.1f} s (not in the rates).",
    ]
    lines += [
        "",
        "Where one vLLM round's time goes (cProfile, cumulative seconds of vLLM functions; the profiler "
        "inflates Python-heavy parts, so read shares, not rates):",
        "",
        "| part | vLLM function | seconds | share |",
        "|---|---|---|---|",
    ]
    total = profile.pop("total")
    lines += [f"| {part} | `{fn}` | {sec:.2f} | {sec / total:.0%} |" for part, (fn, sec) in profile.items()]
    rest = max(0.0, total - sum(sec for _, sec in profile.values()))
    lines.append(f"| everything else | | {rest:.2f} | {rest / total:.0%} |")
    lines.append(f"| whole `LLM.generate` | | {total:.2f} | 100% |")
    size = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
    write_section(f"Rollout throughput: vLLM vs HF generate, {size}", "\n".join(lines))


# Parts of a vLLM round -> the vLLM function whose cumulative time measures it. Names are vLLM 0.32's V1
# engine; a part whose function is not found reports 0. The parts do not overlap.
PROFILE_PARTS = {
    "model forward": "_model_forward",
    "sampling (per-request seeded generators)": "_sample",
    "scheduler": "schedule",
    "scheduler: apply step outputs": "update_from_output",
    "output processing (log-probs, request state)": "process_outputs",
    "adding requests": "add_request",
}


def vllm_time_split(engine, requests) -> dict:
    """{part: (function, seconds)} and 'total' for one vLLM round under cProfile."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    engine.generate(requests, temperature=1.0, top_p=1.0, progress=False)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}

    def cum(name: str, where: str = "vllm") -> float:
        return max((v[3] for (f, _, n), v in stats.items() if n == name and where in f), default=0.0)

    out = {part: (fn, cum(fn)) for part, fn in PROFILE_PARTS.items()}
    out["total"] = cum("generate", "entrypoints/llm.py")
    return out


if __name__ == "__main__":
    main()
