"""SPO-chain core: cutpoints, boundaries, segments, segment advantages (golden, SQL == numpy), masks."""

import math

import numpy as np
import pytest
import torch

from storage.advantages import compute_segment_advantages
from storage.parquet import write_parquet
from storage.schemas import SEGMENTS
from tasks.algos.spo_chain import (
    NO_VALUE,
    agreed,
    boundaries,
    continuation_segment,
    cutpoints,
    finite_mean,
    segment_advantages,
    segments,
    token_advantages,
    value_at,
    whiten,
)
from tasks.trainer import whiten_masked

HI, LO = 0.95, 0.5


def _spans(probs, rho=0.9, interval=5):
    return [(s.start, s.end, s.num_cutpoints) for s in segments(probs, rho, interval)]


def test_no_token_below_rho_is_one_segment_without_cutpoints():
    probs = [HI] * 6
    assert cutpoints(probs, 0.9) == [] and boundaries(probs, 0.9, 5) == []
    assert _spans(probs) == [(0, 6, 0)]


def test_all_tokens_below_rho():
    probs = [LO] * 7
    assert boundaries(probs, 0.9, 2) == [-1, 1, 3, 5]  # before the 1st, 3rd, 5th, 7th cutpoint
    assert _spans(probs, interval=2) == [(0, 2, 2), (2, 4, 2), (4, 6, 2), (6, 7, 1)]


def test_exactly_interval_cutpoints_make_one_boundary():
    probs = [HI, LO, HI, LO, LO, HI, LO, LO, HI]  # 5 cutpoints: 1, 3, 4, 6, 7
    assert boundaries(probs, 0.9, 5) == [0]
    # the span before the boundary holds only a high-probability token; then one segment of 5 cutpoints
    assert _spans(probs) == [(0, 1, 0), (1, 9, 5)]


def test_cutpoint_at_the_first_token_bounds_at_the_prompt():
    probs = [LO, HI, HI, LO]
    assert boundaries(probs, 0.9, 1) == [-1, 2]
    assert _spans(probs, interval=1) == [(0, 3, 1), (3, 4, 1)]


def test_reference_trajectory_shape():
    # The reference's int5 rule on a 30-token response with 7 low-probability tokens:
    # boundaries before the 1st and the 6th cutpoint, remainder in the last segment.
    low = [3, 7, 8, 12, 20, 21, 25]
    probs = [LO if i in low else HI for i in range(30)]
    assert boundaries(probs, 0.9, 5) == [2, 20]
    assert _spans(probs) == [(0, 3, 0), (3, 21, 5), (21, 30, 2)]
    # every segment after the first starts with a low-probability token
    assert all(probs[s] < 0.9 for s, _, _ in _spans(probs)[1:])
    assert [s.cutpoints for s in segments(probs, 0.9, 5)] == [(), (3, 7, 8, 12, 20), (21, 25)]
    assert segments([], 0.9, 5) == []
    with pytest.raises(ValueError, match="spo.interval=0"):
        boundaries(probs, 0.9, 0)


def test_segment_advantages_from_a_hand_built_value_table():
    # V(prompt) = .5 (group), V(2) = .25, V(20) = .75, reward 1 -> A = [-.25, .5, .25]
    v = {-1: 0.5, 2: 0.25, 20: 0.75, 29: 1.0}
    segs = segments([LO if i in [3, 7, 8, 12, 20, 21, 25] else HI for i in range(30)], 0.9, 5)
    adv = segment_advantages([v[s.start_position] for s in segs], [v[s.end_position] for s in segs])
    np.testing.assert_allclose(adv, [-0.25, 0.5, 0.25])
    # unknown start value (the reference without V(prompt)): advantage 0
    np.testing.assert_allclose(segment_advantages([np.nan, 0.25], [0.25, 1.0]), [0.0, 0.75])
    toks = token_advantages(30, [(s.start, s.end, a) for s, a in zip(segs, adv)])
    assert toks[:3] == [-0.25] * 3 and toks[3:21] == [0.5] * 18 and toks[21:] == [0.25] * 9


def test_whiten_weighs_trained_tokens():
    out = whiten(np.array([1.0, -1.0, 5.0]), np.array([1.0, 1.0, 0.0]), eps=0.0)
    np.testing.assert_allclose(out, [1.0, -1.0, 5.0])  # mean 0, var 1 over the weighted two; the third untouched
    out = whiten(np.array([2.0, 0.0]), np.array([3.0, 1.0]), eps=0.0)  # mu 1.5, var (3*.25 + 2.25)/4 = .75
    np.testing.assert_allclose(out, [0.5 / np.sqrt(0.75), -1.5 / np.sqrt(0.75)])


def _segment_rows(rng, n_resp=6):
    rows = []
    for r in range(n_resp):
        probs = rng.choice([LO, HI], size=int(rng.integers(1, 25)), p=[0.3, 0.7])
        values = {-1: float(rng.random())}
        for s in segments(probs, 0.9, 2):
            values.setdefault(s.end_position, float(rng.choice([0.0, 0.25, 0.5, 1.0, np.nan])))
            rows.append(
                {
                    "run_id": "r",
                    "iteration": 1,
                    "prompt_id": f"p{r // 2}",
                    "sample_index": r % 2,
                    "prefix_id": None,
                    "segment_index": s.index,
                    "start_token": s.start,
                    "end_token": s.end,
                    "num_cutpoints": s.num_cutpoints,
                    "cutpoints": list(s.cutpoints),
                    "v_start": values[s.start_position],
                    "n_start": 4,
                    "v_end": values[s.end_position],
                    "n_end": 4,
                }
            )
        # Trained Monte Carlo continuations (spo.mc_train) share the table, keys and whitening.
        for j in range(2):
            n = int(rng.integers(1, 6))
            rows.append(
                {
                    "run_id": "r",
                    "iteration": 1,
                    "prompt_id": f"p{r // 2}",
                    "sample_index": j,
                    "prefix_id": f"x{r}",
                    "segment_index": 0,
                    "start_token": 0,
                    "end_token": n,
                    "num_cutpoints": int(rng.integers(0, n + 1)),
                    "cutpoints": [],
                    "v_start": 0.5,
                    "n_start": 2,
                    "v_end": float(j),
                    "n_end": 1,
                }
            )
    return rows


@pytest.mark.parametrize("normalize", ["none", "batch", "micro_batch"])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_segment_sql_matches_numpy(tmp_path, normalize, masked, seed):
    rows = _segment_rows(np.random.default_rng(seed))
    write_parquet(rows, SEGMENTS, tmp_path / "segments.parquet")
    table = compute_segment_advantages(
        "spo_chain",
        tmp_path / "segments.parquet",
        {"normalize": normalize, "rho": 0.9 if masked else None, "whiten_eps": 1e-8},
    )
    key = lambda r: (r["prompt_id"], r["prefix_id"], r["sample_index"], r["segment_index"])  # noqa: E731
    got = {key(r): r["advantage"] for r in table.to_pylist()}
    raw = segment_advantages([r["v_start"] for r in rows], [r["v_end"] for r in rows])
    if normalize == "batch":
        w = [r["num_cutpoints"] if masked else r["end_token"] - r["start_token"] for r in rows]
        raw = whiten(raw, np.array(w, dtype=float))
    np.testing.assert_allclose([got[key(r)] for r in rows], raw, rtol=1e-9, atol=1e-9)
    # Rows come out in a fixed order: a prompt's response segments, then its continuations.
    order = [key(r) for r in table.to_pylist()]
    assert order == sorted(order, key=lambda k: (k[0], k[1] is not None, k[1] or "", k[2], k[3]))


def test_a_continuation_trains_as_one_segment_from_the_prefix_value_to_its_reward():
    seg = continuation_segment([HI, LO, HI, LO], 0.9, reward=1.0, v_prefix=0.25)
    assert (seg.start, seg.end, seg.start_position, seg.end_position) == (0, 4, -1, 3)
    assert seg.cutpoints == (1, 3) and seg.num_cutpoints == 2
    assert continuation_segment([HI, HI], 0.9, reward=0.0, v_prefix=0.5).num_cutpoints == 0
    assert continuation_segment([HI], 0.9, reward=0.1, v_prefix=(0.1 + 0.1 + 0.0) / 3) is not None  # A = 1/30


@pytest.mark.parametrize(
    "probs, reward, v_prefix",
    [
        ([HI, LO], 1.0, 1.0),  # every continuation of the prefix scored alike: A = 0, no signal
        ([HI, LO], 0.0, 0.0),
        ([HI, LO], 0.1, sum([0.1] * 3) / 3),  # all alike, but the float mean is 0.1 + 2.8e-17: still no signal
        ([], 1.0, 0.5),  # no token to train
        ([LO], float("nan"), 0.5),  # a failed grade
        ([LO], 1.0, float("nan")),  # no finite value for the prefix
    ],
)
def test_a_continuation_without_signal_does_not_train(probs, reward, v_prefix):
    assert continuation_segment(probs, 0.9, reward, v_prefix) is None


def test_boundary_values_come_from_the_reward_the_monte_carlo_mean_or_the_group():
    values = {"k3": finite_mean([1.0, 0.0, 1.0, 1.0]), "k_failed": finite_mean([])}
    assert values["k3"] == (0.75, 4) and values["k_failed"] == NO_VALUE
    group = finite_mean([1.0, 0.0])
    assert value_at(5, 6, -2.0, group, "k3", values) == (-2.0, 1)  # the last token: the response's own reward
    assert value_at(3, 6, 1.0, group, "k3", values) == (0.75, 4)  # a boundary prefix: its Monte Carlo mean
    assert value_at(-1, 6, 1.0, group, None, values) == (0.5, 2)  # the prompt: the group's mean reward
    assert value_at(-1, 6, 1.0, NO_VALUE, None, values) is NO_VALUE  # V(prompt) unknown (spo.prompt_value)
    v, n = value_at(2, 6, 1.0, group, "k_failed", values)  # every continuation failed to grade
    assert math.isnan(v) and n == 0


def test_adaptive_n_settles_only_prefixes_whose_first_rewards_agree():
    scores = {
        "all_right": [1.0, 1.0],
        "all_wrong": [0.0, 0.0],
        "split": [1.0, 0.0],
        "penalty": [-2.0, -2.0],
        "failed": [float("nan"), float("nan")],
        "one_failed": [1.0, float("nan")],
        "none": [],
    }
    assert agreed(scores) == {"all_right", "all_wrong", "penalty"}


def test_micro_batch_whitening_uses_masked_tokens_only():
    adv = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [False, False, False]])
    out = whiten_masked(adv, mask, eps=0.0)
    torch.testing.assert_close(out[0], torch.tensor([-1.0, 0.0, 1.0]))  # mean 2, unbiased std 1
    torch.testing.assert_close(out[1], adv[1])


def test_probability_mask_leaves_high_probability_tokens_without_gradient():
    from tasks.algos.policy_loss import LossSpec, policy_loss

    old = torch.log(torch.tensor([[0.95, 0.5, 0.99, 0.2]]))
    logp = old.clone().requires_grad_(True)
    mask = old.exp() < 0.9  # SPO's mask: p_old < rho
    loss, _ = policy_loss(logp, old, torch.ones(1, 4), mask, LossSpec(kl_coef=0.1), ref_logp=old - 0.3)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 2] == 0
    assert logp.grad[0, 1] != 0 and logp.grad[0, 3] != 0
