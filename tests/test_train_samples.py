"""The training-sample contract (tasks/train_samples.py): what compute_advantages and replay_buffer write into
train_samples.parquet and what the trainer reads back, against values written out by hand."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from configs.loader import resolve
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
from tasks.sample import CONTINUATION, EDGE, RESPONSE, Sample
from tasks.train import iteration_batch, nominal_samples
from tasks.train_samples import (
    Origin,
    continuation_samples,
    edge_samples,
    read_samples,
    response_samples,
    rollout_samples,
    write_samples,
    write_train_samples,
)


def _write(rows: list[dict], schema: pa.Schema, path):
    """rows with every column the schema has (missing ones null) as a Parquet file."""
    full = [{f.name: r.get(f.name) for f in schema} for r in rows]
    return write_parquet(pa.Table.from_pylist(full, schema=schema), schema, path)


def _rollouts(tmp_path, completions: dict):
    """completions: (prompt id, sample index) -> completion token ids; the prompt is [7, 8]."""
    rows = [
        {
            "prompt_id": p,
            "sample_index": s,
            "prompt_token_ids": [7, 8],
            "completion_token_ids": c,
            "sampling_logprobs": [-0.5 * (k + 1) for k in range(len(c))],
        }
        for (p, s), c in completions.items()
    ]
    return _write(rows, ROLLOUTS, tmp_path / "rollouts.parquet")


def test_responses_take_their_advantage_in_file_order_and_empty_ones_drop(tmp_path):
    roll = _rollouts(tmp_path, {("q1", 0): [1, 2], ("q1", 1): [], ("q2", 0): [3]})
    adv = _write(
        [
            {"prompt_id": "q2", "sample_index": 0, "advantage": -1.5},
            {"prompt_id": "q1", "sample_index": 1, "advantage": 9.0},
            {"prompt_id": "q1", "sample_index": 0, "advantage": 0.25},
        ],
        ADVANTAGES,
        tmp_path / "adv.parquet",
    )
    rows = response_samples(roll.path, adv.path)
    assert [o for o, _ in rows] == [Origin(prompt_id="q1", sample_index=0), Origin(prompt_id="q2", sample_index=0)]
    assert [x for _, x in rows] == [
        Sample([7, 8], [1, 2], [-0.5, -1.0], 0.25),
        Sample([7, 8], [3], [-0.5], -1.5),
    ]


def test_a_response_without_an_advantage_or_reference_is_named(tmp_path):
    roll = _rollouts(tmp_path, {("q1", 0): [1], ("q1", 1): [2]})
    adv = _write([{"prompt_id": "q1", "sample_index": 0, "advantage": 1.0}], ADVANTAGES, tmp_path / "a.parquet")
    with pytest.raises(KeyError, match="no advantage for prompt 'q1' sample 1"):
        response_samples(roll.path, adv.path)
    both = _write(
        [{"prompt_id": "q1", "sample_index": s, "advantage": 1.0} for s in (0, 1)], ADVANTAGES, tmp_path / "b.parquet"
    )
    ref = _write([{"prompt_id": "q1", "sample_index": 0, "ref_logprobs": [-2.0]}], REF_LOGPROBS, tmp_path / "r.parquet")
    with pytest.raises(KeyError, match="no reference log-probs for prompt 'q1' sample 1"):
        response_samples(roll.path, both.path, ref.path)


def _segment_advantages(tmp_path, spans: list[tuple]):
    """spans: (prompt id, sample index, prefix id, start, end, advantage)."""
    rows = [
        {"prompt_id": p, "sample_index": s, "prefix_id": pre, "start_token": a, "end_token": b, "advantage": v}
        for p, s, pre, a, b, v in spans
    ]
    return _write(rows, SEGMENT_ADVANTAGES, tmp_path / "segment_advantages.parquet")


def test_spo_chain_spreads_segment_advantages_and_zero_keeps_only_cutpoints(tmp_path):
    roll = _rollouts(tmp_path, {("q1", 0): [1, 2, 3, 4, 5]})
    seg_adv = _segment_advantages(tmp_path, [("q1", 0, None, 0, 2, 0.5), ("q1", 0, None, 2, 5, -1.0)])
    ((_, x),) = response_samples(roll.path, seg_adv.path, per_token=True)
    assert (x.advantage, x.token_advantages) == (0.0, [0.5, 0.5, -1.0, -1.0, -1.0])
    cuts = {(None, "q1", 0): {1, 3}}
    ((_, x),) = response_samples(roll.path, seg_adv.path, per_token=True, cuts=cuts)
    assert x.token_advantages == [0.0, 0.5, 0.0, -1.0, 0.0]


def _mc(tmp_path, conts: list[tuple]):
    """conts: (prefix id, sample index, completion ids)."""
    rows = [
        {
            "prefix_id": pre,
            "sample_index": s,
            "prefix_token_ids": [7, 8, 1],
            "completion_token_ids": c,
            "sampling_logprobs": [-0.25] * len(c),
        }
        for pre, s, c in conts
    ]
    return _write(rows, MC_ROLLOUTS, tmp_path / "mc_rollouts.parquet")


def test_trained_continuations_carry_their_segment_on_every_token(tmp_path):
    mc = _mc(tmp_path, [("p1", 0, [4, 5]), ("p1", 1, [6]), ("p2", 0, [9, 9, 9])])
    seg_adv = _segment_advantages(tmp_path, [("q1", 0, "p1", 0, 2, 0.75), ("q1", 0, "p2", 0, 3, -0.5)])
    rows = continuation_samples(mc.path, seg_adv.path)
    assert [o for o, _ in rows] == [Origin(prefix_id="p1", sample_index=0), Origin(prefix_id="p2", sample_index=0)]
    assert [x for _, x in rows] == [
        Sample([7, 8, 1], [4, 5], [-0.25, -0.25], 0.0, None, [0.75, 0.75], CONTINUATION),
        Sample([7, 8, 1], [9, 9, 9], [-0.25] * 3, 0.0, None, [-0.5] * 3, CONTINUATION),
    ]


def test_a_continuation_segment_that_does_not_span_its_tokens_is_an_error(tmp_path):
    mc = _mc(tmp_path, [("p1", 0, [4, 5])])
    with pytest.raises(ValueError, match=r"continuation p1 #0 spans \[0, 1\), its 2 tokens are \[0, 2\)"):
        continuation_samples(mc.path, _segment_advantages(tmp_path, [("q1", 0, "p1", 0, 1, 0.75)]).path)
    with pytest.raises(KeyError, match="no continuation for 1 trained segments"):
        continuation_samples(mc.path, _segment_advantages(tmp_path, [("q1", 0, "p9", 0, 1, 0.75)]).path)


def test_edges_train_with_their_normalised_advantage(tmp_path):
    rows = [
        {"prompt_id": "q1", "node_id": "n1", "prefix_token_ids": [7], "completion_token_ids": [1, 2]},
        {"prompt_id": "q1", "node_id": "n2", "prefix_token_ids": [7, 1], "completion_token_ids": []},
    ]
    for r, a in zip(rows, (1.25, 3.0)):
        r.update(sampling_logprobs=[-0.125] * len(r["completion_token_ids"]), advantage=9.0, train_advantage=a)
    edges = _write(rows, TRAIN_EDGES, tmp_path / "train_edges.parquet")
    assert edge_samples(edges.path) == [
        (Origin(prompt_id="q1", node_id="n1"), Sample([7], [1, 2], [-0.125, -0.125], 1.25, source=EDGE))
    ]


def test_the_table_round_trips_every_float_exactly_and_keeps_origins(tmp_path):
    third = 1.0 / 3.0  # not a float32: the lists are float64
    rows = [
        (Origin(prompt_id="q", sample_index=2), Sample([1], [2, 3], [-third, -0.1], third, [-math.pi, -1e-9])),
        (Origin(prefix_id="p", sample_index=0), Sample([1, 2], [4], [-0.5], 0.0, None, [third], CONTINUATION)),
    ]
    ref = write_train_samples(tmp_path / "train_samples.parquet", "run", 3, rows)
    assert read_samples(ref) == [x for _, x in rows]
    t = read_parquet(ref, TRAIN_SAMPLES)
    assert t.select(["run_id", "iteration", "source", "prompt_id", "sample_index", "prefix_id"]).to_pylist() == [
        {"run_id": "run", "iteration": 3, "source": RESPONSE, "prompt_id": "q", "sample_index": 2, "prefix_id": None},
        {
            "run_id": "run",
            "iteration": 3,
            "source": CONTINUATION,
            "prompt_id": None,
            "sample_index": 0,
            "prefix_id": "p",
        },
    ]


def test_continuations_grow_mini_batches_but_not_the_number_of_steps(tmp_path):
    """4 prompts x 2 samples, mini-batch 4: 2 steps per epoch. 8 responses + 4 continuations train in 2 steps
    of ceil(12 / 2) = 6; without continuations the mini-batch stays 4."""
    cfg = resolve(
        "spo_chain",
        overrides=[
            "rollout.prompts_per_iteration=4",
            "rollout.samples_per_prompt=2",
            "train.mini_batch_size=4",
            "train.micro_batch_size=2",
            "train.epochs=2",
        ],
    )
    assert nominal_samples(cfg) == 8
    responses = [(Origin(), Sample([1], [2], [-0.1], 0.5)) for _ in range(8)]
    conts = [(Origin(), Sample([1], [2], [-0.1], 0.0, None, [0.5], CONTINUATION)) for _ in range(4)]
    write_train_samples(tmp_path / "a.parquet", "r", 1, responses + conts)
    batch = iteration_batch(cfg, None, tmp_path / "a.parquet")
    assert (len(batch.samples), batch.train_cfg.mini_batch_size, batch.steps_per_iter, batch.steps_now) == (12, 6, 4, 4)
    write_samples(tmp_path / "b.parquet", [x for _, x in responses])
    batch = iteration_batch(cfg, None, tmp_path / "b.parquet")
    assert (batch.train_cfg.mini_batch_size, batch.steps_per_iter) == (4, 4)


def test_rollout_samples_follow_the_config(tmp_path):
    """SPO-chain with spo.high_prob_advantage=zero reads the cutpoints from the segments file; without the
    file it is an error naming the key."""
    cfg = resolve("spo_chain", overrides=["spo.high_prob_advantage=zero"])
    roll = _rollouts(tmp_path, {("q1", 0): [1, 2, 3]})
    seg_adv = _segment_advantages(tmp_path, [("q1", 0, None, 0, 3, 2.0)])
    segs = _write(
        [{"prompt_id": "q1", "sample_index": 0, "prefix_id": None, "cutpoints": [2]}],
        SEGMENTS,
        tmp_path / "segments.parquet",
    )
    ((_, x),) = rollout_samples(cfg, roll.path, seg_adv.path, segments=segs.path)
    assert x.token_advantages == [0.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="spo.high_prob_advantage='zero' needs the iteration's segments file"):
        rollout_samples(cfg, roll.path, seg_adv.path)
