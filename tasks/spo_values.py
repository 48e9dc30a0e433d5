"""Stage: spo_values. SPO-chain's segments and their Monte Carlo values (spo.md §1.1, §2.1).

For every response: per-token probabilities under the current policy at the sampling temperature
(a teacher-forced pass, or the sampler's log-probs), cutpoints p < rho, a boundary before every
`interval`-th cutpoint. Every boundary prefix (prompt + response[0..b], token ids, deduplicated
across the batch) gets N continuations on the live engine; V(prefix) is their mean grade. The
response's own reward closes its last segment and V(prompt) is its group's mean reward.
Writes segments.parquet (one row per segment, values at both ends) and mc_rollouts.parquet.
With spo.mc_train each continuation whose reward differs from V(prefix) also gets a segments row
(prefix_id set, spo_chain.continuation_segment): train_policy trains it as a sample.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict

from prefect import task

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import GRADES, MC_ROLLOUTS, PROMPTS, ROLLOUTS, SEGMENTS
from tasks.algos.seeding import derive_seed
from tasks.algos.spo_chain import continuation_segment
from tasks.algos.spo_chain import segments as split_segments
from tasks.common import STAGE, StageOutput
from tasks.engine import continue_prefixes, get_engine
from tasks.graders import grade_all, scheme_of
from tasks.models import engine_dtype


def prefix_id(prompt_ids: list[int], response_prefix: list[int]) -> str:
    h = hashlib.sha256(repr((prompt_ids, response_prefix)).encode())
    return h.hexdigest()[:20]


def teacher_forced_probs(cfg: Config, policy: str, prompts: list[list[int]], comps: list[list[int]]) -> list[list[float]]:
    from tasks.train import load_policy
    from tasks.trainer import sequence_logprobs

    model, tok, device = load_policy(cfg, policy)
    logprobs = sequence_logprobs(model, prompts, comps, pad_id=tok.pad_token_id, device=device,
                                 temperature=cfg.rollout.temperature, chunk=cfg.train.logprob_chunk,
                                 micro_batch=cfg.train.micro_batch_size)
    return [[math.exp(x) for x in lp] for lp in logprobs]


@task(name="spo_values", **STAGE)
def spo_values(cfg: Config, layout: RunLayout, policy: FileRef, rollouts: FileRef, grades: FileRef, train: FileRef,
               iteration: int, code_version: str) -> StageOutput:
    from tasks.tokens import load_tokenizer

    sp = cfg.spo
    r = read_parquet(rollouts, ROLLOUTS)
    g = read_parquet(grades, GRADES)
    score = {(p, s): v for p, s, v in zip(g["prompt_id"].to_pylist(), g["sample_index"].to_pylist(),
                                           g["score"].to_pylist())}
    pids, sids = r["prompt_id"].to_pylist(), r["sample_index"].to_pylist()
    prompts, comps = r["prompt_token_ids"].to_pylist(), r["completion_token_ids"].to_pylist()
    t0 = time.perf_counter()
    if sp.prob_source == "teacher_forced":
        probs = teacher_forced_probs(cfg, policy.path, prompts, comps)
    else:
        probs = [[math.exp(x) for x in lp] for lp in r["sampling_logprobs"].to_pylist()]
    prob_seconds = time.perf_counter() - t0

    group: dict[str, list[float]] = defaultdict(list)
    for p, s in zip(pids, sids):
        if math.isfinite(score[(p, s)]):
            group[p].append(score[(p, s)])

    # Boundary prefixes needing a Monte Carlo value, deduplicated across the batch.
    segs = [split_segments(pr, sp.rho, sp.interval) for pr in probs]
    # The reference estimates V(prompt) by Monte Carlo only when the first token is a cutpoint.
    mc_prompt = [sp.prompt_value == "reference" and bool(pr) and pr[0] < sp.rho for pr in probs]
    wanted: dict[str, tuple[str, list[int], int]] = {}  # prefix id -> (prompt id, prefix token ids, response tokens)
    ids: dict[tuple[int, int], str] = {}  # (response index, position) -> prefix id, hashed once
    for r_i, (p, prompt, comp, ss, at_prompt) in enumerate(zip(pids, prompts, comps, segs, mc_prompt)):
        for seg in ss:
            b = seg.start_position
            if b >= 0 or at_prompt:
                ids[(r_i, b)] = key = prefix_id(prompt, comp[: b + 1])
                wanted.setdefault(key, (p, prompt + comp[: b + 1], b + 1))
    table = read_parquet(train, PROMPTS)
    refs = dict(zip(table["prompt_id"].to_pylist(), table["reference"].to_pylist()))
    keys = sorted(wanted)
    t1 = time.perf_counter()
    engine, timings = get_engine(policy.path, cfg.rollout, engine_dtype(cfg), cfg.run.seed)
    outs = continue_prefixes(
        engine, [wanted[k][1] for k in keys], sp.mc_samples, seed_key=(layout.run_id, iteration, "mc"),
        max_tokens=[cfg.rollout.max_tokens - wanted[k][2] for k in keys], temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, stop=cfg.rollout.stop, max_model_len=cfg.rollout.max_model_len, prefix_keys=keys,
    ) if keys else []
    mc_seconds = time.perf_counter() - t1

    # Grade each continuation as the whole response: the prefix's response tokens + the continuation.
    tok = load_tokenizer(policy.path)
    flat = [(k, j, o) for k, os_ in zip(keys, outs) for j, o in enumerate(os_)]
    texts = [tok.decode(wanted[k][1][len(wanted[k][1]) - wanted[k][2]:] + o.token_ids, skip_special_tokens=True)
             for k, _, o in flat]
    mc_grades = grade_all(cfg.data.task, texts, [refs[wanted[k][0]] for k, _, _ in flat],
                          [o.finish_reason for _, _, o in flat], scheme_of(cfg.reward))
    totals: dict[str, list[float]] = defaultdict(list)
    for (k, _, _), gr in zip(flat, mc_grades):
        if math.isfinite(gr.score):
            totals[k].append(gr.score)
    mc_rows = [{"run_id": layout.run_id, "iteration": iteration, "prefix_id": k, "prompt_id": wanted[k][0],
                "prefix_tokens": wanted[k][2], "prefix_token_ids": wanted[k][1], "sample_index": j,
                "seed": derive_seed(layout.run_id, iteration, "mc", k, j), "completion_token_ids": o.token_ids,
                "sampling_logprobs": o.logprobs, "finish_reason": o.finish_reason, "score": gr.score,
                "status": gr.status}
               for (k, j, o), gr in zip(flat, mc_grades)]

    def mean(vals: list[float] | None) -> tuple[float, int]:
        return (sum(vals) / len(vals), len(vals)) if vals else (math.nan, 0)

    def value(r_i: int, p: str, comp: list[int], position: int, own: float) -> tuple[float, int]:
        if position == len(comp) - 1:
            return own, 1
        if (r_i, position) not in ids:  # the prompt, without a Monte Carlo estimate
            return mean(group[p]) if sp.prompt_value == "group" else (math.nan, 0)
        return mean(totals.get(ids[(r_i, position)]))

    rows = []
    for r_i, (p, s, comp, ss) in enumerate(zip(pids, sids, comps, segs)):
        own = score[(p, s)]
        for seg in ss:
            v0, n0 = value(r_i, p, comp, seg.start_position, own)
            v1, n1 = value(r_i, p, comp, seg.end_position, own)
            rows.append({"run_id": layout.run_id, "iteration": iteration, "prompt_id": p, "sample_index": s,
                         "prefix_id": None, "segment_index": seg.index, "start_token": seg.start, "end_token": seg.end,
                         "num_cutpoints": seg.num_cutpoints, "cutpoints": list(seg.cutpoints),
                         "v_start": v0, "n_start": n0, "v_end": v1, "n_end": n1})
    response_segments = len(rows)
    # The continuations' sampler probabilities: their cutpoints and masked tokens when they train.
    mc_probs = [[math.exp(x) for x in o.logprobs] for _, _, o in flat] if sp.mc_train else []
    if sp.mc_train:
        rows += continuation_rows(layout.run_id, iteration, sp.rho, flat, mc_probs, mc_grades,
                                  {k: mean(totals.get(k)) for k in keys}, wanted)
    mc_ref = write_parquet(mc_rows, MC_ROLLOUTS, layout.mc_rollouts(iteration))
    ref = write_parquet(rows, SEGMENTS, layout.segments(iteration))
    n_tokens = sum(len(c) for c in comps)
    # Tokens that will train: the probability mask keeps those with p < train.prob_mask_rho.
    mask_rho = cfg.train.prob_mask_rho
    trains = {(r["prefix_id"], r["sample_index"]) for r in rows[response_segments:]}
    trained = sum(masked_count(pr, mask_rho) for pr in probs) + sum(
        masked_count(pr, mask_rho) for (k, j, _), pr in zip(flat, mc_probs) if (k, j) in trains)
    mc_tokens = sum(len(o.token_ids) for _, _, o in flat)
    prefixes_total = sum(1 for ss in segs for seg in ss if seg.start_position >= 0) + sum(mc_prompt)
    n_cut = sum(seg.num_cutpoints for ss in segs for seg in ss)
    metrics = write_metrics(layout.metrics(iteration, "spo"), layout.run_id, iteration, "spo", {
        "spo_prob_seconds": prob_seconds, "mc_seconds": mc_seconds, "mc_prefixes": float(prefixes_total),
        "mc_prefixes_unique": float(len(keys)), "mc_rollouts": float(len(flat)),
        # Share of boundary prefixes whose Monte Carlo samples a shared prefix already paid for.
        "mc_dedup_savings": 1.0 - len(keys) / prefixes_total if prefixes_total else 0.0,
        "mc_generated_tokens": float(mc_tokens), "mc_tokens_per_second": mc_tokens / max(mc_seconds, 1e-9),
        "segments_per_response": response_segments / max(1, len(comps)),
        "mc_trained_samples": float(len(rows) - response_segments),
        "cutpoints_per_response": n_cut / max(1, len(comps)),
        # Monte Carlo cost per token that trains (the responses', and the continuations' that train too).
        "mc_tokens_per_trained_token": mc_tokens / max(1, trained),
        "frac_tokens_cutpoint": n_cut / max(1, n_tokens),
        **{f"mc_{k}": v for k, v in timings.items()},
    })
    return StageOutput(artifact=ref, metrics=metrics, side=mc_ref)


def masked_count(probs: list[float], mask_rho: float | None) -> int:
    """Tokens that train under the probability mask p < mask_rho (all of them without the mask)."""
    return len(probs) if mask_rho is None else sum(p < mask_rho for p in probs)


def continuation_rows(run_id: str, iteration: int, rho: float, flat: list, probs: list, grades: list, values: dict,
                      wanted: dict) -> list[dict]:
    """SEGMENTS rows of the Monte Carlo continuations that train (spo.mc_train): one segment each over its
    own tokens, from V(prefix) (values[prefix id] = (mean, count)) to its reward. `probs` are each
    continuation's sampler probabilities, in `flat`'s order."""
    rows = []
    for (k, j, _), pr, gr in zip(flat, probs, grades):
        v, n = values[k]
        seg = continuation_segment(pr, rho, gr.score, v)
        if seg is not None:
            rows.append({"run_id": run_id, "iteration": iteration, "prompt_id": wanted[k][0], "sample_index": j,
                         "prefix_id": k, "segment_index": 0, "start_token": seg.start, "end_token": seg.end,
                         "num_cutpoints": seg.num_cutpoints, "cutpoints": list(seg.cutpoints),
                         "v_start": v, "n_start": n, "v_end": gr.score, "n_end": 1})
    return rows

