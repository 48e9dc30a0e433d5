"""Per-token log-probs without materialising the [tokens x vocab] log-softmax (rl_algorithms.md §E).

log p(y_t) = z_{t, y_t} - logsumexp_v z_{t, v}, with z = h W^T / temperature.
The logits of one chunk of positions exist at a time; under autograd each chunk is checkpointed,
so the backward pass recomputes its logits instead of keeping them.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = (h @ weight.T).float() / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


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


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk: int = 1024
) -> torch.Tensor:
    """hidden [N, H], weight [V, H] (the LM head), targets [N] -> log-probs [N] in float32."""
    out = []
    for s in range(0, hidden.shape[0], chunk):
        h, y = hidden[s : s + chunk], targets[s : s + chunk]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            out.append(checkpoint(_chunk_logprobs, h, weight, y, temperature, use_reentrant=False))
        else:
            out.append(_chunk_logprobs(h, weight, y, temperature))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def naive_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """Reference: full log-softmax then gather. For tests only."""
    logp = torch.log_softmax((hidden @ weight.T).float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
