"""Per-token log-probs without materialising the [tokens x vocab] log-softmax (rl_algorithms.md §E).

log p(y_t) = z_{t, y_t} - logsumexp_v z_{t, v}, with z = h W^T / temperature.
The logits of one chunk of positions exist at a time: `token_logprobs` is an autograd function whose
backward recomputes each chunk's logits and accumulates the LM-head gradient in place (one buffer);
`token_logprobs_entropy` (needed only for an entropy bonus) checkpoints each chunk instead.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs_entropy(h, weight, targets, temperature):
    logits = (h @ weight.T).float() / temperature
    lse = torch.logsumexp(logits, dim=-1)
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # H = lse - sum_v p_v z_v
    return lp, entropy


def token_logprobs_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """As token_logprobs, plus the per-position entropy of the full distribution ([N] each, float32)."""
    lps, ents = [], []
    for s in range(0, hidden.shape[0], chunk):
        h, y = hidden[s : s + chunk], targets[s : s + chunk]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            lp, ent = checkpoint(_chunk_logprobs_entropy, h, weight, y, temperature, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs_entropy(h, weight, y, temperature)
        lps.append(lp)
        ents.append(ent)
    if not lps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(lps), torch.cat(ents)


def _scaled_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = (h @ weight.T).float()  # a no-op cast in fp32; bf16 logits are upcast once
    return logits.div_(temperature)


class _ChunkedLogprobs(torch.autograd.Function):
    """log p(y) = z_y - logsumexp(z), z = h W^T / T, a chunk of positions at a time in both passes.

    The backward pass recomputes each chunk's logits and adds its weight gradient in place into one
    buffer, so besides the gradients themselves only one chunk's [chunk x vocab] block is alive:
      d logp / dz = onehot(y) - softmax(z);  dL/dh = g W / T;  dL/dW += g^T h / T,  g = dL/dlogp * d logp/dz
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            logits = _scaled_logits(hidden[s : s + chunk], weight, temperature)
            y = targets[s : s + chunk]
            out[s : s + chunk] = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, y, go = hidden[s : s + ctx.chunk], targets[s : s + ctx.chunk], grad_out[s : s + ctx.chunk].float()
            g = _scaled_logits(h, weight, ctx.temperature)
            g.sub_(torch.logsumexp(g, dim=-1, keepdim=True)).exp_()  # softmax, in place: one [chunk x vocab] block
            g.mul_(-go.unsqueeze(-1))
            g[torch.arange(len(y), device=g.device), y] += go
            g = g.div_(ctx.temperature).to(weight.dtype)
            if want_h:
                grad_h[s : s + ctx.chunk] = g @ weight
            if want_w:
                grad_w.addmm_(g.T, h)
        return grad_h, grad_w, None, None, None


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk: int = 1024
) -> torch.Tensor:
    """hidden [N, H], weight [V, H] (the LM head), targets [N] -> log-probs [N] in float32."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    return _ChunkedLogprobs.apply(hidden, weight, targets, float(temperature), int(chunk))


def naive_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """Reference: full log-softmax then gather. For tests only."""
    logp = torch.log_softmax((hidden @ weight.T).float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
