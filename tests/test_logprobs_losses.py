import pytest
import torch

from tasks.algos.logprobs import naive_token_logprobs, token_logprobs
from tasks.algos.losses import aggregate, ppo_clip_loss


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_chunked_logprobs_equal_naive_values_and_grads(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    w = torch.randn(300, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 300, (50,), generator=g)
    a = token_logprobs(h, w, y, temperature, chunk)
    b = naive_token_logprobs(h, w, y, temperature)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ga = torch.autograd.grad(a.sum(), (h, w))
    gb = torch.autograd.grad(b.sum(), (h, w))
    for x, z in zip(ga, gb):
        torch.testing.assert_close(x, z, rtol=1e-4, atol=1e-5)


def test_logprobs_are_log_probabilities():
    h, w = torch.randn(5, 4), torch.randn(10, 4)
    total = sum(token_logprobs(h, w, torch.full((5,), v), 1.0).exp() for v in range(10))
    torch.testing.assert_close(total, torch.ones(5))


def test_ppo_clip_golden():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, st = ppo_clip_loss(logp, old, adv, 0.2)
    # r=1.5, A>0: clipped to 1.2 -> max(-1.5, -1.2) = -1.2 ; r=.5, A>0: max(-.5, -.8) = -.5 ;
    # r=1.1, A<0: max(1.1, 1.1) = 1.1
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, 1.1]]))
    assert st["clipped"].tolist() == [[True, False, False]]


def test_ppo_clip_gradient_zero_where_clipped():
    logp = torch.log(torch.tensor([1.5, 0.5])).requires_grad_()
    loss, _ = ppo_clip_loss(logp, torch.zeros(2), torch.tensor([1.0, -1.0]), 0.2)
    (g,) = torch.autograd.grad(loss.sum(), logp)
    assert g.tolist() == [0.0, 0.0]  # both outside the trust region in the direction of improvement


L = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
M = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),
        ("seq-mean-token-mean", (2.0 + 4.0) / 2),
        ("seq-mean-token-sum", (6.0 + 4.0) / 2),
        ("seq-mean-token-sum-norm", (6.0 + 4.0) / 4),
    ],
)
def test_aggregation_golden(mode, expected):
    assert aggregate(L, M, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_microbatches_with_global_normalisers_sum_to_full_batch(mode):
    g = torch.Generator().manual_seed(1)
    loss = torch.rand(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    full = aggregate(loss, mask, mode, norm_len=5)
    kw = dict(num_seqs=6, num_tokens=float(mask.sum()), norm_len=5)
    parts = sum(aggregate(loss[i : i + 2], mask[i : i + 2], mode, **kw) for i in range(0, 6, 2))
    torch.testing.assert_close(parts, full)


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(L, M, "sum")
