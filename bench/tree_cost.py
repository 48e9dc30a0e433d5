"""SPO-tree vs SPO-chain: generated tokens per training sample on the same questions and policy.

    .venv/bin/python bench/tree_cost.py [--questions 16] [--rounds 3] [--branching 6 6 6] [--segment-tokens 8]
        [--samples 8] [--mc 9] [--interval 5]

The embedded tiny model (briefly SFT-trained) on one in-process vLLM engine. Each round takes a fresh
batch of questions and runs both estimators on it, measuring the tokens the engine generated:
  * SPO-chain (spo.md §2.1): `samples` responses per question, cutpoints p < 0.9 from the sampler's
    log-probs, a boundary every `interval` cutpoints, `mc` Monte Carlo continuations per distinct
    boundary prefix (deduplicated, as the spo_values stage does). Tokens = responses + continuations;
    training samples = the responses (each carries its segment advantages).
  * SPO-tree (spo.md §2.2): the tree_rollouts stage's `grow` with the given branching and M, leaves
    graded, values and advantages by the numpy twin of adv_spo_tree.sql. Tokens = every node's tokens;
    training samples = kept edges (A != 0).
The tree's leaves are full responses, so none of its tokens is spent on values alone. Results go to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from tasks.engines.vllm_engine import vllm_env_defaults  # noqa: E402

vllm_env_defaults()  # before anything imports vllm

from report import write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--branching", type=int, nargs="+", default=[6, 6, 6])
    ap.add_argument("--segment-tokens", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--mc", type=int, default=9)
    ap.add_argument("--interval", type=int, default=5)
    opts = ap.parse_args()

    from tiny import sft_tiny_model

    from configs.loader import resolve
    from configs.schema import RolloutSection
    from tasks.algos import arith
    from tasks.algos.grading import RewardScheme, grade_numeric
    from tasks.algos.seeding import derive_seed
    from tasks.algos.spo_chain import boundaries, segments
    from tasks.algos.spo_tree import edge_advantages, kept_edges, node_values
    from tasks.engines.base import Request
    from tasks.engines.live import continue_prefixes
    from tasks.engines.vllm_engine import VLLMEngine
    from tasks.tree_rollouts import grow

    model_dir, tok, examples, _ = sft_tiny_model()
    rollout = RolloutSection()
    engine = VLLMEngine(str(model_dir), rollout, "float32", 0)
    cfg = resolve(
        "spo_tree", overrides=[f"tree.branching={list(opts.branching)}", f"tree.segment_tokens={opts.segment_tokens}"]
    )
    a = cfg.data.arith
    problems = arith.generate(2000, a.min_terms, a.max_terms, a.max_operand, seed=a.seed)
    scheme = RewardScheme()

    def score(ids: list[int], reference: str, finish: str) -> float:
        return grade_numeric(tok.decode(ids, skip_special_tokens=True), reference, finish, scheme).score

    rows = []
    for r in range(opts.rounds):
        chosen = list(range(r * opts.questions, (r + 1) * opts.questions))
        prompts = [examples[i][0] for i in chosen]

        # SPO-chain: responses, then N continuations per distinct boundary prefix.
        reqs = [
            Request(p, seed=derive_seed("chain", r, q, s), max_tokens=rollout.max_tokens)
            for q, p in enumerate(prompts)
            for s in range(opts.samples)
        ]
        outs = engine.generate(reqs, temperature=rollout.temperature, top_p=rollout.top_p, progress=False)
        chain_tokens = sum(len(o.token_ids) for o in outs)
        prefixes, n_segments = {}, 0
        for req, o in zip(reqs, outs):
            probs = [math.exp(x) for x in o.logprobs]
            n_segments += len(segments(probs, 0.9, opts.interval))
            for b in boundaries(probs, 0.9, opts.interval):
                if b >= 0:
                    key = (tuple(req.prompt_token_ids), tuple(o.token_ids[: b + 1]))
                    prefixes.setdefault(key, (list(key[0]) + list(key[1]), rollout.max_tokens - (b + 1)))
        keys = sorted(prefixes)
        mc = (
            continue_prefixes(
                engine,
                [prefixes[k][0] for k in keys],
                opts.mc,
                seed_key=("chain", r),
                max_tokens=[prefixes[k][1] for k in keys],
                temperature=rollout.temperature,
                top_p=rollout.top_p,
                max_model_len=rollout.max_model_len,
                prefix_keys=[str(k) for k in keys],
            )
            if keys
            else []
        )
        mc_tokens = sum(len(c.token_ids) for group in mc for c in group)

        # SPO-tree on the same questions.
        nodes = grow(engine, prompts, [f"q{i}" for i in chosen], cfg, ("tree", r))
        index = {n.node_id: i for i, n in enumerate(nodes)}
        parent = [index[n.parent_id] if n.parent_id else -1 for n in nodes]
        refs = [str(problems[chosen[n.prompt_index]].answer) for n in nodes]
        leaf_scores = [
            score(n.response, ref, n.finish_reason) if n.is_leaf else math.nan for n, ref in zip(nodes, refs)
        ]
        adv = edge_advantages(parent, node_values(parent, leaf_scores))
        kept = int(kept_edges(parent, adv).sum())
        tree_tokens = sum(len(n.token_ids) for n in nodes)
        chain_per = (chain_tokens + mc_tokens) / len(outs)
        tree_per = tree_tokens / max(1, kept)
        rows.append(
            {
                "round": r,
                "chain_tokens": chain_tokens + mc_tokens,
                "mc_tokens": mc_tokens,
                "chain_samples": len(outs),
                "chain_segments": n_segments,
                "tree_tokens": tree_tokens,
                "tree_edges": len(nodes) - len(prompts),
                "tree_kept": kept,
                "chain_per": chain_per,
                "chain_per_segment": (chain_tokens + mc_tokens) / max(1, n_segments),
                "tree_per": tree_per,
                "ratio": chain_per / tree_per,
            }
        )
        print(
            f"round {r}: chain {chain_per:.1f} tokens/sample, tree {tree_per:.1f} tokens/edge, "
            f"ratio {chain_per / tree_per:.2f}",
            flush=True,
        )

    lines = [
        "| round | SPO-chain tokens (of which MC) | responses / segments | tokens per response | "
        "tokens per segment | SPO-tree tokens | edges / kept | tokens per kept edge | chain ÷ tree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        lines.append(
            f"| {x['round']} | {x['chain_tokens']} ({x['mc_tokens']}) | {x['chain_samples']} / "
            f"{x['chain_segments']} | {x['chain_per']:.1f} | {x['chain_per_segment']:.1f} | {x['tree_tokens']} | "
            f"{x['tree_edges']} / {x['tree_kept']} | {x['tree_per']:.1f} | {x['ratio']:.2f} |"
        )
    ratios = [x["ratio"] for x in rows]
    seg_ratios = [x["chain_per_segment"] / x["tree_per"] for x in rows]
    lines += [
        "",
        f"Generated tokens per training sample, SPO-chain ÷ SPO-tree: {', '.join(f'{v:.2f}' for v in ratios)}; "
        f"median **{statistics.median(ratios):.2f}x** (target ≥ 3x). Per segment advantage instead of per "
        f"response (a chain response trains several segments): median {statistics.median(seg_ratios):.2f}x. "
        f"{opts.questions} questions per round; chain: {opts.samples} samples, N = {opts.mc}, interval "
        f"{opts.interval}, rho 0.9; tree: {'-'.join(map(str, opts.branching))}, M = {opts.segment_tokens}; "
        f"temperature {rollout.temperature}, max {rollout.max_tokens} response tokens, tiny Qwen2 after 200 SFT "
        "steps.",
    ]
    write_section("SPO-tree vs SPO-chain: generated tokens per training sample", "\n".join(lines))
    engine.shutdown()


if __name__ == "__main__":
    main()
