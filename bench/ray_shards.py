"""Ray-sharded rollouts: wall time of one rollout call on 2 engine actors vs 1 engine, same requests.

    .venv/bin/python bench/ray_shards.py [--prompts 64 256] [--samples 16] [--rounds 5]

The model is the embedded tiny Qwen2 after a short SFT (bench/tiny.py), the prompts are the arithmetic
task's, and the requests are a rollout stage's: `--samples` per prompt, per-request seeds, the embedded
default's sampling settings. Three engines stay up side by side: the in-process engine of
rollout.shards=1, one Ray actor, and rollout.shards=2 (two Ray actors). Every round times the same
requests on each, in rotating order; the ratio per round is 2 shards / 1 engine, and the table gives the
median over rounds. Every engine must return the same tokens or the script fails. Also times an in-place
weight load on each (both actors load in parallel). Results go to BENCHMARKS.md.
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
from tiny import sft_tiny_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import ray

    from configs.schema import RolloutSection
    from tasks import tiny_model
    from tasks.algos.seeding import derive_seed
    from tasks.engines.base import Request
    from tasks.engines.ray_engine import ShardedEngine
    from tasks.engines.vllm_engine import VLLMEngine

    model_dir, tok, examples, model = sft_tiny_model(steps=200)
    other = model_dir.parent / "reloaded"  # a second checkpoint for the weight-load timing
    tiny_model.save(model, tok, other)
    cfg = RolloutSection()
    # Logical CPUs for one 1-actor and one 2-actor engine at once; only the engine being timed computes.
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=512 * 2**20,
    )
    engines = {
        "1 engine (in-process)": VLLMEngine(str(model_dir), cfg, "float32", 0),
        "1 Ray actor": ShardedEngine(str(model_dir), cfg.model_copy(update={"shards": 1}), "float32", 0),
        "2 Ray actors": ShardedEngine(str(model_dir), cfg.model_copy(update={"shards": 2}), "float32", 0),
    }
    names = list(engines)
    lines = [
        "| prompts x samples | generated tokens | "
        + " | ".join(f"{n} (s)" for n in names)
        + " | 2 actors / 1 engine | 2 actors / 1 actor |",
        "|---" * (len(names) + 4) + "|",
    ]
    for n_prompts in args.prompts:
        prompts = [p for p, _ in examples[:n_prompts]]
        requests = [
            Request(p, derive_seed("bench", 1, i, s), cfg.max_tokens)
            for i, p in enumerate(prompts)
            for s in range(args.samples)
        ]
        times = {n: [] for n in names}
        tokens = 0
        for r in range(args.rounds + 1):  # round 0 warms every engine up and is not counted
            order = names[r % len(names) :] + names[: r % len(names)]
            outs = {}
            for n in order:
                t0 = time.perf_counter()
                outs[n] = engines[n].generate(requests, temperature=cfg.temperature, top_p=cfg.top_p, progress=False)
                if r:
                    times[n].append(time.perf_counter() - t0)
            ids = [[c.token_ids for c in outs[n]] for n in names]
            if any(x != ids[0] for x in ids):
                sys.exit("engines disagree: sharding changed the rollouts")
            tokens = sum(len(c.token_ids) for c in outs[names[0]])
        med = {n: statistics.median(t) for n, t in times.items()}
        r_engine = statistics.median(b / a for a, b in zip(times[names[0]], times[names[2]]))
        r_actor = statistics.median(b / a for a, b in zip(times[names[1]], times[names[2]]))
        lines.append(
            f"| {n_prompts} x {args.samples} | {tokens} | "
            + " | ".join(f"{med[n]:.2f}" for n in names)
            + f" | **{r_engine:.2f}** | {r_actor:.2f} |"
        )
        print(lines[-1])
    loads = {n: e.load_weights(other) for n, e in engines.items()}
    starts = {n: e.start_seconds for n, e in engines.items()}
    for e in engines.values():
        e.shutdown()
    ray.shutdown()
    lines += [
        "",
        "Engine start (s): "
        + ", ".join(f"{n} {starts[n]:.1f}" for n in names)
        + ". In-place weight load (s): "
        + ", ".join(f"{n} {loads[n]:.2f}" for n in names)
        + ".",
        "",
        f"Median over {args.rounds} rounds (ratios are per round, then the median); every engine returned "
        "identical tokens for identical requests. Target (issue 9): 2 shards <= 0.75x of 1 engine.",
    ]
    write_section("Ray-sharded rollouts", "\n".join(lines))


if __name__ == "__main__":
    main()
