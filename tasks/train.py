"""Stage: train_policy. One iteration of policy-gradient updates; writes the next checkpoint.

A checkpoint is a Hugging Face directory (safetensors) that both `from_pretrained` and the vLLM
engine load, plus `optimizer.pt` (AdamW moments and the schedule, carried into the next iteration).
With LoRA (train.lora_rank > 0) the directory holds the merged weights for the engine and
`adapter/` holds the trained adapter, which the next iteration loads on top of the start policy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from configs.schema import SEGMENT_ESTIMATORS, TREE_ESTIMATORS, Config, TrainSection
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
    TRAIN_EDGES,
)
from tasks.common import STAGE, StageOutput
from tasks.progress import bar

OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_DIR = "adapter"


def _segment_token_advantages(segment_advantages: FileRef, lengths: dict) -> dict:
    """(prompt id, sample index) -> per-token advantages built from the segment advantages table."""
    from tasks.algos.spo_chain import token_advantages

    t = read_parquet(segment_advantages, SEGMENT_ADVANTAGES)
    spans: dict = {}
    for p, s, pre, a, b, v in zip(t["prompt_id"].to_pylist(), t["sample_index"].to_pylist(), t["prefix_id"].to_pylist(),
                                  t["start_token"].to_pylist(), t["end_token"].to_pylist(), t["advantage"].to_pylist()):
        if pre is None:  # a response's segment (a trained Monte Carlo continuation's has its prefix id)
            spans.setdefault((p, s), []).append((a, b, v))
    return {key: token_advantages(n, spans.get(key, [])) for key, n in lengths.items()}


def load_samples(rollouts: FileRef, advantages: FileRef, reference: FileRef | None = None, per_token: bool = False):
    """Training samples; with `per_token` the advantages file holds segment advantages (SPO-chain)."""
    from tasks.trainer import Sample

    r = read_parquet(rollouts, ROLLOUTS)
    if per_token:
        lengths = {(p, s): len(c) for p, s, c in zip(r["prompt_id"].to_pylist(), r["sample_index"].to_pylist(),
                                                     r["completion_token_ids"].to_pylist())}
        adv = _segment_token_advantages(advantages, lengths)
    else:
        a = read_parquet(advantages, ADVANTAGES)
        adv = {(p, s): v for p, s, v in zip(a["prompt_id"].to_pylist(), a["sample_index"].to_pylist(),
                                             a["advantage"].to_pylist())}
    ref: dict = {}
    if reference is not None:
        t = read_parquet(reference, REF_LOGPROBS)
        ref = {(p, s): v for p, s, v in zip(t["prompt_id"].to_pylist(), t["sample_index"].to_pylist(),
                                             t["ref_logprobs"].to_pylist())}
    samples = []
    for p, s, pr, c, lp in zip(r["prompt_id"].to_pylist(), r["sample_index"].to_pylist(),
                               r["prompt_token_ids"].to_pylist(), r["completion_token_ids"].to_pylist(),
                               r["sampling_logprobs"].to_pylist()):
        if (p, s) not in adv:
            raise KeyError(f"{advantages.path}: no advantage for prompt {p!r} sample {s}")
        if reference is not None and (p, s) not in ref:
            raise KeyError(f"{reference.path}: no reference log-probs for prompt {p!r} sample {s}")
        if c:  # an empty completion carries no token to train
            a = adv[(p, s)]
            samples.append(Sample(pr, c, lp, 0.0 if per_token else a, ref.get((p, s)), a if per_token else None))
    return samples


def load_continuation_samples(mc_rollouts: FileRef, segment_advantages: FileRef):
    """SPO-chain's trained Monte Carlo continuations (spo.mc_train): prefix = the boundary prefix,
    response = the continuation, its one segment's advantage on every token. Continuations without a
    segment (A = 0) are left out."""
    from tasks.trainer import Sample

    t = read_parquet(segment_advantages, SEGMENT_ADVANTAGES)
    adv = {(pre, s): (a, b, v) for pre, s, a, b, v in zip(
        t["prefix_id"].to_pylist(), t["sample_index"].to_pylist(), t["start_token"].to_pylist(),
        t["end_token"].to_pylist(), t["advantage"].to_pylist()) if pre is not None}
    m = read_parquet(mc_rollouts, MC_ROLLOUTS)
    samples = []
    for pre, s, prefix, c, lp in zip(m["prefix_id"].to_pylist(), m["sample_index"].to_pylist(),
                                     m["prefix_token_ids"].to_pylist(), m["completion_token_ids"].to_pylist(),
                                     m["sampling_logprobs"].to_pylist()):
        if (pre, s) in adv:
            a, b, v = adv.pop((pre, s))
            if (a, b) != (0, len(c)):
                raise ValueError(f"{segment_advantages.path}: continuation {pre} #{s} spans [{a}, {b}), "
                                 f"its {len(c)} tokens are [0, {len(c)})")
            samples.append(Sample(prefix, c, lp, 0.0, None, [v] * len(c)))
    if adv:
        raise KeyError(f"{mc_rollouts.path}: no continuation for {len(adv)} trained segments, e.g. {next(iter(adv))}")
    return samples


def load_edge_samples(edges: FileRef):
    """SPO-tree training samples (spo.md §2.2): prefix = prompt + root-to-parent tokens, response = the
    node's tokens, pi_old = the sampler's log-probs at generation time, advantage = the edge's."""
    from tasks.trainer import Sample

    t = read_parquet(edges, TRAIN_EDGES)
    return [Sample(p, c, lp, a) for p, c, lp, a in zip(
        t["prefix_token_ids"].to_pylist(), t["completion_token_ids"].to_pylist(), t["sampling_logprobs"].to_pylist(),
        t["train_advantage"].to_pylist()) if c]


def reference_for(cfg: Config, start: FileRef, samples: list) -> None:
    """Fill each sample's reference log-probs from the start policy (a KL penalty in the loss on
    samples that have no reference_logprobs stage: SPO-tree edges)."""
    from tasks.trainer import sequence_logprobs

    model, tok, device = load_policy(cfg, start.path)
    lps = sequence_logprobs(model, [x.prompt_ids for x in samples], [x.completion_ids for x in samples],
                            pad_id=tok.pad_token_id, device=device, temperature=cfg.rollout.temperature,
                            chunk=cfg.train.logprob_chunk, micro_batch=cfg.train.micro_batch_size)
    for x, lp in zip(samples, lps):
        x.ref_logprobs = lp
    del model


def load_policy(cfg: Config, path: str):
    """(model, tokenizer, device) for a checkpoint directory, on the configured device and dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.tokens import load_tokenizer
    from tasks.trainer import resolve_device, resolve_dtype

    device = resolve_device(cfg.run.device)
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    # safetensors only (never pickle) and no code from the model repository
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(cfg.model.dtype, device), use_safetensors=True,
                                                 trust_remote_code=False).to(device)
    model.eval()
    return model, load_tokenizer(path), device


def add_lora(cfg: Config, model, adapter: Path | None):
    """Inject LoRA adapters (peft) into `model` in place; load trained adapter weights when given."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    lora = LoraConfig(r=cfg.train.lora_rank, lora_alpha=cfg.train.lora_alpha,
                      target_modules=list(cfg.train.lora_targets), lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(model, lora)
    if adapter is not None:
        set_peft_model_state_dict(peft_model, load_file(str(adapter / "adapter_model.safetensors")))
    return peft_model


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


def iteration_batch(cfg: Config, start: FileRef, rollouts: FileRef, advantages: FileRef, reference: FileRef | None,
                    continuations: FileRef | None) -> IterationBatch:
    """The iteration's training samples: SPO-tree's taken edges, or the responses (and SPO-chain's trained
    Monte Carlo continuations), with reference log-probs where the KL penalty in the loss needs them."""
    if cfg.advantage.estimator in TREE_ESTIMATORS:  # `rollouts` is the iteration's train_edges file
        samples = load_edge_samples(rollouts)
        if cfg.train.kl_coef > 0:
            reference_for(cfg, start, samples)
        nominal = cfg.tree.edges_per_iteration or cfg.rollout.prompts_per_iteration * cfg.tree.edges_per_question
    else:
        samples = load_samples(rollouts, advantages, reference, per_token=cfg.advantage.estimator in SEGMENT_ESTIMATORS)
        nominal = cfg.rollout.prompts_per_iteration * cfg.rollout.samples_per_prompt
    steps_per_epoch = math.ceil(nominal / cfg.train.mini_batch_size)
    train_cfg = cfg.train
    if continuations is not None:
        extra = load_continuation_samples(continuations, advantages)
        if cfg.train.kl_coef > 0:  # the reference_logprobs stage covers the responses only
            reference_for(cfg, start, extra)
        # The continuations join the iteration's optimiser steps: mini-batches grow, their number does not,
        # so the lr schedule and the number of updates per iteration stay those of the same run without them.
        samples = samples + extra
        train_cfg = cfg.train.model_copy(update={"mini_batch_size": max(
            cfg.train.mini_batch_size, math.ceil(len(samples) / max(1, steps_per_epoch)))})
    return IterationBatch(samples, train_cfg, cfg.train.epochs * steps_per_epoch)


@task(name="train_policy", **STAGE)
def train_policy(cfg: Config, layout: RunLayout, start: FileRef, policy: FileRef, rollouts: FileRef,
                 advantages: FileRef, reference: FileRef | None, continuations: FileRef | None, iteration: int,
                 code_version: str) -> StageOutput:
    """`start` is the run's start policy (LoRA base), `policy` the latest checkpoint, `reference` the
    reference log-probs file when the KL penalty is in the loss, `continuations` SPO-chain's Monte Carlo
    rollouts when they train too (spo.mc_train), else None."""
    from tasks.trainer import rl_update

    batch = iteration_batch(cfg, start, rollouts, advantages, reference, continuations)
    total_steps = cfg.run.iterations * batch.steps_per_iter
    whiten = cfg.advantage.estimator in SEGMENT_ESTIMATORS + TREE_ESTIMATORS and cfg.spo.normalize == "micro_batch"
    old_from_sampler = cfg.advantage.estimator in TREE_ESTIMATORS and cfg.tree.old_logprobs == "generation"
    if cfg.train.processes > 1:
        return _train_distributed(cfg, batch.train_cfg, layout, start, policy, batch.samples, iteration,
                                  total_steps, whiten, old_from_sampler)
    model, peft_model, tok, device = load_trainable(cfg, start, policy)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched, skips = restore_optimizer(cfg, params, Path(policy.path) / OPTIMIZER_FILE, device, total_steps)
    t0 = time.perf_counter()
    with bar(f"train iteration {iteration}", batch.steps_now) as advance:
        stats = rl_update(model, opt, sched, batch.samples, batch.train_cfg, temperature=cfg.rollout.temperature,
                          pad_id=tok.pad_token_id, device=device, seed=iteration, norm_len=cfg.rollout.max_tokens,
                          whiten_micro_batch=whiten, old_from_sampler=old_from_sampler, consecutive_skips=skips,
                          on_step=lambda i, n: advance(1, ""))
    stats["train_seconds"] = time.perf_counter() - t0
    stats["trainable_parameters"] = float(sum(p.numel() for p in params))
    save_checkpoint(cfg, layout.checkpoint(iteration), model, peft_model, tok, opt, sched,
                    consecutive_skips=int(stats["consecutive_skips"]))
    metrics = write_metrics(layout.metrics(iteration, "train"), layout.run_id, iteration, "train", stats)
    return StageOutput(artifact=FileRef.of(layout.checkpoint(iteration)), metrics=metrics)


def load_trainable(cfg: Config, start: FileRef, policy: FileRef):
    """(model, peft model or None, tokenizer, device) to train this iteration: the latest checkpoint, or
    with LoRA the start policy with the latest adapter on top."""
    peft_model = None
    if cfg.train.lora_rank:
        adapter = Path(policy.path) / ADAPTER_DIR
        model, tok, device = load_policy(cfg, start.path)
        peft_model = add_lora(cfg, model, adapter if adapter.exists() else None)
    else:
        model, tok, device = load_policy(cfg, policy.path)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, peft_model, tok, device


def restore_optimizer(cfg: Config, params: list, state_file: Path, device, total_steps: int):
    """(AdamW, lr schedule, skipped-step streak), continued from the previous checkpoint's state file
    when it has one (the first iteration starts fresh)."""
    import torch

    from tasks.trainer import make_scheduler

    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = make_scheduler(opt, cfg.train, total_steps=total_steps)
    if not state_file.exists():
        return opt, sched, 0
    state = torch.load(state_file, map_location=device, weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return opt, sched, int(state.get("consecutive_skips", 0))


def save_checkpoint(cfg: Config, dest: Path, model, peft_model, tok, opt, sched, consecutive_skips: int) -> None:
    """The checkpoint directory, written atomically: optimizer state, the LoRA adapter (if any) and the
    plain weights both the engine and from_pretrained read."""
    import torch

    with atomic_dir(dest) as tmp:
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "consecutive_skips": consecutive_skips}, tmp / OPTIMIZER_FILE)
        if peft_model is not None:
            peft_model.save_pretrained(tmp / ADAPTER_DIR)
            model = peft_model.merge_and_unload()
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)


def _train_distributed(cfg: Config, train_cfg, layout: RunLayout, start: FileRef, policy: FileRef, samples: list,
                       iteration: int, total_steps: int, whiten: bool, old_from_sampler: bool) -> StageOutput:
    """train_policy with cfg.train.processes > 1: the same update under torchrun in a subprocess
    (tasks/distributed.py), bounded by cfg.train.timeout_seconds. The job directory keeps its logs."""
    from tasks.distributed import launch, write_job
    from tasks.tokens import load_tokenizer

    base = start.path if cfg.train.lora_rank else policy.path
    t0 = time.perf_counter()
    with atomic_dir(layout.checkpoint(iteration)) as tmp:
        job = write_job(layout.iteration_dir(iteration) / "train_job", samples, train_cfg, model_dir=base,
                        output_dir=tmp, optimizer_state=Path(policy.path) / OPTIMIZER_FILE,
                        adapter_dir=Path(policy.path) / ADAPTER_DIR if cfg.train.lora_rank else None,
                        temperature=cfg.rollout.temperature, pad_id=load_tokenizer(base).pad_token_id, seed=iteration,
                        total_steps=total_steps, norm_len=cfg.rollout.max_tokens, whiten_micro_batch=whiten,
                        old_from_sampler=old_from_sampler, device=cfg.run.device, dtype=cfg.model.dtype,
                        torch_threads=cfg.run.torch_threads or None)
        stats = launch(job, cfg.train.processes, cfg.train.timeout_seconds)
    stats["train_launch_seconds"] = time.perf_counter() - t0
    metrics = write_metrics(layout.metrics(iteration, "train"), layout.run_id, iteration, "train", stats)
    return StageOutput(artifact=FileRef.of(layout.checkpoint(iteration)), metrics=metrics)
