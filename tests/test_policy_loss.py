"""Golden values and gradient identities of the general policy loss (tasks/algos/policy_loss.py)."""

import math

import pytest
import torch

from tasks.algos.logprobs import token_logprobs_entropy
from tasks.algos.losses import AGGREGATIONS, aggregate, ppo_clip_loss
from tasks.algos.policy_loss import LossSpec, kl_estimate, policy_loss

# One sequence of four tokens with ratios 1, 1.5, 0.5, 4 and advantages +1, +1, -1, -1.
RATIO = torch.tensor([[1.0, 1.5, 0.5, 4.0]])
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
OLD = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
MASK = torch.ones(1, 4)


def _run(spec: LossSpec, **kw):
    logp = (OLD + RATIO.log()).clone().requires_grad_(True)
    loss, stats = policy_loss(logp, OLD, ADV, MASK, spec, **kw)
    loss.backward()
    return loss.item(), logp.grad[0].tolist(), stats


# value = token-mean of -w M A; gradient wrt log pi = -w M A / 4
@pytest.mark.parametrize(
    "spec, value, grad",
    [
        # one-side: token 1 (A>0, r>1.2) and token 2 (A<0, r<0.8) are cut; token 3 (A<0, r=4) is kept
        (LossSpec(clip_mode="one-side"), 0.75, [-0.25, 0.0, 0.0, 1.0]),
        # dual-clip additionally cuts token 3 (A<0, r > c = 3)
        (LossSpec(clip_mode="dual-clip"), -0.25, [-0.25, 0.0, 0.0, 0.0]),
        # two-side cuts every r outside [0.8, 1.2] whatever the sign of A
        (LossSpec(clip_mode="two-side"), -0.25, [-0.25, 0.0, 0.0, 0.0]),
        # no clip, importance weight: -r A = [-1, -1.5, .5, 4]
        (LossSpec(clip_mode="none"), 0.5, [-0.25, -0.375, 0.125, 1.0]),
        # NoIS: w = 1
        (LossSpec(clip_mode="one-side", weight="none"), 0.0, [-0.25, 0.0, 0.0, 0.25]),
        # truncated ratio min(r, 2)
        (LossSpec(clip_mode="one-side", weight="truncated", truncate_max=2.0), 0.25, [-0.25, 0.0, 0.0, 0.5]),
        # asymmetric clip: eps_high = 0.6 keeps token 1 (r = 1.5 <= 1.6)
        (LossSpec(clip_mode="one-side", eps_high=0.6), 0.375, [-0.25, -0.375, 0.0, 1.0]),
    ],
)
def test_clip_modes_and_weights_golden(spec, value, grad):
    v, g, _ = _run(spec)
    assert v == pytest.approx(value)
    assert g == pytest.approx(grad)


def test_clip_fractions_golden():
    _, _, st = _run(LossSpec(clip_mode="dual-clip"))
    assert (st["clip_upper"], st["clip_lower"], st["clip_dual"]) == (1.0, 1.0, 1.0)
    assert st["ratio"] == pytest.approx(7.0)  # summed over the masked tokens


def test_regularizers_golden():
    d = RATIO.log()[0]
    # OPMD's k2: + c (log pi - log pi_old)^2, gradient 2 c d / 4 on every token
    v, g, _ = _run(LossSpec(clip_mode="none", weight="none", regularizer="k2", regularizer_coef=0.1))
    base = [-1.0, -1.0, 1.0, 1.0]  # -A
    assert v == pytest.approx((sum(base) + 0.1 * float((d**2).sum())) / 4)
    assert g == pytest.approx([(b + 0.2 * float(x)) / 4 for b, x in zip(base, d)])
    # AsymRE's forward-KL: - c log pi, gradient -c / 4
    v, g, _ = _run(LossSpec(clip_mode="none", weight="none", regularizer="forward-kl", regularizer_coef=0.1))
    logp = OLD[0] + d
    assert v == pytest.approx((sum(base) - 0.1 * float(logp.sum())) / 4)
    assert g == pytest.approx([(b - 0.1) / 4 for b in base])


def test_kl_estimators_golden():
    logp, ref = torch.tensor([0.0, math.log(2), -math.log(2)]), torch.zeros(3)
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.0, math.log(2), -math.log(2)])
    assert kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.0, math.log(2) ** 2 / 2, math.log(2) ** 2 / 2])
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx([0.0, math.log(2) - 0.5, 1 - math.log(2)])
    # far-off tokens stay finite
    assert torch.isfinite(kl_estimate(torch.tensor([-500.0]), torch.zeros(1), "k3")).all()


def test_kl_in_loss_and_entropy_bonus():
    ref = OLD.clone()  # d = log r
    spec = LossSpec(clip_mode="none", weight="none", kl_coef=0.5, kl_estimator="k2")
    v, g, st = _run(spec, ref_logp=ref)
    d = RATIO.log()[0]
    assert v == pytest.approx((0.0 + 0.5 * float((0.5 * d**2).sum())) / 4)
    assert g == pytest.approx([(-a + 0.5 * float(x)) / 4 for a, x in zip(ADV[0].tolist(), d)])
    assert st["kl_ref"] == pytest.approx(float((0.5 * d**2).sum()))
    with pytest.raises(ValueError, match="reference log-probs"):
        _run(spec)
    ent = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    v, _, _ = _run(LossSpec(clip_mode="none", weight="none", entropy_coef=0.1), entropy=ent)
    assert v == pytest.approx(-0.1 * 10 / 4)


def test_bad_spec_names_the_key():
    with pytest.raises(ValueError, match="train.clip_mode='ring'"):
        LossSpec(clip_mode="ring")


def _random(seed, b=3, t=7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) * 3
    logp = old + (torch.rand(b, t, generator=g) - 0.5)  # ratios in [0.6, 1.65]
    adv = torch.randn(b, 1, generator=g).expand(b, t).clone()
    mask = torch.rand(b, t, generator=g) > 0.2
    return logp, old, adv, mask


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_one_side_importance_gradient_equals_ppo_clip(seed, agg):
    logp, old, adv, mask = _random(seed)
    a = logp.clone().requires_grad_(True)
    loss, _ = policy_loss(a, old, adv, mask, LossSpec(clip_mode="one-side", weight="importance", agg=agg))
    loss.backward()
    b = logp.clone().requires_grad_(True)
    ppo, _ = ppo_clip_loss(b, old, adv, 0.2)
    aggregate(ppo, mask, agg).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_dual_clip_gradient_equals_its_formula(seed):
    logp, old, adv, mask = _random(seed)
    logp = logp + torch.where(adv < 0, 1.2, 0.0)  # push some negative-advantage ratios past c = 3
    a = logp.clone().requires_grad_(True)
    policy_loss(a, old, adv, mask, LossSpec(clip_mode="dual-clip", dual_clip_c=3.0))[0].backward()
    b = logp.clone().requires_grad_(True)
    ppo, _ = ppo_clip_loss(b, old, adv, 0.2)
    ratio = torch.exp(b - old)
    dual = torch.where(adv < 0, torch.minimum(ppo, -3.0 * adv), ppo)
    aggregate(dual, mask, "token-mean").backward()
    assert (mask & (adv < 0) & (ratio.detach() > 3)).any()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


# micro-batch-token-mean depends on the partition by definition (tests/test_paper_mode.py checks it).
@pytest.mark.parametrize("agg", [a for a in AGGREGATIONS if a != "micro-batch-token-mean"])
def test_micro_batches_sum_to_the_full_batch_loss_and_gradient(agg):
    logp, old, adv, mask = _random(7, b=6, t=5)
    ref, ent = old - 0.3, torch.rand(6, 5)
    spec = LossSpec(clip_mode="dual-clip", regularizer="k2", kl_coef=0.2, entropy_coef=0.01, agg=agg)
    full = logp.clone().requires_grad_(True)
    loss_full, _ = policy_loss(
        full, old, adv, mask, spec, ref_logp=ref, entropy=ent, num_seqs=6, num_tokens=float(mask.sum()), norm_len=5
    )
    loss_full.backward()
    part = logp.clone().requires_grad_(True)
    total = 0.0
    for s in (slice(0, 2), slice(2, 6)):
        loss, _ = policy_loss(
            part[s],
            old[s],
            adv[s],
            mask[s],
            spec,
            ref_logp=ref[s],
            entropy=ent[s],
            num_seqs=6,
            num_tokens=float(mask.sum()),
            norm_len=5,
        )
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(loss_full.item(), rel=1e-6)
    torch.testing.assert_close(part.grad, full.grad)


def test_chunked_entropy_matches_naive():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(50, 16, generator=g), torch.randn(40, 16, generator=g)
    y = torch.randint(0, 40, (50,), generator=g)
    lp, ent = token_logprobs_entropy(h, w, y, temperature=0.7, chunk=8)
    logp = torch.log_softmax(h @ w.T / 0.7, dim=-1)
    torch.testing.assert_close(lp, logp.gather(-1, y[:, None])[:, 0])
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1))
