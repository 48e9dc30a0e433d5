"""Paper-faithful mode (issue 28): configs/presets/paper.yaml and each of its keys.

The port tests compute the SPO reference's per-token advantages from spo.md §2.1, §3.1-§3.3 with code
written here (generator walk, p > 0.9 zeroing, micro-batch masked whitening with unbiased variance), and
compare them with the advantages segflow's trainer trains on under the overlay, on fixed inputs.
"""

import math
import random

import numpy as np
import pytest
import torch

from configs.loader import ConfigError, resolve
from configs.schema import Config
from storage.advantages import compute_segment_advantages
from storage.parquet import write_parquet
from storage.schemas import ROLLOUTS, SEGMENT_ADVANTAGES, SEGMENTS
from tasks.advantage import segment_sql_params
from tasks.algos import estimators
from tasks.algos.losses import aggregate
from tasks.algos.policy_loss import LossSpec, kl_estimate, policy_loss
from tasks.algos.spo_chain import NO_VALUE, segments, token_advantages, value_at
from tasks.teacher_forcing import recomputes_top_p
from tasks.train import iteration_batch, micro_batch_whitening
from tasks.train_samples import rollout_samples, write_train_samples
from tasks.trainer import (
    Sample,
    _advantages,
    _rows,
    loss_spec,
    make_scheduler,
    pack,
    ratio_skipped,
    rl_update,
    trained_advantages,
)

PAPER = "configs/presets/paper.yaml"
CPU = torch.device("cpu")

# --- the reference, ported from spo.md (own code) -----------------------------------------------------------


def ref_chain_raw(probs, reward, mc, interval, rho=0.9):
    """spo.md §2.1: the generator's per-token advantages of one response. `mc` maps a boundary b (prefix =
    prompt + response[0..b]) to its Monte Carlo value; V(prompt) (b = -1) exists only when token 0 is low."""
    n = len(probs)
    bounds = [i - 1 for i in range(n) if probs[i] < rho][::interval]
    value = {b: mc[b] for b in bounds}
    value[n - 1] = reward
    base = value[-1] if bounds and bounds[0] == -1 else None
    seg_adv = {}
    for t in range(n):  # left to right over the positions that hold a value
        if t in value:
            seg_adv[t] = 0.0 if base is None else value[t] - base
            base = value[t]
    out = [seg_adv[min(p for p in seg_adv if p >= t)] for t in range(n)]  # inherit from the next valued position
    return [0.0 if p > rho else a for p, a in zip(probs, out)]  # the generator's zeroing


def ref_whiten(rows, masks):
    """spo.md §3.3: (A - mean) / sqrt(var_unbiased + 1e-8) over the masked tokens of one micro-batch."""
    xs = [a for row, m in zip(rows, masks) for a, k in zip(row, m) if k]
    mu = sum(xs) / len(xs)
    var = sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)
    return [[(a - mu) / math.sqrt(var + 1e-8) if k else None for a, k in zip(row, m)] for row, m in zip(rows, masks)]


def ref_trained(raw_rows, probs_rows, use_prob_mask, micro):
    """Per micro-batch of `micro` consecutive sequences: mask (p_old < 0.9 when the mask is on), whitening."""
    out = []
    for s in range(0, len(raw_rows), micro):
        masks = [[(p < 0.9) if use_prob_mask else True for p in pr] for pr in probs_rows[s : s + micro]]
        out += ref_whiten(raw_rows[s : s + micro], masks)
    return out


# --- segflow's path on the same inputs --------------------------------------------------------------------

# (prompt id, probs at the sampling temperature, reward, MC value per boundary position)
CHAIN = [
    ("p0", [0.5, 0.95, 0.3, 0.97, 0.6, 0.99, 0.2, 0.95], 1.0, {-1: 0.5, 3: 0.75}),
    ("p0", [0.95, 0.4, 0.96, 0.98, 0.7, 0.92], 0.0, {0: 0.25}),  # token 0 is not low: no V(prompt)
    ("p1", [0.8, 0.99, 0.85, 0.1, 0.95, 0.93, 0.5], 0.0, {-1: 0.25, 2: 0.5}),
    ("p1", [0.97, 0.96, 0.2, 0.99, 0.3], 1.0, {1: 0.5}),
]


def _chain_rows(cfg):
    """SEGMENTS rows as the spo_values stage builds them (spo.prompt_value=reference: V(prompt) only when the
    first token is a cutpoint)."""
    rows = []
    for r, (pid, probs, reward, mc) in enumerate(CHAIN):
        assert cfg.spo.prompt_value == "reference"
        values = {(r, b): (v, 4) for b, v in mc.items()}
        for seg in segments(probs, cfg.spo.rho, cfg.spo.interval):
            ends = []
            for pos in (seg.start_position, seg.end_position):
                key = (r, pos) if pos >= 0 or probs[0] < cfg.spo.rho else None
                ends.append(value_at(pos, len(probs), reward, NO_VALUE, key, values))
            rows.append(
                {
                    "run_id": "r",
                    "iteration": 1,
                    "prompt_id": pid,
                    "sample_index": r % 2,
                    "prefix_id": None,
                    "segment_index": seg.index,
                    "start_token": seg.start,
                    "end_token": seg.end,
                    "num_cutpoints": seg.num_cutpoints,
                    "cutpoints": list(seg.cutpoints),
                    "v_start": ends[0][0],
                    "n_start": ends[0][1],
                    "v_end": ends[1][0],
                    "n_end": ends[1][1],
                }
            )
    return rows


def _segflow_chain(cfg, tmp_path):
    """The advantages train_policy's trainer trains on, per micro-batch of cfg.train.micro_batch_size
    consecutive samples: segments -> adv_spo_chain.sql -> train_samples.parquet -> train.iteration_batch ->
    trainer.trained_advantages."""
    seg_path = tmp_path / "segments.parquet"
    write_parquet(_chain_rows(cfg), SEGMENTS, seg_path)
    adv = write_parquet(
        compute_segment_advantages("spo_chain", seg_path, segment_sql_params(cfg)),
        SEGMENT_ADVANTAGES,
        tmp_path / "segment_advantages.parquet",
    )
    rollouts = write_parquet(
        [
            {
                "run_id": "r",
                "iteration": 1,
                "prompt_id": pid,
                "sample_index": r % 2,
                "policy_version": 0,
                "seed": r,
                "prompt_token_ids": [1, 2],
                "completion_token_ids": [3 + t for t in range(len(probs))],
                "sampling_logprobs": [math.log(p) for p in probs],
                "logprobs_mode": "processed_logprobs",
                "finish_reason": "stop",
                "completion_text": "",
            }
            for r, (pid, probs, _, _) in enumerate(CHAIN)
        ],
        ROLLOUTS,
        tmp_path / "rollouts.parquet",
    )
    # The stage's own path: the samples table compute_advantages writes, read back by train_policy's loader.
    write_train_samples(
        tmp_path / "train_samples.parquet", "r", 1, rollout_samples(cfg, rollouts.path, adv.path, segments=seg_path)
    )
    samples = iteration_batch(cfg, None, tmp_path / "train_samples.parquet").samples
    return _trained(cfg, samples, [probs for _, probs, _, _ in CHAIN])


def _trained(cfg, samples, probs_rows):
    """trainer.trained_advantages over consecutive micro-batches, pi_old = the given probabilities."""
    micro, out = cfg.train.micro_batch_size, []
    for s in range(0, len(samples), micro):
        part = samples[s : s + micro]
        batch = pack([x.prompt_ids for x in part], [x.completion_ids for x in part], 0, CPU)
        old = _rows([[math.log(p) for p in pr] for pr in probs_rows[s : s + micro]], batch.comp_mask.shape, CPU)
        adv, mask = trained_advantages(
            _advantages(part, batch.comp_mask.shape, CPU),
            old,
            batch.comp_mask,
            cfg.train.prob_mask_rho,
            micro_batch_whitening(cfg),
        )
        out += [
            [float(a) if k else None for a, k in zip(adv[i, : len(x.completion_ids)], mask[i])]
            for i, x in enumerate(part)
        ]
    return out


def _assert_same(got, want):
    assert [[a is None for a in row] for row in got] == [[a is None for a in row] for row in want]
    np.testing.assert_allclose(
        [a for row in got for a in row if a is not None],
        [a for row in want for a in row if a is not None],
        rtol=1e-5,
        atol=1e-5,
    )


MICRO2 = ["train.micro_batch_size=2", "train.mini_batch_size=4"]  # the R1-Distill runs' 2-sequence micro-batches


def test_spo_chain_under_the_overlay_trains_the_references_token_advantages(tmp_path):
    cfg = resolve("spo_chain", PAPER, MICRO2)
    want = ref_trained(
        [ref_chain_raw(p, r, mc, cfg.spo.interval) for _, p, r, mc in CHAIN],
        [p for _, p, _, _ in CHAIN],
        use_prob_mask=True,
        micro=2,
    )
    _assert_same(_segflow_chain(cfg, tmp_path), want)


def test_spo_chain_without_the_mask_under_the_overlay_is_the_papers_ablation(tmp_path):
    """The reference's 'without probability mask' still zeroes the raw advantage of p > 0.9 tokens: every
    token trains, and those get only the whitening shift. segflow's own ablation (every token carries its
    segment's advantage) is a different one."""
    cfg = resolve("spo_chain", PAPER, MICRO2 + ["train.prob_mask_rho=null"])
    want = ref_trained(
        [ref_chain_raw(p, r, mc, cfg.spo.interval) for _, p, r, mc in CHAIN],
        [p for _, p, _, _ in CHAIN],
        use_prob_mask=False,
        micro=2,
    )
    got = _segflow_chain(cfg, tmp_path)
    _assert_same(got, want)
    # the first response's p > 0.9 tokens all get the same value: the shift of a raw 0
    shifted = {round(a, 9) for a, p in zip(got[0], CHAIN[0][1]) if p > 0.9}
    assert len(shifted) == 1 and shifted != {0.0}

    own = resolve("spo_chain", PAPER, MICRO2 + ["train.prob_mask_rho=null", "spo.high_prob_advantage=segment"])
    (tmp_path / "own").mkdir()
    theirs = _segflow_chain(own, tmp_path / "own")
    assert not np.allclose([a for row in theirs for a in row], [a for row in want for a in row], atol=1e-3)


GRPO_REWARDS = [
    ("g0", 1.0, 3),
    ("g0", 0.0, 2),
    ("g0", 1.0, 4),
    ("g0", 0.0, 1),
    ("g1", 1.0, 2),
    ("g1", 1.0, 3),
    ("g1", 0.0, 5),
    ("g1", -2.0, 2),
]


def _grpo_samples(cfg):
    adv = estimators.grpo([r for _, r, _ in GRPO_REWARDS], [g for g, _, _ in GRPO_REWARDS], eps=cfg.advantage.eps)
    return [Sample([1, 2], [3] * n, [], float(a)) for (_, _, n), a in zip(GRPO_REWARDS, adv)]


def _ref_grpo(micro):
    """spo.md §4: (r - mean_G) / (std_G + 1e-8), population std, on every response token; then §3.3."""
    raw = []
    for g, r, n in GRPO_REWARDS:
        rs = [x for h, x, _ in GRPO_REWARDS if h == g]
        mu = sum(rs) / len(rs)
        sd = math.sqrt(sum((x - mu) ** 2 for x in rs) / len(rs))
        raw.append([(r - mu) / (sd + 1e-8)] * n)
    return ref_trained(raw, [[0.5] * n for _, _, n in GRPO_REWARDS], use_prob_mask=False, micro=micro)


def test_grpo_under_the_overlay_is_whitened_per_micro_batch_as_the_reference():
    cfg = resolve("grpo", PAPER, MICRO2)
    samples = _grpo_samples(cfg)
    probs = [[0.5] * len(x.completion_ids) for x in samples]
    _assert_same(_trained(cfg, samples, probs), _ref_grpo(micro=2))
    # segflow's GRPO (no overlay) trains the raw group advantages: not the paper's baseline
    plain = resolve("grpo", None, MICRO2)
    got = _trained(plain, _grpo_samples(plain), probs)
    assert not np.allclose([a for row in got for a in row], [a for row in _ref_grpo(2) for a in row], atol=1e-3)


def test_rloo_under_the_overlay_is_whitened_per_micro_batch():
    cfg = resolve("rloo", PAPER, MICRO2)
    assert micro_batch_whitening(cfg) and not micro_batch_whitening(resolve("rloo"))


# --- each key against hand computation ----------------------------------------------------------------------


def test_whitening_of_grpo_per_micro_batch_by_hand():
    # one micro-batch: A = +1 on 3 tokens, -1 on 2: mean 0.2, unbiased var (3 * 0.64 + 2 * 1.44) / 4 = 1.2
    part = [Sample([1], [3, 4, 5], [], 1.0), Sample([1], [6, 7], [], -1.0)]
    batch = pack([x.prompt_ids for x in part], [x.completion_ids for x in part], 0, CPU)
    adv, mask = trained_advantages(
        _advantages(part, batch.comp_mask.shape, CPU), torch.zeros(2, 3), batch.comp_mask, None, whiten=True
    )
    s = math.sqrt(1.2 + 1e-8)
    torch.testing.assert_close(adv[mask], torch.tensor([0.8 / s] * 3 + [-1.2 / s] * 2))
    raw, _ = trained_advantages(
        _advantages(part, batch.comp_mask.shape, CPU), torch.zeros(2, 3), batch.comp_mask, None, whiten=False
    )
    torch.testing.assert_close(raw[mask], torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0]))


def _tiny():
    from configs.schema import TinyModelSection
    from tasks import tiny_model

    torch.manual_seed(0)
    return tiny_model.build_model(TinyModelSection(), len(tiny_model.build_tokenizer()), seed=0)


def _rl(train_cfg, samples):
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=0.0)
    stats = rl_update(
        model,
        opt,
        make_scheduler(opt, train_cfg, 10),
        samples,
        train_cfg,
        temperature=1.0,
        pad_id=0,
        device=CPU,
        seed=0,
    )
    return stats, any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_whiten_advantages_reaches_the_trainer_for_grpo():
    """Equal advantages within each micro-batch whiten to 0: nothing trains. Unwhitened, they train."""
    base = Config().train.model_copy(update={"lr": 1e-3, "mini_batch_size": 4, "micro_batch_size": 2})
    samples = [Sample([5, 6], [9, 10, 11], [], 1.0) for _ in range(4)]
    _, moved = _rl(base.model_copy(update={"whiten_advantages": "micro_batch"}), samples)
    assert not moved
    _, moved = _rl(base, samples)
    assert moved


def test_reference_kl_aggregation_and_clamp_by_hand():
    # two sequences; d = log pi - log pi_ref; the second sequence's last token is padding (mask 0)
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -30.0, -1.0]])
    d = torch.tensor([[0.5, -1.0, 0.2], [-0.3, -12.0, 7.0]])
    ref, mask = logp - d, torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    zero = torch.zeros(2, 3)

    def k3(x):  # exp(c) - c - 1 with c = log pi_ref - log pi = -x
        return math.exp(-x) + x - 1.0

    beta = 0.1
    ref_spec = LossSpec(kl_coef=beta, kl_agg="seq-mean-token-sum", log_ratio_clamp=10.0, kl_k3_max=None)
    loss, _ = policy_loss(logp, logp.detach(), zero, mask, ref_spec, ref_logp=ref)
    seq = [k3(0.5) + k3(-1.0) + k3(0.2), k3(-0.3) + k3(-10.0)]  # d = -12 clamped to -10; k3 = e^10 - 11
    assert loss.item() == pytest.approx(beta * sum(seq) / 2, rel=1e-5)
    # segflow's default: token-mean like the PG term, d clamped to +-20, k3 to [-10, 10]
    loss, _ = policy_loss(logp, logp.detach(), zero, mask, LossSpec(kl_coef=beta), ref_logp=ref)
    toks = [k3(0.5), k3(-1.0), k3(0.2), k3(-0.3), 10.0]
    assert loss.item() == pytest.approx(beta * sum(toks) / 5, rel=1e-5)


def test_kl_k3_max_null_keeps_k3_non_negative_only():
    d = torch.tensor([-12.0, -3.0, 0.0, 4.0])
    out = kl_estimate(d, torch.zeros(4), "k3", clamp=10.0, k3_max=None)
    want = [math.exp(10) - 11, math.exp(3) - 4, 0.0, math.exp(-4) + 3]
    torch.testing.assert_close(out, torch.tensor(want), rtol=1e-6, atol=1e-6)
    assert (kl_estimate(torch.tensor([1e-4]), torch.zeros(1), "k3", k3_max=None) >= 0).all()


def test_log_ratio_clamp_caps_the_policy_ratio():
    old = torch.tensor([[-15.0, -1.0]])
    logp = torch.tensor([[0.0, -1.0]])  # log ratio 15 and 0
    _, st = policy_loss(logp, old, torch.ones(1, 2), torch.ones(1, 2), LossSpec(log_ratio_clamp=10.0))
    assert st["ratio"] == pytest.approx(math.exp(10) + 1.0, rel=1e-5)
    _, st = policy_loss(logp, old, torch.ones(1, 2), torch.ones(1, 2), LossSpec())
    assert st["ratio"] == pytest.approx(math.exp(15) + 1.0, rel=1e-5)


def test_micro_batch_token_mean_averages_the_micro_batches_token_means():
    loss = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # micro-batches: row 0 (token-mean 1.5) and row 1 (4.0); K = 2
    got = sum(
        aggregate(loss[i : i + 1], mask[i : i + 1], "micro-batch-token-mean", num_micro_batches=2) for i in range(2)
    )
    assert float(got) == pytest.approx((1.5 + 4.0) / 2)
    assert float(aggregate(loss, mask, "token-mean")) == pytest.approx(7.0 / 3)


def test_ratio_skip_guard_by_hand_and_in_the_trainer():
    mask = torch.tensor([[True, True, False]])
    assert ratio_skipped(25.0, mask, 10.0)  # mean ratio 12.5 over the 2 trained tokens
    assert not ratio_skipped(19.0, mask, 10.0)  # 9.5
    assert not ratio_skipped(1e9, mask, None)
    # pi = pi_old at the first step: mean ratio 1. A limit below it skips both micro-batches.
    base = Config().train.model_copy(update={"lr": 1e-3, "mini_batch_size": 4, "micro_batch_size": 2})
    samples = [Sample([5, 6], [9, 10, 11], [], a) for a in (1.0, -1.0, 0.5, -0.5)]
    stats, moved = _rl(base.model_copy(update={"skip_ratio_above": 0.5}), samples)
    assert not moved and stats["skipped_micro_batches"] == 2.0
    stats, moved = _rl(base.model_copy(update={"skip_ratio_above": 10.0}), samples)
    assert moved and stats["skipped_micro_batches"] == 0.0
    stats, _ = _rl(base, samples)
    assert "skipped_micro_batches" not in stats  # default: no guard, metrics as before


def test_high_prob_advantage_zero_keeps_cutpoints_only():
    segs = [(0, 3, 0.5), (3, 5, -0.25)]
    assert token_advantages(5, segs) == [0.5, 0.5, 0.5, -0.25, -0.25]
    assert token_advantages(5, segs, keep={1, 3}) == [0.0, 0.5, 0.0, -0.25, 0.0]


def test_loss_spec_reads_the_new_keys():
    cfg = resolve("spo_chain", PAPER)
    spec = loss_spec(cfg.train)
    assert (spec.kl_agg, spec.log_ratio_clamp, spec.kl_k3_max, spec.agg) == (
        "seq-mean-token-sum",
        10.0,
        None,
        "micro-batch-token-mean",
    )
    spec = loss_spec(Config().train)  # the defaults are today's loss: KL with the PG term, verl's clamps
    assert (spec.kl_agg, spec.log_ratio_clamp, spec.kl_k3_max, spec.agg) == (None, 20.0, 10.0, "token-mean")


def test_defaults_keep_segflows_behaviour():
    c = Config()
    assert (
        c.train.whiten_advantages,
        c.train.kl_agg,
        c.train.log_ratio_clamp,
        c.train.kl_k3_max,
        c.train.skip_ratio_above,
        c.spo.high_prob_advantage,
        c.spo.top_p_probs,
        c.tree.grade_truncated,
    ) == ("none", "loss_agg", 20.0, 10.0, None, "segment", "sampler", False)
    assert not micro_batch_whitening(resolve("grpo")) and not micro_batch_whitening(resolve("spo_chain"))


def test_the_overlay_stacks_on_every_algorithm_preset():
    for preset in (
        "grpo",
        "grpo_mask",
        "rloo",
        "spo_chain",
        "spo_tree",
        "spo_chain_gsm8k_rho",
        "math500_r1distill_spo_tree",
    ):
        cfg = resolve(preset, PAPER)
        assert micro_batch_whitening(cfg) and cfg.tree.value == "children" and cfg.spo.prompt_value == "reference"
        assert cfg.train.prob_mask_rho == resolve(preset).train.prob_mask_rho  # the preset's mask stays


@pytest.mark.parametrize(
    "overrides, keys",
    [
        (["spo.normalize=batch"], ("train.whiten_advantages", "spo.normalize")),
        (
            ["spo.normalize=batch", "train.whiten_advantages=none", "train.prob_mask_rho=null"],
            ("spo.high_prob_advantage", "spo.normalize"),
        ),
    ],
)
def test_inconsistent_whitening_is_rejected_naming_both_keys(overrides, keys):
    with pytest.raises(ConfigError) as e:
        resolve("spo_chain", PAPER, overrides)
    assert all(k in str(e.value) for k in keys)


def test_top_p_recompute_applies_only_below_top_p_1():
    assert recomputes_top_p(resolve("spo_chain_gsm8k_rho", PAPER))  # top_p 0.9
    assert not recomputes_top_p(resolve("math500_r1distill_spo_tree", PAPER))  # top_p 1.0
    assert not recomputes_top_p(resolve("spo_chain_gsm8k_rho"))  # default: the sampler's


def test_tree_recompute_gives_each_node_the_policys_temperature_logprobs(tiny_model_dir):
    """With top_p < 1, a node's pi_old is its tokens' log-probs after prompt + ancestors' tokens under the
    generating policy at the sampling temperature, not the sampler's nucleus-renormalised ones."""
    from tasks.checkpoints import load_policy
    from tasks.trainer import sequence_logprobs
    from tasks.tree_rollouts import Node, recompute_logprobs

    cfg = resolve("spo_tree", PAPER, ["rollout.top_p=0.9", "rollout.temperature=0.6"])
    prompts = [[5, 6, 7], [8, 9]]
    nodes = [
        Node("a", None, 0, 0, -1, []),
        Node("b", None, 1, 0, -1, []),
        Node("a/0", "a", 0, 1, 0, [10, 11], [10, 11], [0.0, 0.0]),
        Node("a/0/1", "a/0", 0, 2, 1, [10, 11, 12, 13, 14], [12, 13, 14], [0.0] * 3),
        Node("b/0", "b", 1, 1, 0, [15], [15], [0.0]),
    ]
    recompute_logprobs(cfg, str(tiny_model_dir), prompts, nodes)
    model, tok, _ = load_policy(cfg, str(tiny_model_dir))
    want = sequence_logprobs(
        model,
        [[5, 6, 7], [5, 6, 7, 10, 11], [8, 9]],
        [[10, 11], [12, 13, 14], [15]],
        pad_id=tok.pad_token_id,
        device=CPU,
        temperature=0.6,
        chunk=64,
        micro_batch=8,
    )
    for node, lp in zip(nodes[2:], want):
        np.testing.assert_allclose(node.logprobs, lp, rtol=1e-5, atol=1e-6)
    assert nodes[0].logprobs == [] and nodes[1].logprobs == []


def test_grade_truncated_grades_a_cut_leaf_on_its_text():
    from tasks.algos.grading import RewardScheme
    from tasks.datasets.graders import grade_all
    from tasks.tree_rollouts import grading_finish_reasons

    finish = ["length", "stop", None]
    assert grading_finish_reasons(finish, False) == finish
    assert grading_finish_reasons(finish, True) == ["stop", "stop", None]
    scheme = RewardScheme(truncated=-1.0)
    cut = grade_all("gsm8k", ["so #### 5"], ["5"], grading_finish_reasons(["length"], False), scheme)[0]
    graded = grade_all("gsm8k", ["so #### 5"], ["5"], grading_finish_reasons(["length"], True), scheme)[0]
    assert (cut.score, cut.status) == (-1.0, "truncated") and (graded.score, graded.status) == (1.0, "ok")


def test_spo_chain_port_is_stable_under_shuffled_micro_batch_contents(tmp_path):
    """The port and segflow agree for any grouping of the responses into micro-batches (not only the
    listed order): whitening statistics are per micro-batch, whatever it holds."""
    global CHAIN
    saved = CHAIN
    try:
        for seed in range(3):
            CHAIN = random.Random(seed).sample(saved, len(saved))
            CHAIN = [(f"p{i // 2}", p, r, mc) for i, (_, p, r, mc) in enumerate(CHAIN)]
            cfg = resolve("spo_chain", PAPER, MICRO2)
            want = ref_trained(
                [ref_chain_raw(p, r, mc, cfg.spo.interval) for _, p, r, mc in CHAIN],
                [p for _, p, _, _ in CHAIN],
                use_prob_mask=True,
                micro=2,
            )
            (tmp_path / str(seed)).mkdir()
            _assert_same(_segflow_chain(cfg, tmp_path / str(seed)), want)
    finally:
        CHAIN = saved


@pytest.mark.slow
def test_top_p_sampler_logprobs_are_inflated_and_the_recompute_is_the_temperature_only_policy(tiny_model_dir):
    """Why spo.top_p_probs exists: vLLM's log-probs under top_p < 1 are renormalised over the nucleus, so
    p_sampler >= p_policy (strictly where the nucleus leaves tokens out); the recompute is the trainer's
    teacher-forced pass at the sampling temperature (no top-p)."""
    from configs.schema import RolloutSection
    from tasks.engines.base import Request
    from tasks.engines.live import get_engine
    from tasks.teacher_forcing import policy_logprobs

    # The process-wide engine as it is now (an earlier flow test may have replaced the session fixture's).
    live_engine, _ = get_engine(tiny_model_dir, RolloutSection(), "float32", 0)
    live_engine.load_weights(tiny_model_dir)
    prompts = [[6, 75, 8, 83, 11 + i] for i in range(4)]
    outs = live_engine.generate(
        [Request(p, s, 16) for s, p in enumerate(prompts)], temperature=0.6, top_p=0.5, progress=False
    )
    cfg = resolve("spo_tree", PAPER, ["rollout.top_p=0.5", "rollout.temperature=0.6"])
    recomputed = policy_logprobs(cfg, str(tiny_model_dir), prompts, [o.token_ids for o in outs])
    sampler = np.concatenate([o.logprobs for o in outs])
    ours = np.concatenate(recomputed)
    assert (sampler >= ours - 1e-3).all()  # the nucleus' mass is < 1: renormalising raises every p
    assert (sampler - ours).mean() > 0.05
