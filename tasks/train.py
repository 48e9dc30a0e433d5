"""Stage: train_policy. One iteration of policy-gradient updates; writes the next checkpoint.

A checkpoint is a Hugging Face directory (safetensors) in the model dtype that both `from_pretrained`
and the vLLM engine load, plus `optimizer.pt` (AdamW moments and the schedule, carried into the next
iteration) and what exact resume needs: the float32 master in `master/` when the model dtype is not
float32, or with LoRA (train.lora_rank > 0) the trained adapter in `adapter/`, which the next iteration
loads on top of the start policy. The layout and the precision rules: tasks/checkpoints.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from configs.schema import Config, TrainSection
from storage.handles import FileRef, atomic_dir
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet
from storage.schemas import (
    ADVANTAGES,
    MC_ROLLOUTS,
    REF_LOGPROBS,
    ROLLOUTS,
    SEGMENT_ADVANTAGES,
    SEGMENTS,
    TRAIN_EDGES,
)
from tasks.checkpoints import ADAPTER_DIR, OPTIMIZER_FILE, policy_device
from tasks.common import STAGE, StageOutput
from tasks.progress import stage
from tasks.teacher_forcing import policy_logprobs


def cutpoints_by_sample(segments: Path) -> dict:
    """(prefix id or None, prompt id or None, sample index) -> the token indices of its cutpoints, from a
    segments file (schema SEGMENTS): a response's key is (None, prompt id, s), a trained Monte Carlo
    continuation's (prefix id, None, s). For spo.high_prob_advantage=zero."""
    t = read_parquet(segments, SEGMENTS)
    out: dict = {}
    for p, s, pre, cut in zip(
        t["prompt_id"].to_pylist(),
        t["sample_index"].to_pylist(),
        t["prefix_id"].to_pylist(),
        t["cutpoints"].to_pylist(),
    ):
        out.setdefault((pre, None if pre is not None else p, s), set()).update(cut)
    return out


def _segment_token_advantages(segment_advantages: FileRef, lengths: dict, cuts: dict | None = None) -> dict:
    """(prompt id, sample index) -> per-token advantages built from the segment advantages table; with
    `cuts` (cutpoints_by_sample) only cutpoints keep theirs (spo.high_prob_advantage=zero)."""
    from tasks.algos.spo_chain import token_advantages

    t = read_parquet(segment_advantages, SEGMENT_ADVANTAGES)
    spans: dict = {}
    for p, s, pre, a, b, v in zip(
        t["prompt_id"].to_pylist(),
        t["sample_index"].to_pylist(),
        t["prefix_id"].to_pylist(),
        t["start_token"].to_pylist(),
        t["end_token"].to_pylist(),
        t["advantage"].to_pylist(),
    ):
        if pre is None:  # a response's segment (a trained Monte Carlo continuation's has its prefix id)
            spans.setdefault((p, s), []).append((a, b, v))
    return {
        key: token_advantages(n, spans.get(key, []), None if cuts is None else cuts.get((None, *key), set()))
        for key, n in lengths.items()
    }


def load_samples(
    rollouts: FileRef,
    advantages: FileRef,
    reference: FileRef | None = None,
    per_token: bool = False,
    cuts: dict | None = None,
):
    """Training samples; with `per_token` the advantages file holds segment advantages (SPO-chain), and
    with `cuts` (cutpoints_by_sample) only the cutpoints keep theirs."""
    from tasks.trainer import Sample

    r = read_parquet(rollouts, ROLLOUTS)
    if per_token:
        lengths = {
            (p, s): len(c)
            for p, s, c in zip(
                r["prompt_id"].to_pylist(), r["sample_index"].to_pylist(), r["completion_token_ids"].to_pylist()
            )
        }
        adv = _segment_token_advantages(advantages, lengths, cuts)
    else:
        a = read_parquet(advantages, ADVANTAGES)
        adv = {
            (p, s): v
            for p, s, v in zip(a["prompt_id"].to_pylist(), a["sample_index"].to_pylist(), a["advantage"].to_pylist())
        }
    ref: dict = {}
    if reference is not None:
        t = read_parquet(reference, REF_LOGPROBS)
        ref = {
            (p, s): v
            for p, s, v in zip(t["prompt_id"].to_pylist(), t["sample_index"].to_pylist(), t["ref_logprobs"].to_pylist())
        }
    samples = []
    for p, s, pr, c, lp in zip(
        r["prompt_id"].to_pylist(),
        r["sample_index"].to_pylist(),
        r["prompt_token_ids"].to_pylist(),
        r["completion_token_ids"].to_pylist(),
        r["sampling_logprobs"].to_pylist(),
    ):
        if (p, s) not in adv:
            raise KeyError(f"{advantages.path}: no advantage for prompt {p!r} sample {s}")
        if reference is not None and (p, s) not in ref:
            raise KeyError(f"{reference.path}: no reference log-probs for prompt {p!r} sample {s}")
        if c:  # an empty completion carries no token to train
            a = adv[(p, s)]
            samples.append(Sample(pr, c, lp, 0.0 if per_token else a, ref.get((p, s)), a if per_token else None))
    return samples


def load_continuation_samples(mc_rollouts: FileRef, segment_advantages: FileRef, cuts: dict | None = None):
    """SPO-chain's trained Monte Carlo continuations (spo.mc_train): prefix = the boundary prefix,
    response = the continuation, its one segment's advantage on every token (with `cuts`, on its cutpoints
    only). Continuations without a segment (A = 0) are left out."""
    from tasks.algos.spo_chain import token_advantages
    from tasks.trainer import Sample

    t = read_parquet(segment_advantages, SEGMENT_ADVANTAGES)
    adv = {
        (pre, s): (a, b, v)
        for pre, s, a, b, v in zip(
            t["prefix_id"].to_pylist(),
            t["sample_index"].to_pylist(),
            t["start_token"].to_pylist(),
            t["end_token"].to_pylist(),
            t["advantage"].to_pylist(),
        )
        if pre is not None
    }
    m = read_parquet(mc_rollouts, MC_ROLLOUTS)
    samples = []
    for pre, s, prefix, c, lp in zip(
        m["prefix_id"].to_pylist(),
        m["sample_index"].to_pylist(),
        m["prefix_token_ids"].to_pylist(),
        m["completion_token_ids"].to_pylist(),
        m["sampling_logprobs"].to_pylist(),
    ):
        if (pre, s) in adv:
            a, b, v = adv.pop((pre, s))
            if (a, b) != (0, len(c)):
                raise ValueError(
                    f"{segment_advantages.path}: continuation {pre} #{s} spans [{a}, {b}), "
                    f"its {len(c)} tokens are [0, {len(c)})"
                )
            keep = None if cuts is None else cuts.get((pre, None, s), set())
            samples.append(Sample(prefix, c, lp, 0.0, None, token_advantages(len(c), [(0, len(c), v)], keep)))
    if adv:
        raise KeyError(f"{mc_rollouts.path}: no continuation for {len(adv)} trained segments, e.g. {next(iter(adv))}")
    return samples


def load_edge_samples(edges: FileRef):
    """SPO-tree training samples (spo.md §2.2): prefix = prompt + root-to-parent tokens, response = the
    node's tokens, pi_old = the sampler's log-probs at generation time, advantage = the edge's."""
    from tasks.trainer import Sample

    t = read_parquet(edges, TRAIN_EDGES)
    return [
        Sample(p, c, lp, a)
        for p, c, lp, a in zip(
            t["prefix_token_ids"].to_pylist(),
            t["completion_token_ids"].to_pylist(),
            t["sampling_logprobs"].to_pylist(),
            t["train_advantage"].to_pylist(),
        )
        if c
    ]


def reference_for(cfg: Config, start: FileRef, samples: list) -> None:
    """Fill each sample's reference log-probs from the start policy (a KL penalty in the loss on
    samples that have no reference_logprobs stage: SPO-tree edges)."""
    lps = policy_logprobs(cfg, start.path, [x.prompt_ids for x in samples], [x.completion_ids for x in samples])
    for x, lp in zip(samples, lps):
        x.ref_logprobs = lp


def add_lora(cfg: Config, model, adapter: Path | None):
    """Inject LoRA adapters (peft, float32) into `model` in place; load trained adapter weights when given."""
    from tasks.checkpoints import add_lora as add

    return add(cfg.train, model, adapter)


@dataclass
class IterationBatch:
    """What one iteration trains: its samples, the train section they train with (mini-batches grown
    when Monte Carlo continuations join), and the nominal optimiser steps per iteration, the lr
    schedule's unit (a tree iteration's edge count varies; the schedule must not)."""

    samples: list
    train_cfg: TrainSection
    steps_per_iter: int

    @property
    def steps_now(self) -> int:
        return self.train_cfg.epochs * math.ceil(len(self.samples) / self.train_cfg.mini_batch_size)


def iteration_batch(
    cfg: Config,
    start: FileRef,
    rollouts: FileRef,
    advantages: FileRef,
    reference: FileRef | None,
    continuations: FileRef | None,
    segments: Path | None = None,
) -> IterationBatch:
    """The iteration's training samples: SPO-tree's taken edges, or the responses (and SPO-chain's trained
    Monte Carlo continuations), with reference log-probs where the KL penalty in the loss needs them.
    `segments` is SPO-chain's segments file, read for its cutpoints when spo.high_prob_advantage=zero."""
    spec = cfg.advantage.spec
    zero = spec.reads_segments and cfg.spo.high_prob_advantage == "zero"
    cuts = cutpoints_by_sample(segments) if zero and segments is not None else None
    if zero and cuts is None:
        raise ValueError("spo.high_prob_advantage='zero' needs the iteration's segments file (its cutpoints)")
    if spec.grows_trees:  # `rollouts` is the iteration's train_edges file
        samples = load_edge_samples(rollouts)
        if cfg.train.kl_coef > 0:
            reference_for(cfg, start, samples)
        nominal = cfg.tree.edges_per_iteration or cfg.rollout.prompts_per_iteration * cfg.tree.edges_per_question
    else:
        samples = load_samples(rollouts, advantages, reference, per_token=spec.reads_segments, cuts=cuts)
        nominal = cfg.rollout.prompts_per_iteration * cfg.rollout.samples_per_prompt
    steps_per_epoch = math.ceil(nominal / cfg.train.mini_batch_size)
    train_cfg = cfg.train
    if continuations is not None:
        extra = load_continuation_samples(continuations, advantages, cuts)
        if cfg.train.kl_coef > 0:  # the reference_logprobs stage covers the responses only
            reference_for(cfg, start, extra)
        # The continuations join the iteration's optimiser steps: mini-batches grow, their number does not,
        # so the lr schedule and the number of updates per iteration stay those of the same run without them.
        samples = samples + extra
        train_cfg = cfg.train.model_copy(
            update={
                "mini_batch_size": max(cfg.train.mini_batch_size, math.ceil(len(samples) / max(1, steps_per_epoch)))
            }
        )
    return IterationBatch(samples, train_cfg, cfg.train.epochs * steps_per_epoch)


@task(name="train_policy", **STAGE)
def train_policy(
    cfg: Config,
    layout: RunLayout,
    start: FileRef,
    policy: FileRef,
    rollouts: FileRef,
    advantages: FileRef,
    reference: FileRef | None,
    continuations: FileRef | None,
    iteration: int,
    code_version: str,
) -> StageOutput:
    """`start` is the run's start policy (LoRA base), `policy` the latest checkpoint, `reference` the
    reference log-probs file when the KL penalty is in the loss, `continuations` SPO-chain's Monte Carlo
    rollouts when they train too (spo.mc_train), else None."""
    from tasks.trainer import rl_update

    # The segments file is upstream of `advantages` (same spo_values stage), so it needs no cache key of its own.
    batch = iteration_batch(cfg, start, rollouts, advantages, reference, continuations, layout.segments(iteration))
    total_steps = cfg.run.iterations * batch.steps_per_iter
    whiten = micro_batch_whitening(cfg)
    old_from_sampler = cfg.advantage.spec.grows_trees and cfg.tree.old_logprobs == "generation"
    if cfg.train.processes > 1:
        return _train_distributed(
            cfg, batch.train_cfg, layout, start, policy, batch.samples, iteration, total_steps, whiten, old_from_sampler
        )
    model, peft_model, tok, device = load_trainable(cfg, start, policy)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched, skips = restore_optimizer(cfg, params, Path(policy.path) / OPTIMIZER_FILE, device, total_steps)
    t0 = time.perf_counter()
    with stage(f"train iteration {iteration}", batch.steps_now) as progress:
        stats = rl_update(
            model,
            opt,
            sched,
            batch.samples,
            batch.train_cfg,
            temperature=cfg.rollout.temperature,
            pad_id=tok.pad_token_id,
            device=device,
            seed=iteration,
            norm_len=cfg.rollout.max_tokens,
            whiten_micro_batch=whiten,
            old_from_sampler=old_from_sampler,
            consecutive_skips=skips,
            on_step=lambda i, n, loss: progress.advance(1, loss=loss),
            compute_dtype=compute_dtype(cfg, device),
        )
    stats["train_seconds"] = time.perf_counter() - t0
    stats["trainable_parameters"] = float(sum(p.numel() for p in params))
    save_checkpoint(
        cfg,
        layout.checkpoint(iteration),
        model,
        peft_model,
        tok,
        opt,
        sched,
        consecutive_skips=int(stats["consecutive_skips"]),
    )
    metrics = write_metrics(layout.metrics(iteration, "train"), layout.run_id, iteration, "train", stats)
    return StageOutput(artifact=FileRef.of(layout.checkpoint(iteration)), metrics=metrics)


def micro_batch_whitening(cfg: Config) -> bool:
    """Whether the trainer whitens each micro-batch's advantages (tasks/trainer.trained_advantages): SPO's with
    spo.normalize=micro_batch, any estimator's with train.whiten_advantages=micro_batch (spo.md §3.3)."""
    spo = cfg.advantage.spec.monte_carlo_values and cfg.spo.normalize == "micro_batch"
    return spo or cfg.train.whiten_advantages == "micro_batch"


def compute_dtype(cfg: Config, device):
    """The dtype forward passes compute in: the model dtype (tasks/trainer.mixed_precision)."""
    from tasks.trainer import resolve_dtype

    return resolve_dtype(cfg.model.dtype, device)


def load_trainable(cfg: Config, start: FileRef, policy: FileRef):
    """(model, peft model or None, tokenizer, device) to train this iteration, as float32 master weights
    (tasks/checkpoints.load_master): the latest checkpoint, or with LoRA the start policy with the latest
    adapter on top."""
    from tasks.checkpoints import load_master
    from tasks.tokens import load_tokenizer

    device = policy_device(cfg.run)
    lora = bool(cfg.train.lora_rank)
    model_dir = start.path if lora else policy.path
    model, peft_model = load_master(
        model_dir,
        cfg.train,
        dtype=compute_dtype(cfg, device),
        device=device,
        adapter_dir=Path(policy.path) / ADAPTER_DIR if lora else None,
    )
    return model, peft_model, load_tokenizer(model_dir), device


def restore_optimizer(cfg: Config, params: list, state_file: Path, device, total_steps: int):
    """(AdamW, lr schedule, skipped-step streak), continued from the previous checkpoint's state file
    when it has one (the first iteration starts fresh)."""
    from tasks.checkpoints import restore_optimizer as restore

    return restore(cfg.train, params, state_file, device, total_steps)


def save_checkpoint(cfg: Config, dest: Path, model, peft_model, tok, opt, sched, consecutive_skips: int) -> None:
    """The checkpoint directory, written atomically (tasks/checkpoints.write_checkpoint: optimizer state,
    the master or adapter, and the weights in the model dtype that the engine and from_pretrained read)."""
    from tasks.checkpoints import write_checkpoint

    with atomic_dir(dest) as tmp:
        write_checkpoint(
            tmp,
            model,
            peft_model,
            tok,
            opt,
            sched,
            consecutive_skips=consecutive_skips,
            dtype=compute_dtype(cfg, model.device),
            gradient_checkpointing=cfg.train.gradient_checkpointing,
        )


def _train_distributed(
    cfg: Config,
    train_cfg,
    layout: RunLayout,
    start: FileRef,
    policy: FileRef,
    samples: list,
    iteration: int,
    total_steps: int,
    whiten: bool,
    old_from_sampler: bool,
) -> StageOutput:
    """train_policy with cfg.train.processes > 1: the same update under torchrun in a subprocess
    (tasks/distributed.py), bounded by cfg.train.timeout_seconds. The job directory keeps its logs."""
    from tasks.distributed import launch, write_job
    from tasks.tokens import load_tokenizer

    base = start.path if cfg.train.lora_rank else policy.path
    t0 = time.perf_counter()
    with atomic_dir(layout.checkpoint(iteration)) as tmp:
        job = write_job(
            layout.iteration_dir(iteration) / "train_job",
            samples,
            train_cfg,
            model_dir=base,
            output_dir=tmp,
            optimizer_state=Path(policy.path) / OPTIMIZER_FILE,
            adapter_dir=Path(policy.path) / ADAPTER_DIR if cfg.train.lora_rank else None,
            temperature=cfg.rollout.temperature,
            pad_id=load_tokenizer(base).pad_token_id,
            seed=iteration,
            total_steps=total_steps,
            norm_len=cfg.rollout.max_tokens,
            whiten_micro_batch=whiten,
            old_from_sampler=old_from_sampler,
            device=cfg.run.device,
            dtype=cfg.model.dtype,
            torch_threads=cfg.run.torch_threads or None,
        )
        stats = launch(job, cfg.train.processes, cfg.train.timeout_seconds)
    stats["train_launch_seconds"] = time.perf_counter() - t0
    metrics = write_metrics(layout.metrics(iteration, "train"), layout.run_id, iteration, "train", stats)
    return StageOutput(artifact=FileRef.of(layout.checkpoint(iteration)), metrics=metrics)
