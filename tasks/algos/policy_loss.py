"""The general token-level policy loss (rl_algorithms.md §0.1, §A.2, §B.2, §B.4, §B.5).

    l_t = - sg(w_t * M_t) * A_t * log pi(y_t)            policy gradient (value shown as -w M A)
          + c * Reg_t                                     k2: (log pi - log pi_old)^2 | forward-kl: -log pi
          + beta * KL_t                                   k1 | k2 | k3 of d = log pi - log pi_ref
          - h * H_t                                       entropy bonus
    loss = Agg(l, mask)                                   tasks/algos/losses.py::aggregate
    with a KL aggregation of its own (kl_agg, the SPO reference's seq-mean-token-sum):
    loss = Agg(l - beta KL, mask) + beta * Agg_kl(KL, mask)

M is the clip mask (clip_mode), w the per-token weight (weight); both are functions of the ratio
rho = pi / pi_old and are detached, so the gradient flows only through log pi (REC, Yao et al. 2025).
Both log-ratios (log pi - log pi_old for the
ratio, log pi - log pi_ref for KL) are clamped to +-log_ratio_clamp before exp(): 20 as verl, 10 as the SPO
reference (spo.md §3.1).
With clip_mode one-side and weight importance the gradient equals PPO-clip's (test_policy_loss.py).
Shapes: every tensor is [B, T]; `mask` is 1 on trained tokens (completion tokens, and with SPO's
probability mask only the low-probability ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.algos.losses import aggregate

CLIP_MODES = ("none", "one-side", "two-side", "dual-clip")
TOKEN_WEIGHTS = ("none", "importance", "truncated")
REGULARIZERS = ("none", "k2", "forward-kl")
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class LossSpec:
    clip_mode: str = "one-side"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: float = 3.0
    weight: str = "importance"
    truncate_max: float = 2.0
    regularizer: str = "none"
    regularizer_coef: float = 0.0
    kl_coef: float = 0.0  # KL in the loss; a KL in the reward is applied before the estimator instead
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    agg: str = "token-mean"
    kl_agg: str | None = None  # None: the KL term is aggregated with the rest (agg)
    log_ratio_clamp: float = 20.0
    kl_k3_max: float | None = 10.0  # k3 clamped to [-max, max]; None: only to k3 >= 0 (the SPO reference)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("clip_mode", self.clip_mode, CLIP_MODES),
            ("weight", self.weight, TOKEN_WEIGHTS),
            ("regularizer", self.regularizer, REGULARIZERS),
            ("kl_estimator", self.kl_estimator, KL_ESTIMATORS),
        ):
            if value not in allowed:
                raise ValueError(f"train.{name}={value!r} is not one of {', '.join(allowed)}")


def clip_masks(ratio: torch.Tensor, adv: torch.Tensor, spec: LossSpec) -> dict[str, torch.Tensor]:
    """keep: tokens whose gradient survives the clip; upper/lower/dual: why the others were cut."""
    hi, lo = ratio > 1.0 + spec.eps_high, ratio < 1.0 - spec.eps_low
    zeros = torch.zeros_like(ratio, dtype=torch.bool)
    if spec.clip_mode == "none":
        upper, lower, dual = zeros, zeros, zeros
    elif spec.clip_mode == "two-side":
        upper, lower, dual = hi, lo, zeros
    else:  # one-side and dual-clip: only the side the advantage pushes towards is clipped
        upper, lower = hi & (adv > 0), lo & (adv < 0)
        dual = (adv < 0) & (ratio > spec.dual_clip_c) if spec.clip_mode == "dual-clip" else zeros
    return {"keep": ~(upper | lower | dual), "upper": upper, "lower": lower, "dual": dual}


def token_weight(ratio: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    if spec.weight == "none":
        return torch.ones_like(ratio)
    if spec.weight == "importance":
        return ratio
    return torch.clamp(ratio, max=spec.truncate_max)


def kl_estimate(
    logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str, clamp: float = 20.0, k3_max: float | None = 10.0
) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate on sampled tokens, d = log pi - log pi_ref (Schulman's k1/k2/k3).

    d is clamped to +-clamp and k3 to [-k3_max, k3_max] (verl: 20 and 10), so one stale token cannot
    overflow exp(). k3_max None clamps k3 to >= 0 only, as the SPO reference (clamp(k3, 0, 1e9) with d in
    +-10: the upper bound never binds, k3 <= e^10 - 11).
    """
    d = torch.clamp(logp - ref_logp, -clamp, clamp)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        k3 = torch.exp(-d) - 1.0 + d
        return torch.clamp(k3, min=0.0) if k3_max is None else torch.clamp(k3, -k3_max, k3_max)
    raise ValueError(f"train.kl_estimator={estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    spec: LossSpec,
    *,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    num_seqs: int | None = None,
    num_tokens: float | None = None,
    norm_len: float | None = None,
    num_micro_batches: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss (global normalisers as in `aggregate`) and metric sums over masked tokens.

    `ref_logp` is needed when spec.kl_coef > 0, `entropy` (per-token, with grad) when spec.entropy_coef > 0.
    """
    ratio = torch.exp(torch.clamp(logp - old_logp, -spec.log_ratio_clamp, spec.log_ratio_clamp))
    clip = clip_masks(ratio.detach(), adv, spec)
    coef = (token_weight(ratio.detach(), spec) * clip["keep"]).detach()
    per_token = -coef * adv * torch.exp(logp - logp.detach())  # value -w M A, gradient -w M A grad log pi
    if spec.regularizer == "k2":
        per_token = per_token + spec.regularizer_coef * (logp - old_logp) ** 2
    elif spec.regularizer == "forward-kl":
        per_token = per_token - spec.regularizer_coef * logp
    kl = None
    separate_kl = spec.kl_agg is not None and spec.kl_agg != spec.agg
    if spec.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("train.kl_coef > 0 with kl_placement=loss needs reference log-probs")
        kl = kl_estimate(logp, ref_logp, spec.kl_estimator, spec.log_ratio_clamp, spec.kl_k3_max)
        if not separate_kl:
            per_token = per_token + spec.kl_coef * kl
    if spec.entropy_coef > 0:
        if entropy is None:
            raise ValueError("train.entropy_coef > 0 needs per-token entropies")
        per_token = per_token - spec.entropy_coef * entropy
    norms = dict(num_seqs=num_seqs, num_tokens=num_tokens, norm_len=norm_len, num_micro_batches=num_micro_batches)
    loss = aggregate(per_token, mask, spec.agg, **norms)
    if kl is not None and separate_kl:
        loss = loss + spec.kl_coef * aggregate(kl, mask, spec.kl_agg, **norms)
    m = mask.bool()
    stats = {
        "clip_upper": float((clip["upper"] & m).sum()),
        "clip_lower": float((clip["lower"] & m).sum()),
        "clip_dual": float((clip["dual"] & m).sum()),
        "ratio": float((ratio.detach() * m).sum()),
        "kl_old": float(((old_logp - logp.detach()) * m).sum()),
    }
    if kl is not None:
        stats["kl_ref"] = float((kl.detach() * m).sum())
    return loss, stats
