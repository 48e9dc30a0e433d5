"""The trainer's in-memory training sample: one row of the TRAIN_SAMPLES table (tasks/train_samples.py).

Stdlib only, so the trainer (tasks/trainer.py) and GPU checks import it without pyarrow or Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass

RESPONSE, CONTINUATION, EDGE = "response", "continuation", "edge"  # TRAIN_SAMPLES.source


@dataclass
class Sample:
    """One training sequence (a TRAIN_SAMPLES row without its origin columns)."""

    prompt_ids: list[int]  # the prefix: [P] token ids
    completion_ids: list[int]  # [T] tokens that carry gradient
    sampler_logprobs: list[float]  # [T] the sampler's log-probs (pi_old with tree.old_logprobs=generation)
    advantage: float  # broadcast over the T tokens when token_advantages is None
    ref_logprobs: list[float] | None = None  # [T] reference-policy log-probs, for a KL penalty in the loss
    token_advantages: list[float] | None = None  # [T] per-token advantages (SPO-chain segments)
    source: str = RESPONSE  # response | continuation | edge
