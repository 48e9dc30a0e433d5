"""Peak extra memory of chunked per-token log-probs vs the naive full log-softmax (tasks/algos/logprobs.py).

    .venv/bin/python bench/logprob_memory.py [--tokens 4096] [--vocab 151936] [--hidden 896] [--chunks 256 512 1024]

Each measurement runs in a fresh Python process (this script with --child): it builds the inputs
(fp32, fixed seed: hidden ~ N(0, 1), LM-head weight ~ N(0, 0.05^2), uniform targets), warms the same
code path up on a tiny slice, then resets the kernel's peak-RSS mark (/proc/self/clear_refs = 5), reads
VmRSS as the baseline, computes, and reads VmHWM. Extra memory = VmHWM - baseline. Two modes:
  * forward: under torch.no_grad();
  * forward+backward: grads w.r.t. hidden and weight of the sum of the log-probs (the weight's
    gradient, [V, H], is part of the extra memory of every method).
The children save their outputs; the parent compares chunked vs naive values and gradients.
Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

WEIGHT_STD = 0.05
TOL = 1e-5
TARGET = 8.0


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def child(spec: dict) -> None:
    """One measurement, in this (fresh) process. Prints one JSON line."""
    import torch

    from tasks.algos.logprobs import naive_token_logprobs, token_logprobs

    n, v, h, chunk, backward = spec["tokens"], spec["vocab"], spec["hidden"], spec["chunk"], spec["backward"]

    def fn(hidden, weight, targets):
        if chunk:
            return token_logprobs(hidden, weight, targets, spec["temperature"], chunk=chunk)
        return naive_token_logprobs(hidden, weight, targets, spec["temperature"])

    gen = torch.Generator().manual_seed(spec["seed"])
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) * WEIGHT_STD
    targets = torch.randint(0, v, (n,), generator=gen)
    hidden.requires_grad_(backward)
    weight.requires_grad_(backward)

    # Warm-up on a tiny slice: library and autograd initialisation is not counted as extra memory.
    small = [
        hidden[:8].detach().clone().requires_grad_(backward),
        weight[:1000].detach().clone().requires_grad_(backward),
        targets[:8] % 1000,
    ]
    with torch.set_grad_enabled(backward):
        out = fn(*small)
        if backward:
            out.sum().backward()
    del out, small

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    base = _status()["VmRSS"]
    t0 = time.perf_counter()
    with torch.set_grad_enabled(backward):
        out = fn(hidden, weight, targets)
        if backward:
            out.sum().backward()
    seconds = time.perf_counter() - t0
    peak = _status()["VmHWM"]

    saved = {"logprobs": out.detach()}
    if backward:
        saved |= {"grad_hidden": hidden.grad, "grad_weight": weight.grad}
    torch.save(saved, spec["out"])
    print(
        json.dumps(
            {
                "base": base,
                "peak": peak,
                "extra": peak - base,
                "seconds": seconds,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


def measure(spec: dict) -> dict:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_diff(a_path: str, b_path: str) -> dict[str, float]:
    import torch

    a, b = torch.load(a_path), torch.load(b_path)
    return {k: float((a[k] - b[k]).abs().max()) for k in a}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        child(json.loads(opts.child))
        return

    from report import write_section

    try:  # only to label the default row; configs/ must not stop the benchmark
        from configs.schema import TrainSection

        default_chunk = TrainSection().logprob_chunk
    except (ImportError, AttributeError):
        default_chunk = None
    mib = 2**20
    load_start = os.getloadavg()[0]
    results, diffs = {}, {}
    with tempfile.TemporaryDirectory(prefix="segflow-logprob-bench-") as tmp:
        for backward in (False, True):
            mode = "forward+backward" if backward else "forward (no grad)"
            for chunk in [0, *opts.chunks]:
                spec = {
                    "tokens": opts.tokens,
                    "vocab": opts.vocab,
                    "hidden": opts.hidden,
                    "chunk": chunk,
                    "backward": backward,
                    "temperature": opts.temperature,
                    "seed": opts.seed,
                    "out": f"{tmp}/{int(backward)}-{chunk}.pt",
                }
                r = results[mode, chunk] = measure(spec)
                print(
                    f"{mode:18s} {'naive' if not chunk else f'chunk {chunk}':10s} extra {r['extra'] / mib:8.0f} MiB"
                    f"  (baseline {r['base'] / mib:.0f} MiB)  {r['seconds']:.1f} s",
                    flush=True,
                )
                if chunk:
                    diffs[mode, chunk] = max_diff(spec["out"], f"{tmp}/{int(backward)}-0.pt")
                    print(
                        "   max abs diff vs naive:", {k: f"{x:.2e}" for k, x in diffs[mode, chunk].items()}, flush=True
                    )

    load_end = os.getloadavg()[0]
    worst_values = max(d["logprobs"] for d in diffs.values())
    assert worst_values <= TOL, f"chunked vs naive log-probs differ by {worst_values:.2e} > {TOL}"
    grad_diffs = [d[k] for d in diffs.values() for k in ("grad_hidden", "grad_weight") if k in d]
    assert max(grad_diffs) <= TOL, f"chunked vs naive gradients differ by {max(grad_diffs):.2e} > {TOL}"

    header = (
        "| mode | method | peak extra (MiB) | naive ÷ this | seconds | max abs diff vs naive: log-probs | "
        "grad hidden | grad weight |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    verdict = []
    for (mode, chunk), r in results.items():
        naive = results[mode, 0]
        ratio = naive["extra"] / r["extra"]
        if not chunk:
            lines.append(
                f"| {mode} | naive log_softmax | {r['extra'] / mib:.0f} | 1.0x | {r['seconds']:.1f} | — | — | — |"
            )
            continue
        d = diffs[mode, chunk]
        grads = f"{d['grad_hidden']:.1e} | {d['grad_weight']:.1e}" if "grad_hidden" in d else "— | —"
        label = f"chunked, chunk={chunk}" + (" (config default train.logprob_chunk)" if chunk == default_chunk else "")
        lines.append(
            f"| {mode} | {label} | {r['extra'] / mib:.0f} | **{ratio:.1f}x** | "
            f"{r['seconds']:.1f} | {d['logprobs']:.1e} | {grads} |"
        )
        verdict.append(f"{mode} chunk={chunk}: {ratio:.1f}x ({'met' if ratio >= TARGET else 'NOT met'})")
    any_r = next(iter(results.values()))
    lines += [
        "",
        (
            f"N = {opts.tokens} tokens, vocab V = {opts.vocab:,}, hidden H = {opts.hidden} (Qwen2.5-0.5B), fp32, "
            f"temperature {opts.temperature:g}, seed {opts.seed}; hidden ~ N(0, 1), weight ~ N(0, {WEIGHT_STD}²), "
            f"uniform targets. Inputs: weight {opts.vocab * opts.hidden * 4 / mib:.0f} MiB, one [N, V] fp32 "
            f"tensor {opts.tokens * opts.vocab * 4 / mib:.0f} MiB. torch {any_r['torch']}, {any_r['threads']} "
            "threads; 1-min load average "
            f"{load_start:.2f} at start, {load_end:.2f} at end (2 CPUs shared; times are noisy, memory is not)."
        ),
        (
            "Each row is a fresh process: inputs built and the code path warmed up on a tiny slice, the peak-RSS "
            "mark reset (/proc/self/clear_refs), then peak extra = VmHWM − VmRSS before the call. Forward+backward "
            "= grads of the summed log-probs w.r.t. hidden and weight; the [V, H] weight gradient "
            f"({opts.vocab * opts.hidden * 4 / mib:.0f} MiB) counts in every row. Seconds: one run of the measured "
            "call (secondary)."
        ),
        "",
        (
            f"Target: chunked peak extra ≤ 1/8 of naive (naive ÷ chunked ≥ {TARGET:g}x) and values within {TOL:g} "
            f"(fp32). Values: max abs diff of log-probs {worst_values:.1e}, of gradients {max(grad_diffs):.1e} "
            f"(both ≤ {TOL:g}: met). Memory: " + "; ".join(verdict) + "."
        ),
    ]
    write_section(f"Log-prob memory: chunked vs naive, {opts.tokens} tokens x {opts.vocab:,} vocab", "\n".join(lines))


if __name__ == "__main__":
    main()
