"""Policy-gradient losses and loss aggregation (rl_algorithms.md §B.2, §B.3).

Shapes: every per-token tensor is [B, T] (right-padded); `mask` [B, T] is 1 on trained tokens.
The objective and the aggregation are separate arguments (house rule 4).
"""

from __future__ import annotations

import torch

AGGREGATIONS = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "micro-batch-token-mean",
)


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_seqs: int | None = None,
    num_tokens: float | None = None,
    norm_len: float | None = None,
    num_micro_batches: int | None = None,
) -> torch.Tensor:
    """Reduce per-token `loss` [B, T] to a scalar.

    For gradient accumulation pass the *global* normalisers (`num_tokens` = masked tokens in the
    whole mini-batch, `num_seqs` = sequences in it): micro-batch losses then sum to the full-batch loss.
      token-mean               sum(m l) / sum(m)
      seq-mean-token-mean      (1/N) sum_i sum_t(m l) / T_i
      seq-mean-token-sum       (1/N) sum_i sum_t(m l)
      seq-mean-token-sum-norm  sum(m l) / L            (Dr. GRPO; L = norm_len, default padded length)
      micro-batch-token-mean   sum(m l) / sum(m) / K   over this micro-batch's own tokens, K = num_micro_batches
                               in the mini-batch (default 1): the mean of the micro-batches' token-means, as the
                               SPO reference (spo.md §3.1: masked_mean per micro-batch, averaged over gradient
                               accumulation); tokens of a micro-batch with fewer trained tokens weigh more.
    """
    mask = mask.to(loss.dtype)
    n = float(num_seqs if num_seqs is not None else loss.shape[0])
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum().clamp(min=1.0)
        return (loss * mask).sum() / denom
    if mode == "seq-mean-token-mean":
        per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / n
    if mode == "seq-mean-token-sum":
        return (loss * mask).sum() / n
    if mode == "seq-mean-token-sum-norm":
        return (loss * mask).sum() / float(norm_len if norm_len is not None else loss.shape[-1])
    if mode == "micro-batch-token-mean":
        return (loss * mask).sum() / mask.sum().clamp(min=1.0) / float(num_micro_batches or 1)
    raise ValueError(f"loss aggregation {mode!r} is not one of {', '.join(AGGREGATIONS)}")


def ppo_clip_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_eps: float, clip_eps_high: float | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO-clip loss max(-r A, -clip(r, 1-eps_low, 1+eps_high) A), r = exp(logp - old_logp).

    Returns (loss [B, T], stats) where stats holds per-token ratio and clipped indicator for metrics.
    The log-ratio is clamped to +-20 (as verl) so a stale token cannot overflow exp().
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    loss = torch.maximum(unclipped, clipped)
    return loss, {"ratio": ratio.detach(), "clipped": (clipped > unclipped).detach()}
