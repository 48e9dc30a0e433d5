"""torch + transformers training: batching, completion log-probs and the RL update (the SFT warm start: tasks/sft.py).

Sequences are right-padded `prompt + completion` token ids (the ids vLLM sampled, EOS included, so
the stop action is trained). Position ids are given explicitly so padding can never shift them.
Only positions that predict a completion token go through the LM head, chunked (tasks/algos/logprobs).

Mixed precision: the trained parameters are float32 master weights (MASTER_DTYPE) with float32 AdamW
state; with a bf16 model dtype the forward passes run under torch.autocast in bf16 (`mixed_precision`),
as verl's FSDP mixed precision and TRL's `bf16=True` do. AdamW updating bf16 weights in place rounds
away every step smaller than half a bf16 ulp (~0.4% of the weight): at lr 1e-6 it changes ~1% of the
entries per iteration and trains almost nothing.

Imports torch and tasks/algos only (configs.schema for type hints): bench/gpu_check.py runs this on a
machine with torch and transformers but no pydantic, Prefect, DuckDB or vLLM.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tasks.algos.logprobs import token_logprobs, token_logprobs_entropy
from tasks.algos.policy_loss import LossSpec, policy_loss
from tasks.algos.prob_mask import trained_count, trains
from tasks.sample import Sample

if TYPE_CHECKING:
    from configs.schema import TrainSection

MASTER_DTYPE = torch.float32  # the trained weights and AdamW's moments, whatever the model dtype


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device='cuda' but torch sees no CUDA device (install the GPU build, see README)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def mixed_precision(device: torch.device, dtype: torch.dtype | None):
    """The context forward passes of the float32 master run in: autocast to `dtype` (the model dtype) on
    `device`'s type, or nothing at all when it is float32 (or None), so a float32 run is unchanged."""
    if dtype is None or dtype == MASTER_DTYPE:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    comp_ids: torch.Tensor  # [B, Tc] completion token ids, right-padded
    comp_mask: torch.Tensor  # [B, Tc] bool, True on real completion tokens
    pred_rows: torch.Tensor  # [N] row of the position predicting each completion token
    pred_cols: torch.Tensor  # [N] its column (prompt_len - 1 + j)


def pack(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> Batch:
    b = len(prompts)
    lens = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width, tc = max(lens), max(1, max(len(c) for c in completions))
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    att = torch.zeros((b, width), dtype=torch.long)
    comp = torch.full((b, tc), pad_id, dtype=torch.long)
    cmask = torch.zeros((b, tc), dtype=torch.bool)
    rows, cols = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seq = list(p) + list(c)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        att[i, : len(seq)] = 1
        comp[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        cmask[i, : len(c)] = True
        rows += [i] * len(c)
        cols += range(len(p) - 1, len(p) - 1 + len(c))
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    to = lambda t: t.to(device)  # noqa: E731
    return Batch(
        to(ids),
        to(att),
        to(pos),
        to(comp),
        to(cmask),
        to(torch.tensor(rows, dtype=torch.long)),
        to(torch.tensor(cols, dtype=torch.long)),
    )


def completion_logprobs(model, batch: Batch, temperature: float, chunk: int, with_entropy: bool = False):
    """log pi(completion token | prefix) at `temperature`, [B, Tc] float32, 0 where comp_mask is False.

    With `with_entropy`, also the entropy of each of those positions' distributions, [B, Tc].
    """
    hidden = model.model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).last_hidden_state
    h = hidden[batch.pred_rows, batch.pred_cols]
    weight = model.lm_head.weight
    if torch.is_autocast_enabled(h.device.type):
        # The chunked LM head is an autograd.Function whose backward runs outside autocast: cast its
        # inputs here, as autocast casts a Linear's, so both passes multiply in the compute dtype.
        dt = torch.get_autocast_dtype(h.device.type)
        h, weight = h.to(dt), weight.to(dt)
    targets = batch.comp_ids[batch.comp_mask]

    def scatter(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(batch.comp_mask.shape, dtype=torch.float32, device=values.device)
        return out.masked_scatter(batch.comp_mask, values)

    if with_entropy:
        lp, ent = token_logprobs_entropy(h, weight, targets, temperature, chunk)
        return scatter(lp), scatter(ent)
    return scatter(token_logprobs(h, weight, targets, temperature, chunk))


def sequence_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device,
    temperature: float,
    chunk: int,
    micro_batch: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Per-token completion log-probs of every sequence, `micro_batch` sequences per forward pass, no grad."""
    out: list[list[float]] = []
    with torch.no_grad():
        for s in range(0, len(completions), micro_batch):
            part = completions[s : s + micro_batch]
            batch = pack(prompts[s : s + micro_batch], part, pad_id, device)
            lp = completion_logprobs(model, batch, temperature, chunk).cpu()
            out += [lp[i, : len(c)].tolist() for i, c in enumerate(part)]
            if on_batch:
                on_batch(len(part))
    return out


def make_scheduler(optimizer, cfg: TrainSection, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "linear":
            rest = max(1, total_steps - cfg.warmup_steps)
            return max(0.0, 1.0 - (step - cfg.warmup_steps) / rest)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def loss_spec(cfg: TrainSection) -> LossSpec:
    """The policy loss the config describes. A KL penalty placed in the reward is not part of the loss."""
    return LossSpec(
        clip_mode=cfg.clip_mode,
        eps_low=cfg.clip_eps,
        eps_high=cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high,
        dual_clip_c=cfg.dual_clip_c,
        weight=cfg.weight,
        truncate_max=cfg.truncate_max,
        regularizer=cfg.regularizer,
        regularizer_coef=cfg.regularizer_coef,
        kl_coef=cfg.kl_coef if cfg.kl_placement == "loss" else 0.0,
        kl_estimator=cfg.kl_estimator,
        entropy_coef=cfg.entropy_coef,
        agg=cfg.loss_agg,
        kl_agg=None if cfg.kl_agg == "loss_agg" else cfg.kl_agg,
        log_ratio_clamp=cfg.log_ratio_clamp,
        kl_k3_max=cfg.kl_k3_max,
    )


def _rows(values: Sequence[Sequence[float]], shape: torch.Size, device: torch.device) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float32)
    for r, v in enumerate(values):
        out[r, : len(v)] = torch.as_tensor(v, dtype=torch.float32)
    return out.to(device)


def _advantages(part: Sequence[Sample], shape: torch.Size, device: torch.device) -> torch.Tensor:
    if all(x.token_advantages is None for x in part):
        return torch.tensor([x.advantage for x in part], dtype=torch.float32, device=device)[:, None].expand(shape)
    return _rows(
        [x.token_advantages if x.token_advantages is not None else [x.advantage] * len(x.completion_ids) for x in part],
        shape,
        device,
    )


def whiten_masked(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(A - mean) / sqrt(var + eps) over masked entries (unbiased var); unmasked entries unchanged."""
    m = mask.bool()
    n = int(m.sum())
    if n < 2:
        return adv
    vals = adv[m]
    out = adv.clone()
    out[m] = (vals - vals.mean()) / torch.sqrt(vals.var(unbiased=True) + eps)
    return out


def trained_advantages(
    adv: torch.Tensor, old_lp: torch.Tensor, comp_mask: torch.Tensor, rho: float | None, whiten: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, mask) one micro-batch trains with, all [B, T].

    mask: the completion tokens, with SPO's probability mask (spec §3.2, tasks/algos/prob_mask.trains) only
    those the pre-update policy gave p_old = exp(old_lp) < rho. With `whiten`, the advantages are whitened
    over the mask's tokens of this micro-batch (spo.md §3.3, `whiten_masked`), for every estimator
    (train.whiten_advantages).
    """
    mask = comp_mask & trains(old_lp.exp(), rho)
    return (whiten_masked(adv, mask) if whiten else adv), mask


def ratio_skipped(ratio_sum: float, mask: torch.Tensor, limit: float | None) -> bool:
    """The SPO reference's guard (spo.md §3.1): a micro-batch whose mean ratio pi/pi_old over its trained
    tokens exceeds `limit` contributes no loss (loss * 0). None: never."""
    return limit is not None and ratio_sum / max(1, int(mask.sum())) > limit


class MasterSnapshot:
    """A copy of the trained (master) parameters, on the CPU, to count the entries an iteration changed.

    The count is exact (bitwise inequality, so a NaN counts as changed) and costs one float32 copy of the
    trained parameters in host memory (2 GiB at 0.5B parameters) and two device-to-host transfers.
    """

    def __init__(self, params: Sequence[torch.Tensor]):
        self.before = [p.detach().to("cpu", copy=True) for p in params]

    def changed(self, params: Sequence[torch.Tensor]) -> tuple[int, int]:
        """(entries that differ from the snapshot, entries in all), params in the snapshot's order."""
        changed = total = 0
        for p, b in zip(params, self.before, strict=True):
            changed += int((p.detach().cpu() != b).sum())
            total += b.numel()
        return changed, total


class NonFiniteTraining(RuntimeError):
    """Too many optimiser steps in a row had a NaN/inf loss or gradient."""


class Collective:
    """How rl_update shares work between data-parallel processes; this default is one process.

    tasks/distributed.py::TorchCollective implements it over torch.distributed. Rank r runs micro-batches
    r, r+W, ... (`shard`); `sum_` adds a tensor over ranks in place; `sum_grads` adds .grad of `params`
    and the step's metric sums over ranks. Every rank then clips and steps on the same gradient.
    """

    rank, world = 0, 1

    def shard(self, items: list) -> list:
        return items[self.rank :: self.world]

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def sum_grads(self, params: list[torch.Tensor], sums: list[float]) -> list[float]:
        return sums


@dataclass
class OldPolicy:
    """pi_old of an iteration's samples, from one no-grad pass before any update."""

    logprobs: list[torch.Tensor]  # per sample: [completion tokens] (the sampler's with old_from_sampler)
    entropy_sum: float  # the recomputed policy's entropy, summed over every completion token
    gap_sum: float  # |recomputed - sampler| log-prob, summed over tokens whose sample carries sampler log-probs
    gap_max: float
    gap_tokens: int


def old_policy(
    model,
    samples: Sequence[Sample],
    micro: int,
    *,
    temperature: float,
    chunk: int,
    pad_id: int,
    device: torch.device,
    old_from_sampler: bool,
    collective: Collective,
) -> OldPolicy:
    """Recompute every sample's completion log-probs (and entropy) under `model`, micro-batch by micro-batch.

    Each rank computes its share of the micro-batches into one flat per-token buffer (zeros elsewhere),
    summed over ranks, so every rank ends with the same pi_old. The gap to the sampler's log-probs is kept
    as a metric: ~0 means sampler and trainer agree on the same weights.
    """
    model.eval()
    offsets = [0]
    for x in samples:
        offsets.append(offsets[-1] + len(x.completion_ids))
    starts = list(range(0, len(samples), micro))
    lp_flat = torch.zeros(offsets[-1], dtype=torch.float32, device=device)
    ent_parts = torch.zeros(len(starts), dtype=torch.float64, device=device)  # per micro-batch, summed in order
    with torch.no_grad():
        for j in collective.shard(list(range(len(starts)))):
            part = samples[starts[j] : starts[j] + micro]
            batch = pack([x.prompt_ids for x in part], [x.completion_ids for x in part], pad_id, device)
            lp, ent = completion_logprobs(model, batch, temperature, chunk, with_entropy=True)
            ent_parts[j] = float((ent * batch.comp_mask).sum())
            for i, x in enumerate(part):
                lp_flat[offsets[starts[j] + i] : offsets[starts[j] + i + 1]] = lp[i, : len(x.completion_ids)]
    lp_flat = collective.sum_(lp_flat).cpu()
    ent_sum = 0.0
    for v in collective.sum_(ent_parts).tolist():
        ent_sum += v
    old: list[torch.Tensor] = []
    gap_sum, gap_max, n_tok = 0.0, 0.0, 0
    for k, x in enumerate(samples):
        row = lp_flat[offsets[k] : offsets[k + 1]]
        sampler = torch.tensor(x.sampler_logprobs, dtype=torch.float32) if x.sampler_logprobs else None
        if old_from_sampler and sampler is None:
            raise ValueError("old_from_sampler=True but a sample carries no sampler log-probs")
        old.append(sampler if old_from_sampler else row)
        if sampler is not None:
            d = (row - sampler).abs()
            gap_sum, gap_max, n_tok = gap_sum + d.sum().item(), max(gap_max, d.max().item()), n_tok + d.numel()
    return OldPolicy(old, ent_sum, gap_sum, gap_max, n_tok)


def _accumulate_gradients(
    model,
    samples: Sequence[Sample],
    idx: list[int],
    old: list[torch.Tensor],
    spec: LossSpec,
    cfg: TrainSection,
    *,
    temperature: float,
    pad_id: int,
    device: torch.device,
    num_tokens: float,
    norm_len: float | None,
    whiten_micro_batch: bool,
    collective: Collective,
    compute_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Backward the loss of mini-batch `idx` (this rank's micro-batches of it) into the parameters' .grad.

    The loss is normalised by the whole mini-batch (`num_tokens` trained tokens, len(idx) sequences), so
    the accumulated gradient equals the full mini-batch's. Returns this rank's loss and metric sums.
    The forward pass runs under `mixed_precision(device, compute_dtype)`; the float32 loss and the
    backward pass outside it (autocast's rule), so the gradients reach the float32 master as float32.
    """
    micro, rho = cfg.micro_batch_size, cfg.prob_mask_rho
    step = dict.fromkeys(
        ("loss", "clip_upper", "clip_lower", "clip_dual", "ratio", "kl_old", "kl_ref", "skipped_micro_batches"), 0.0
    )
    num_micro = math.ceil(len(idx) / micro)
    for s in collective.shard(list(range(0, len(idx), micro))):
        part = [samples[i] for i in idx[s : s + micro]]
        batch = pack([x.prompt_ids for x in part], [x.completion_ids for x in part], pad_id, device)
        with mixed_precision(device, compute_dtype):
            out = completion_logprobs(model, batch, temperature, cfg.logprob_chunk, with_entropy=spec.entropy_coef > 0)
        lp, ent = out if spec.entropy_coef > 0 else (out, None)
        old_lp = _rows([old[i] for i in idx[s : s + micro]], lp.shape, device)
        adv = _advantages(part, lp.shape, device)
        ref = _rows([x.ref_logprobs for x in part], lp.shape, device) if spec.kl_coef > 0 else None
        adv, mask = trained_advantages(adv, old_lp, batch.comp_mask, rho, whiten_micro_batch)
        loss, st = policy_loss(
            lp,
            old_lp,
            adv,
            mask,
            spec,
            ref_logp=ref,
            entropy=ent,
            num_seqs=len(idx),
            num_tokens=num_tokens,
            norm_len=norm_len,
            num_micro_batches=num_micro,
        )
        if ratio_skipped(st["ratio"], mask, cfg.skip_ratio_above):
            loss = loss * 0.0  # still backward: every rank must reach the gradient sum with its .grad set
            step["skipped_micro_batches"] += 1
        loss.backward()
        step["loss"] += loss.item()
        for k, v in st.items():
            step[k] += v
    return step


def rl_update(
    model,
    optimizer,
    scheduler,
    samples: Sequence[Sample],
    cfg: TrainSection,
    *,
    temperature: float,
    pad_id: int,
    device: torch.device,
    seed: int,
    norm_len: float | None = None,
    whiten_micro_batch: bool = False,
    old_from_sampler: bool = False,
    consecutive_skips: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
    log: Callable[[str], None] = print,
    collective: Collective | None = None,
    compute_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One iteration of policy updates on `samples` with the loss `loss_spec(cfg)` describes.

    `whiten_micro_batch` (SPO's spo.normalize=micro_batch) or cfg.whiten_advantages=micro_batch (any
    estimator) whitens the advantages over the trained tokens of each micro-batch, as the SPO reference
    does for every run (spo.md §3.3: unbiased variance, eps 1e-8).

    pi_old is recomputed by the trainer before any update; the gap to the sampler's log-probs is
    reported (`logprob_gap_*`): ~0 means sampler and trainer agree on the same weights. With
    `old_from_sampler`, pi_old is the sampler's log-probs instead (SPO-tree's replayed edges were sampled
    by older policies; their ratio must correct for that), and the gap measures their staleness.
    Metric sums are over trained tokens and divided by their count (per optimiser step, then averaged).

    A step whose loss or gradient norm is NaN/inf (a NaN reward or advantage, an overflow) is skipped:
    gradients are dropped, neither the optimiser nor the schedule moves, and `log` says why. After
    `cfg.max_consecutive_skips` skipped steps in a row (counting `consecutive_skips` carried in from the
    previous iteration) it raises NonFiniteTraining, so a diverged run stops instead of writing checkpoints.
    Returns the metrics plus `skipped_steps` and `consecutive_skips` (to carry into the next iteration).

    With a `collective` of W processes (tasks/distributed.py) every rank passes the same samples and seed
    and runs 1/W of the micro-batches of each pass; gradients and metric sums are added over ranks.

    `model`'s trained parameters are the master weights (float32 from tasks/checkpoints.py); with a
    `compute_dtype` other than float32 the pi_old pass and every forward pass run under autocast to it.
    `frac_master_changed` (rank 0 only) is the share of trained-parameter entries whose value this call
    changed, the health check stale_update's metric: an update lost to rounding shows there first.
    """
    coll = collective or Collective()
    if coll.rank != 0:
        log = lambda _msg: None  # noqa: E731
    spec = loss_spec(cfg)
    whiten_micro_batch = whiten_micro_batch or cfg.whiten_advantages == "micro_batch"
    with mixed_precision(device, compute_dtype):
        pi_old = old_policy(
            model,
            samples,
            cfg.micro_batch_size,
            temperature=temperature,
            chunk=cfg.logprob_chunk,
            pad_id=pad_id,
            device=device,
            old_from_sampler=old_from_sampler,
            collective=coll,
        )
    old = pi_old.logprobs
    if spec.kl_coef > 0 and any(x.ref_logprobs is None for x in samples):
        raise ValueError("train.kl_coef > 0 (kl_placement=loss) but the samples carry no reference log-probs")

    # Tokens that carry gradient: every completion token, or with SPO's probability mask (spec §3.2)
    # only those the pre-update policy gave p < rho. Counted up front for the global normaliser.
    trained = [trained_count(o.exp(), cfg.prob_mask_rho) for o in old]

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = MasterSnapshot(params) if coll.rank == 0 else None  # every rank holds the same weights
    rng = random.Random(seed)
    order = list(range(len(samples)))
    totals = UpdateTotals()
    guard = NonFiniteGuard(cfg.max_consecutive_skips, consecutive_skips, log)
    steps_per_epoch = math.ceil(len(samples) / cfg.mini_batch_size)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        rng.shuffle(order)
        for m in range(steps_per_epoch):
            idx = order[m * cfg.mini_batch_size : (m + 1) * cfg.mini_batch_size]
            num_tokens = float(sum(trained[i] for i in idx)) or 1.0
            optimizer.zero_grad(set_to_none=True)
            step = _accumulate_gradients(
                model,
                samples,
                idx,
                old,
                spec,
                cfg,
                temperature=temperature,
                pad_id=pad_id,
                device=device,
                num_tokens=num_tokens,
                norm_len=norm_len,
                whiten_micro_batch=whiten_micro_batch,
                collective=coll,
                compute_dtype=compute_dtype,
            )
            if coll.world > 1:  # the whole mini-batch's gradient and metric sums, on every rank
                step = dict(zip(step, coll.sum_grads(params, list(step.values()))))
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if not guard.finite(step["loss"], float(grad_norm), epoch * steps_per_epoch + m + 1):
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            scheduler.step()
            totals.add(step, num_tokens, float(grad_norm))
            if on_step:
                on_step(totals.updates, cfg.epochs * steps_per_epoch, step["loss"])  # (done, total, this step's loss)
    model.eval()
    out = totals.means(with_kl_ref=spec.kl_coef > 0)
    all_tokens = sum(len(o) for o in old)
    out.update(
        train_samples=float(len(samples)),
        optimizer_steps=float(totals.updates),
        trained_tokens=float(totals.tokens),
        train_tokens_per_second=totals.tokens / max(time.perf_counter() - t0, 1e-9),
        lr=float(scheduler.get_last_lr()[0]),
        entropy=pi_old.entropy_sum / max(1, all_tokens),
        logprob_gap_mean=pi_old.gap_sum / max(1, pi_old.gap_tokens),
        logprob_gap_max=pi_old.gap_max,
        frac_tokens_trained=sum(trained) / max(1, all_tokens),
        skipped_steps=float(guard.skipped),
        consecutive_skips=float(guard.in_a_row),
    )
    if cfg.skip_ratio_above is not None:
        out["skipped_micro_batches"] = float(totals.skipped_micro)
    if snapshot is not None:
        changed, total = snapshot.changed(params)
        out["frac_master_changed"] = changed / max(1, total)
    return out


class NonFiniteGuard:
    """Skips optimiser steps whose loss or gradient norm is NaN/inf, and stops the run after `limit` in a row
    (counting `in_a_row` carried in from the previous iteration): train.max_consecutive_skips."""

    def __init__(self, limit: int, in_a_row: int, log: Callable[[str], None]):
        self.limit, self.in_a_row, self.log, self.skipped = limit, in_a_row, log, 0

    def finite(self, loss: float, grad_norm: float, step: int) -> bool:
        """True for a step to take; False (logged) for one to skip; NonFiniteTraining at the limit."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        reason = f"train: skipped step {step} (loss={loss}, grad_norm={grad_norm}); {self.in_a_row} in a row"
        self.log(reason)
        if self.in_a_row >= self.limit:
            raise NonFiniteTraining(
                f"{reason}: train.max_consecutive_skips={self.limit} reached; check rewards/advantages for NaN, "
                "or lower train.lr"
            )
        return False


class UpdateTotals:
    """Sums over an iteration's optimiser steps: the loss, the clip fractions, ratio and KLs per trained token
    of each step, and the gradient norm; `means` divides by the number of steps."""

    KEYS = ("loss", "clipfrac", "clipfrac_upper", "clipfrac_lower", "clipfrac_dual", "ratio_mean", "approx_kl")

    def __init__(self):
        self.sums = dict.fromkeys((*self.KEYS, "kl_ref", "grad_norm"), 0.0)
        self.updates, self.tokens, self.skipped_micro = 0, 0, 0

    def add(self, step: dict[str, float], num_tokens: float, grad_norm: float) -> None:
        """One optimiser step's sums (_accumulate_gradients' keys) over its `num_tokens` trained tokens."""
        self.updates += 1
        self.tokens += int(num_tokens)
        self.skipped_micro += int(step["skipped_micro_batches"])
        self.sums["loss"] += step["loss"]
        clipped = step["clip_upper"] + step["clip_lower"] + step["clip_dual"]
        for name, value in (
            ("clipfrac", clipped),
            ("clipfrac_upper", step["clip_upper"]),
            ("clipfrac_lower", step["clip_lower"]),
            ("clipfrac_dual", step["clip_dual"]),
            ("ratio_mean", step["ratio"]),
            ("approx_kl", step["kl_old"]),
            ("kl_ref", step["kl_ref"]),
        ):
            self.sums[name] += value / num_tokens
        self.sums["grad_norm"] += grad_norm

    def means(self, with_kl_ref: bool) -> dict[str, float]:
        out = {k: v / max(1, self.updates) for k, v in self.sums.items()}
        if not with_kl_ref:
            del out["kl_ref"]
        return out
