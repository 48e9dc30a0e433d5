"""The supervised warm start: token-mean NLL on the completion tokens of (prompt ids, completion ids) pairs.

It packs sequences and computes completion log-probs with the RL trainer's code (tasks/trainer.py: explicit
position ids, chunked LM head), so the warm start and the RL update score the same positions the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from tasks.trainer import completion_logprobs, pack


def warm_start_lr_factor(step: int, steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the warm start's lr at `step` (0-based) of `steps`: linear warmup over 20 steps, then a
    linear fall towards 0 at `steps`, floored at `min_lr_ratio` (1 = constant after warmup)."""
    return min(1.0, (step + 1) / 20) * max(min_lr_ratio, 1 - step / max(1, steps))


def sft(
    model,
    examples: Sequence[tuple[list[int], list[int]]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pad_id: int,
    device: torch.device,
    min_lr_ratio: float,
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """Supervised warm start: token-mean NLL on completion tokens only, AdamW, lr schedule
    `warm_start_lr_factor`. Returns the last-50-step mean loss."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warm_start_lr_factor(s, steps, min_lr_ratio))
    model.train()
    recent: list[float] = []
    for step in range(steps):
        chosen = rng.sample(range(len(examples)), min(batch_size, len(examples)))
        batch = pack([examples[i][0] for i in chosen], [examples[i][1] for i in chosen], pad_id, device)
        lp = completion_logprobs(model, batch, 1.0, 4096)
        loss = -(lp * batch.comp_mask).sum() / batch.comp_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-50:]
        if on_step:
            on_step(step, loss.item())
    model.eval()
    return sum(recent) / max(1, len(recent))
