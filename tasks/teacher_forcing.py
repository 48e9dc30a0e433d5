"""Teacher-forced log-probs under a policy that is not being trained: the SPO stages (spo_values,
tree_rollouts) read p from it, reference_logprobs reads the reference model's, and train_policy's KL penalty for
SPO-tree edges reads the start policy's.
Shared by those stages, so none of them imports another stage's module."""

from __future__ import annotations

from collections.abc import Callable

from configs.schema import Config
from tasks.checkpoints import load_policy


def policy_logprobs(
    cfg: Config,
    path: str,
    prompts: list[list[int]],
    comps: list[list[int]],
    on_batch: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Per-token log-probs of each completion after its prompt under the checkpoint at `path`: a teacher-forced
    pass at the sampling temperature, without top-p (the distribution the SPO reference reads p from, spo.md §0).
    `on_batch(n)` is called after each micro-batch of n sequences (progress)."""
    from tasks.trainer import sequence_logprobs

    model, tok, device = load_policy(cfg, path)
    lps = sequence_logprobs(
        model,
        prompts,
        comps,
        pad_id=tok.pad_token_id,
        device=device,
        temperature=cfg.rollout.temperature,
        chunk=cfg.train.logprob_chunk,
        micro_batch=cfg.train.micro_batch_size,
        on_batch=on_batch,
    )
    del model
    return lps


def recomputes_top_p(cfg: Config) -> bool:
    """Whether SPO replaces the sampler's top-p-renormalised log-probs by policy_logprobs (spo.top_p_probs)."""
    return cfg.spo.top_p_probs == "recompute" and cfg.rollout.top_p < 1
