"""Stage: spo_values. SPO-chain's segments and their Monte Carlo values (spo.md §1.1, §2.1).

For every response: per-token probabilities under the current policy at the sampling temperature
(a teacher-forced pass, or the sampler's log-probs), cutpoints p < rho, a boundary before every
`interval`-th cutpoint. Every boundary prefix (prompt + response[0..b], token ids, deduplicated
across the batch) gets N continuations on the live engine; V(prefix) is their mean grade. The
response's own reward closes its last segment and V(prompt) is its group's mean reward.
Writes segments.parquet (one row per segment, values at both ends) and mc_rollouts.parquet.
With spo.mc_train each continuation whose reward differs from V(prefix) also gets a segments row
(prefix_id set, spo_chain.continuation_segment): train_policy trains it as a sample.
With rollout.top_p < 1 and spo.top_p_probs=recompute, probabilities the sampler would give (spo.prob_source
=sampler, the continuations' cutpoints) come from a teacher-forced pass instead: the sampler's are
renormalised over the top-p nucleus, which inflates p (the reference recomputes them, spo.md §0).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from prefect import task

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import GRADES, MC_ROLLOUTS, PROMPTS, ROLLOUTS, SEGMENTS
from tasks.algos.prob_mask import trained_count
from tasks.algos.seeding import derive_seed
from tasks.algos.spo_chain import NO_VALUE, agreed, continuation_segment, finite_mean, value_at
from tasks.algos.spo_chain import segments as split_segments
from tasks.common import STAGE, StageOutput
from tasks.datasets.graders import grade_all, scheme_of
from tasks.engines.live import continue_prefixes, get_engine
from tasks.models import engine_dtype
from tasks.progress import StageProgress, stage
from tasks.teacher_forcing import policy_logprobs, recomputes_top_p


def prefix_id(prompt_ids: list[int], response_prefix: list[int]) -> str:
    h = hashlib.sha256(repr((prompt_ids, response_prefix)).encode())
    return h.hexdigest()[:20]


def teacher_forced_probs(
    cfg: Config, policy: str, prompts: list[list[int]], comps: list[list[int]]
) -> list[list[float]]:
    return [[math.exp(x) for x in lp] for lp in policy_logprobs(cfg, policy, prompts, comps)]


@task(name="spo_values", **STAGE)
def spo_values(
    cfg: Config,
    layout: RunLayout,
    policy: FileRef,
    rollouts: FileRef,
    grades: FileRef,
    train: FileRef,
    iteration: int,
    code_version: str,
) -> StageOutput:
    sp = cfg.spo
    r = read_parquet(rollouts, ROLLOUTS)
    g = read_parquet(grades, GRADES)
    score = {
        (p, s): v for p, s, v in zip(g["prompt_id"].to_pylist(), g["sample_index"].to_pylist(), g["score"].to_pylist())
    }
    pids, sids = r["prompt_id"].to_pylist(), r["sample_index"].to_pylist()
    prompts, comps = r["prompt_token_ids"].to_pylist(), r["completion_token_ids"].to_pylist()
    t0 = time.perf_counter()
    if sp.prob_source == "teacher_forced" or recomputes_top_p(cfg):
        probs = teacher_forced_probs(cfg, policy.path, prompts, comps)
    else:
        probs = [[math.exp(x) for x in lp] for lp in r["sampling_logprobs"].to_pylist()]
    prob_seconds = time.perf_counter() - t0

    segs = [split_segments(pr, sp.rho, sp.interval) for pr in probs]
    # The reference estimates V(prompt) by Monte Carlo only when the first token is a cutpoint.
    mc_prompt = [sp.prompt_value == "reference" and bool(pr) and pr[0] < sp.rho for pr in probs]
    wanted, ids = boundary_prefixes(pids, prompts, comps, segs, mc_prompt)
    table = read_parquet(train, PROMPTS)
    refs = dict(zip(table["prompt_id"].to_pylist(), table["reference"].to_pylist()))
    with stage(f"spo_values iteration {iteration}", 0, unit="continuation") as progress:
        mc = sample_continuations(cfg, layout, policy, wanted, refs, iteration, progress)

    group: dict[str, list[float]] = defaultdict(list)  # V(prompt) = the group's mean reward
    for p, s in zip(pids, sids):
        if math.isfinite(score[(p, s)]):
            group[p].append(score[(p, s)])
    values = {k: finite_mean(v) for k, v in mc.rewards().items()}
    prompt_value = {p: finite_mean(v) for p, v in group.items()} if sp.prompt_value == "group" else {}
    rows = []
    for r_i, (p, s, comp, ss) in enumerate(zip(pids, sids, comps, segs)):
        response = (len(comp), score[(p, s)], prompt_value.get(p, NO_VALUE))
        for seg in ss:
            v0 = value_at(seg.start_position, *response, ids.get((r_i, seg.start_position)), values)
            v1 = value_at(seg.end_position, *response, ids.get((r_i, seg.end_position)), values)
            rows.append(_segment_row(layout.run_id, iteration, p, s, None, seg, v0, v1))
    response_segments = len(rows)
    # The continuations' sampler probabilities: their cutpoints and masked tokens when they train.
    mc_probs = [[math.exp(x) for x in o.logprobs] for _, _, o in mc.flat] if sp.mc_train else []
    if sp.mc_train and recomputes_top_p(cfg):
        mc_probs = teacher_forced_probs(
            cfg, policy.path, [mc.wanted[k][1] for k, _, _ in mc.flat], [o.token_ids for _, _, o in mc.flat]
        )
    if sp.mc_train:
        rows += continuation_rows(layout.run_id, iteration, sp.rho, mc.flat, mc_probs, mc.grades, values, wanted)
    mc_ref = write_parquet(mc.rows(layout.run_id, iteration), MC_ROLLOUTS, layout.mc_rollouts(iteration))
    ref = write_parquet(rows, SEGMENTS, layout.segments(iteration))

    # Tokens that will train: the probability mask keeps those with p < train.prob_mask_rho.
    mask_rho = cfg.train.prob_mask_rho
    trains = {(row["prefix_id"], row["sample_index"]) for row in rows[response_segments:]}
    trained = sum(masked_count(pr, mask_rho) for pr in probs) + sum(
        masked_count(pr, mask_rho) for (k, j, _), pr in zip(mc.flat, mc_probs) if (k, j) in trains
    )
    mc_tokens = sum(len(o.token_ids) for _, _, o in mc.flat)
    prefixes_total = sum(1 for ss in segs for seg in ss if seg.start_position >= 0) + sum(mc_prompt)
    n_cut = sum(seg.num_cutpoints for ss in segs for seg in ss)
    metrics = write_metrics(
        layout.metrics(iteration, "spo"),
        layout.run_id,
        iteration,
        "spo",
        {
            "spo_prob_seconds": prob_seconds,
            "mc_seconds": mc.seconds,
            "mc_prefixes": float(prefixes_total),
            "mc_prefixes_unique": float(len(wanted)),
            "mc_rollouts": float(len(mc.flat)),
            # Share of boundary prefixes whose Monte Carlo samples a shared prefix already paid for.
            "mc_dedup_savings": 1.0 - len(wanted) / prefixes_total if prefixes_total else 0.0,
            # Adaptive N (spo.mc_samples_min): share of sampled prefixes that stopped after the first stage.
            "mc_settled_early": mc.settled_early / len(wanted) if wanted else 0.0,
            "mc_generated_tokens": float(mc_tokens),
            "mc_tokens_per_second": mc_tokens / max(mc.seconds, 1e-9),
            "segments_per_response": response_segments / max(1, len(comps)),
            "mc_trained_samples": float(len(rows) - response_segments),
            "cutpoints_per_response": n_cut / max(1, len(comps)),
            # Monte Carlo cost per token that trains (the responses', and the continuations' that train too).
            "mc_tokens_per_trained_token": mc_tokens / max(1, trained),
            "frac_tokens_cutpoint": n_cut / max(1, sum(len(c) for c in comps)),
            **{f"mc_{k}": v for k, v in mc.timings.items()},
        },
    )
    return StageOutput(artifact=ref, metrics=metrics, side=mc_ref)


def boundary_prefixes(
    pids: list[str], prompts: list[list[int]], comps: list[list[int]], segs: list, mc_prompt: list[bool]
) -> tuple[dict, dict]:
    """The boundary prefixes that need a Monte Carlo value, deduplicated across the batch.

    Returns (wanted: prefix id -> (prompt id, prefix token ids, response tokens in the prefix),
    ids: (response index, boundary position) -> prefix id). Position -1 is the prompt itself, wanted only
    where `mc_prompt` says so (spo.prompt_value = reference).
    """
    wanted: dict[str, tuple[str, list[int], int]] = {}
    ids: dict[tuple[int, int], str] = {}
    for r_i, (p, prompt, comp, ss, at_prompt) in enumerate(zip(pids, prompts, comps, segs, mc_prompt)):
        for seg in ss:
            b = seg.start_position
            if b >= 0 or at_prompt:
                ids[(r_i, b)] = key = prefix_id(prompt, comp[: b + 1])  # hashed once per boundary
                wanted.setdefault(key, (p, prompt + comp[: b + 1], b + 1))
    return wanted, ids


@dataclass
class Continuations:
    """The Monte Carlo continuations of one iteration: `flat` holds (prefix id, sample index, Completion)
    in prefix-id order, `grades` their grades in the same order."""

    wanted: dict
    flat: list
    grades: list
    seconds: float  # engine start or weight load plus generation
    timings: dict  # get_engine's
    settled_early: int = 0  # adaptive N: prefixes whose first spo.mc_samples_min continuations agreed

    def rewards(self) -> dict[str, list[float]]:
        """Prefix id -> its continuations' finite rewards."""
        scores = scores_by_prefix(self.flat, self.grades)
        return {k: [x for x in scores.get(k, []) if math.isfinite(x)] for k in self.wanted}

    def rows(self, run_id: str, iteration: int) -> list[dict]:
        """MC_ROLLOUTS rows, one per continuation."""
        return [
            {
                "run_id": run_id,
                "iteration": iteration,
                "prefix_id": k,
                "prompt_id": self.wanted[k][0],
                "prefix_tokens": self.wanted[k][2],
                "prefix_token_ids": self.wanted[k][1],
                "sample_index": j,
                "seed": derive_seed(run_id, iteration, "mc", k, j),
                "completion_token_ids": o.token_ids,
                "sampling_logprobs": o.logprobs,
                "finish_reason": o.finish_reason,
                "score": gr.score,
                "status": gr.status,
            }
            for (k, j, o), gr in zip(self.flat, self.grades)
        ]


def sample_continuations(
    cfg: Config,
    layout: RunLayout,
    policy: FileRef,
    wanted: dict,
    refs: dict,
    iteration: int,
    progress: StageProgress | None = None,
) -> Continuations:
    """spo.mc_samples continuations of every wanted prefix on the live engine, each graded as the whole
    response (the prefix's response tokens + the continuation) against its prompt's reference.

    With spo.mc_samples_min (adaptive N) every prefix first gets that many, and a second batch adds the
    rest only to prefixes whose first rewards are not all equal and finite (spo_chain.agreed).
    """
    from tasks.tokens import load_tokenizer

    sp = cfg.spo
    t0 = time.perf_counter()
    engine, timings = get_engine(policy.path, cfg.rollout, engine_dtype(cfg), cfg.run.seed)
    seconds = [time.perf_counter() - t0]  # engine start or weight load, then each generation call (not grading)
    tok = load_tokenizer(policy.path)

    def sample(keys: list[str], n: int, first: int) -> tuple[list, list]:
        """n continuations j = first.. of each prefix in `keys`, as (k, j, Completion), and their grades."""
        if not keys or n < 1:
            return [], []
        if progress:
            progress.add_total(len(keys) * n)
        t1 = time.perf_counter()
        outs = continue_prefixes(
            engine,
            [wanted[k][1] for k in keys],
            n,
            seed_key=(layout.run_id, iteration, "mc"),
            max_tokens=[cfg.rollout.max_tokens - wanted[k][2] for k in keys],
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            stop=cfg.rollout.stop,
            max_model_len=cfg.rollout.max_model_len,
            prefix_keys=keys,
            first_sample=first,
        )
        seconds.append(time.perf_counter() - t1)
        flat = [(k, first + j, o) for k, os_ in zip(keys, outs) for j, o in enumerate(os_)]
        texts = [
            tok.decode(wanted[k][1][len(wanted[k][1]) - wanted[k][2] :] + o.token_ids, skip_special_tokens=True)
            for k, _, o in flat
        ]
        graded = grade_all(
            cfg.data.task,
            texts,
            [refs[wanted[k][0]] for k, _, _ in flat],
            [o.finish_reason for _, _, o in flat],
            scheme_of(cfg.reward),
        )
        if progress:
            rewards = [gr.score for gr in graded if math.isfinite(gr.score)]
            progress.advance(len(flat), reward=sum(rewards) / max(1, len(rewards)))
        return flat, graded

    keys = sorted(wanted)
    first_n = sp.mc_samples if sp.mc_samples_min is None else sp.mc_samples_min
    flat, grades = sample(keys, first_n, 0)
    settled = agreed(scores_by_prefix(flat, grades))
    more, more_grades = sample([k for k in keys if k not in settled], sp.mc_samples - first_n, first_n)
    # One list in (prefix id, sample index) order, as the fixed-N run lists them.
    merged = sorted(zip(flat + more, grades + more_grades), key=lambda e: (e[0][0], e[0][1]))
    early = len(settled) if first_n < sp.mc_samples else 0  # with no second stage nothing stopped early
    return Continuations(wanted, [e[0] for e in merged], [e[1] for e in merged], sum(seconds), timings, early)


def scores_by_prefix(flat: list, grades: list) -> dict[str, list[float]]:
    """Prefix id -> its continuations' scores (failed grades included), in `flat`'s order."""
    out: dict[str, list[float]] = defaultdict(list)
    for (k, _, _), gr in zip(flat, grades):
        out[k].append(gr.score)
    return out


def _segment_row(
    run_id: str,
    iteration: int,
    prompt_id: str,
    sample_index: int,
    prefix: str | None,
    seg,
    start: tuple[float, int],
    end: tuple[float, int],
) -> dict:
    """One SEGMENTS row."""
    return {
        "run_id": run_id,
        "iteration": iteration,
        "prompt_id": prompt_id,
        "sample_index": sample_index,
        "prefix_id": prefix,
        "segment_index": seg.index,
        "start_token": seg.start,
        "end_token": seg.end,
        "num_cutpoints": seg.num_cutpoints,
        "cutpoints": list(seg.cutpoints),
        "v_start": start[0],
        "n_start": start[1],
        "v_end": end[0],
        "n_end": end[1],
    }


def masked_count(probs: list[float], mask_rho: float | None) -> int:
    """Tokens that train under the probability mask (tasks/algos/prob_mask.py; all of them without it)."""
    return trained_count(np.asarray(probs, dtype=np.float64), mask_rho)


def continuation_rows(
    run_id: str, iteration: int, rho: float, flat: list, probs: list, grades: list, values: dict, wanted: dict
) -> list[dict]:
    """SEGMENTS rows of the Monte Carlo continuations that train (spo.mc_train): one segment each over its
    own tokens, from V(prefix) (values[prefix id] = (mean, count)) to its reward. `probs` are each
    continuation's sampler probabilities, in `flat`'s order."""
    rows = []
    for (k, j, _), pr, gr in zip(flat, probs, grades):
        seg = continuation_segment(pr, rho, gr.score, values[k][0])
        if seg is not None:
            rows.append(_segment_row(run_id, iteration, wanted[k][0], j, k, seg, values[k], (gr.score, 1)))
    return rows
