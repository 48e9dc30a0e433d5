"""The training-sample contract: one TRAIN_SAMPLES table per iteration, the trainer's only input.

Each row is a token sequence to train on: a prefix (the prompt, plus a response's first tokens for an
SPO-chain continuation or the ancestors' tokens for an SPO-tree edge), the completion tokens that carry
gradient, the sampler's log-probs of them, and their advantage: one per row (`advantage`, broadcast over the
tokens) or one per token (`token_advantages`, SPO-chain's segments). `ref_logprobs` holds the reference
policy's log-probs when the KL penalty is in the loss and a reference_logprobs stage made them (responses);
the trainer fills the rest from the start policy.

Who writes it: compute_advantages for the response and segment families (tasks/advantage.py), replay_buffer
for SPO-tree (tasks/replay.py). Who reads it: train_policy, in one process or on every rank
(tasks/distributed.py). Which tokens train (p_old < rho) is decided by the trainer with
tasks/algos/prob_mask.py, because p_old is the pre-update policy's log-prob, which the trainer recomputes.

Rows keep the order of their source files (responses, then continuations): the trainer's shuffle is seeded
per iteration, so the order is part of the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from configs.schema import Config
from storage.handles import FileRef
from storage.parquet import read_parquet, write_parquet
from storage.schemas import (
    ADVANTAGES,
    MC_ROLLOUTS,
    REF_LOGPROBS,
    ROLLOUTS,
    SEGMENT_ADVANTAGES,
    SEGMENTS,
    TRAIN_EDGES,
    TRAIN_SAMPLES,
)
from tasks.algos.spo_chain import token_advantages
from tasks.sample import CONTINUATION, EDGE, Sample


@dataclass(frozen=True)
class Origin:
    """Where a row came from, for reading the table with SQL: a response (prompt_id, sample_index), a
    continuation (prefix_id, sample_index) or an edge (prompt_id, node_id)."""

    prompt_id: str | None = None
    sample_index: int | None = None
    prefix_id: str | None = None
    node_id: str | None = None


def _cols(table: pa.Table, *names: str) -> Iterable[tuple]:
    return zip(*(table[n].to_pylist() for n in names))


def cutpoints_by_sample(segments: str | Path) -> dict:
    """(prefix id or None, prompt id or None, sample index) -> the token indices of its cutpoints, from a
    segments file (schema SEGMENTS): a response's key is (None, prompt id, s), a trained Monte Carlo
    continuation's (prefix id, None, s). For spo.high_prob_advantage=zero."""
    out: dict = {}
    for p, s, pre, cut in _cols(
        read_parquet(segments, SEGMENTS), "prompt_id", "sample_index", "prefix_id", "cutpoints"
    ):
        out.setdefault((pre, None if pre is not None else p, s), set()).update(cut)
    return out


def _response_token_advantages(segment_advantages: str | Path, lengths: dict, cuts: dict | None) -> dict:
    """(prompt id, sample index) -> [T] per-token advantages from the segment advantages table; with `cuts`
    (cutpoints_by_sample) only cutpoints keep theirs (spo.high_prob_advantage=zero)."""
    spans: dict = {}
    t = read_parquet(segment_advantages, SEGMENT_ADVANTAGES)
    for p, s, pre, a, b, v in _cols(
        t, "prompt_id", "sample_index", "prefix_id", "start_token", "end_token", "advantage"
    ):
        if pre is None:  # a response's segment (a trained Monte Carlo continuation's has its prefix id)
            spans.setdefault((p, s), []).append((a, b, v))
    return {
        key: token_advantages(n, spans.get(key, []), None if cuts is None else cuts.get((None, *key), set()))
        for key, n in lengths.items()
    }


def _by_response(path: str | Path, schema: pa.Schema, column: str) -> dict:
    t = read_parquet(path, schema)
    return {(p, s): v for p, s, v in _cols(t, "prompt_id", "sample_index", column)}


def response_samples(
    rollouts: str | Path,
    advantages: str | Path,
    reference: str | Path | None = None,
    per_token: bool = False,
    cuts: dict | None = None,
) -> list[tuple[Origin, Sample]]:
    """One sample per non-empty response of `rollouts` (ROLLOUTS), in file order. `advantages` is ADVANTAGES
    (one per response) or, with `per_token`, SEGMENT_ADVANTAGES (SPO-chain: spread over each segment's
    tokens; with `cuts`, on its cutpoints only). `reference` (REF_LOGPROBS) fills ref_logprobs.
    KeyError naming the file when a response has no advantage or no reference log-probs."""
    r = read_parquet(rollouts, ROLLOUTS)
    if per_token:
        lengths = {(p, s): len(c) for p, s, c in _cols(r, "prompt_id", "sample_index", "completion_token_ids")}
        adv = _response_token_advantages(advantages, lengths, cuts)
    else:
        adv = _by_response(advantages, ADVANTAGES, "advantage")
    ref = _by_response(reference, REF_LOGPROBS, "ref_logprobs") if reference is not None else {}
    out = []
    cols = ("prompt_id", "sample_index", "prompt_token_ids", "completion_token_ids", "sampling_logprobs")
    for p, s, prompt, c, lp in _cols(r, *cols):
        if (p, s) not in adv:
            raise KeyError(f"{advantages}: no advantage for prompt {p!r} sample {s}")
        if reference is not None and (p, s) not in ref:
            raise KeyError(f"{reference}: no reference log-probs for prompt {p!r} sample {s}")
        if c:  # an empty completion carries no token to train
            a = adv[(p, s)]
            scalar, per = (0.0, a) if per_token else (a, None)
            out.append((Origin(prompt_id=p, sample_index=s), Sample(prompt, c, lp, scalar, ref.get((p, s)), per)))
    return out


def continuation_samples(
    mc_rollouts: str | Path, segment_advantages: str | Path, cuts: dict | None = None
) -> list[tuple[Origin, Sample]]:
    """SPO-chain's trained Monte Carlo continuations (spo.mc_train), in MC_ROLLOUTS order: prefix = the
    boundary prefix, completion = the continuation, its one segment's advantage on every token (with `cuts`,
    on its cutpoints only). Continuations without a segment (A = 0) are left out."""
    t = read_parquet(segment_advantages, SEGMENT_ADVANTAGES)
    adv = {
        (pre, s): (a, b, v)
        for pre, s, a, b, v in _cols(t, "prefix_id", "sample_index", "start_token", "end_token", "advantage")
        if pre is not None
    }
    out = []
    m = read_parquet(mc_rollouts, MC_ROLLOUTS)
    for pre, s, prefix, c, lp in _cols(
        m, "prefix_id", "sample_index", "prefix_token_ids", "completion_token_ids", "sampling_logprobs"
    ):
        if (pre, s) not in adv:
            continue
        a, b, v = adv.pop((pre, s))
        if (a, b) != (0, len(c)):
            raise ValueError(
                f"{segment_advantages}: continuation {pre} #{s} spans [{a}, {b}), its {len(c)} tokens are [0, {len(c)})"
            )
        keep = None if cuts is None else cuts.get((pre, None, s), set())
        per = token_advantages(len(c), [(0, len(c), v)], keep)
        out.append((Origin(prefix_id=pre, sample_index=s), Sample(prefix, c, lp, 0.0, None, per, CONTINUATION)))
    if adv:
        raise KeyError(f"{mc_rollouts}: no continuation for {len(adv)} trained segments, e.g. {next(iter(adv))}")
    return out


def edge_samples(edges: str | Path) -> list[tuple[Origin, Sample]]:
    """SPO-tree's taken edges (TRAIN_EDGES, spo.md §2.2): prefix = prompt + root-to-parent tokens, completion =
    the node's tokens, sampler log-probs from generation time, advantage = the edge's normalised one."""
    t = read_parquet(edges, TRAIN_EDGES)
    cols = ("prompt_id", "node_id", "prefix_token_ids", "completion_token_ids", "sampling_logprobs", "train_advantage")
    return [
        (Origin(prompt_id=p, node_id=n), Sample(prefix, c, lp, a, source=EDGE))
        for p, n, prefix, c, lp, a in _cols(t, *cols)
        if c
    ]


def rollout_samples(
    cfg: Config,
    rollouts: str | Path,
    advantages: str | Path,
    reference: str | Path | None = None,
    segments: str | Path | None = None,
    continuations: str | Path | None = None,
) -> list[tuple[Origin, Sample]]:
    """An iteration's samples for the response and segment families: its responses, then (SPO-chain with
    spo.mc_train) its trained Monte Carlo continuations. `advantages` is the compute_advantages output,
    `reference` the reference log-probs when the KL penalty is in the loss, `segments` SPO-chain's segments
    file (its cutpoints, read when spo.high_prob_advantage=zero)."""
    per_token = cfg.advantage.spec.reads_segments
    cuts = None
    if per_token and cfg.spo.high_prob_advantage == "zero":
        if segments is None:
            raise ValueError("spo.high_prob_advantage='zero' needs the iteration's segments file (its cutpoints)")
        cuts = cutpoints_by_sample(segments)
    rows = response_samples(rollouts, advantages, reference, per_token=per_token, cuts=cuts)
    if continuations is not None:
        rows += continuation_samples(continuations, advantages, cuts)
    return rows


def samples_table(run_id: str, iteration: int, rows: Iterable[tuple[Origin, Sample]]) -> pa.Table:
    """TRAIN_SAMPLES of `rows`; float64 columns hold the samples' Python floats exactly."""
    records = [
        {
            "run_id": run_id,
            "iteration": iteration,
            "source": x.source,
            "prompt_id": o.prompt_id,
            "sample_index": o.sample_index,
            "prefix_id": o.prefix_id,
            "node_id": o.node_id,
            "prefix_token_ids": x.prompt_ids,
            "completion_token_ids": x.completion_ids,
            "sampling_logprobs": list(x.sampler_logprobs or []),
            "advantage": x.advantage,
            "token_advantages": x.token_advantages,
            "ref_logprobs": x.ref_logprobs,
        }
        for o, x in rows
    ]
    return pa.Table.from_pylist(records, schema=TRAIN_SAMPLES)


def write_train_samples(
    dest: str | Path, run_id: str, iteration: int, rows: Iterable[tuple[Origin, Sample]]
) -> FileRef:
    return write_parquet(samples_table(run_id, iteration, rows), TRAIN_SAMPLES, dest)


def write_samples(dest: str | Path, samples: Iterable[Sample], run_id: str = "", iteration: int = 0) -> FileRef:
    """Samples without their origins (a distributed job's copy, after the trainer filled reference log-probs)."""
    return write_train_samples(dest, run_id, iteration, ((Origin(), x) for x in samples))


def read_samples(path: str | Path | FileRef) -> list[Sample]:
    """The trainer's one sample loader: every TRAIN_SAMPLES row of `path`, in file order."""
    t = read_parquet(path, TRAIN_SAMPLES)
    cols = (
        "prefix_token_ids",
        "completion_token_ids",
        "sampling_logprobs",
        "advantage",
        "ref_logprobs",
        "token_advantages",
        "source",
    )
    return [Sample(*row) for row in _cols(t, *cols)]
