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
from tasks.checkpoints import ADAPTER_DIR, OPTIMIZER_FILE, policy_device
from tasks.common import STAGE, StageOutput
from tasks.progress import stage
from tasks.sample import CONTINUATION, RESPONSE
from tasks.teacher_forcing import policy_logprobs
from tasks.train_samples import read_samples


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


def nominal_samples(cfg: Config) -> int:
    """Samples an iteration trains in the config's terms, the unit of the optimiser steps per iteration: a
    tree run's taken edges (their count varies; the lr schedule must not), or prompts x samples per prompt
    (responses; empty ones drop out without changing the schedule)."""
    if cfg.advantage.spec.grows_trees:
        return cfg.tree.edges_per_iteration or cfg.rollout.prompts_per_iteration * cfg.tree.edges_per_question
    return cfg.rollout.prompts_per_iteration * cfg.rollout.samples_per_prompt


def iteration_batch(cfg: Config, start: FileRef, samples_file: FileRef | str | Path) -> IterationBatch:
    """The iteration's training samples (TRAIN_SAMPLES, tasks/train_samples.py), with reference log-probs from
    the start policy where the KL penalty in the loss needs them and no reference_logprobs stage made them
    (SPO-tree edges, SPO-chain continuations)."""
    samples = read_samples(samples_file)
    if cfg.train.kl_coef > 0 and cfg.train.kl_placement == "loss":
        # Responses carry the reference_logprobs stage's (rl_update names any missing one).
        missing = [x for x in samples if x.ref_logprobs is None and x.source != RESPONSE]
        if missing:
            reference_for(cfg, start, missing)
    steps_per_epoch = math.ceil(nominal_samples(cfg) / cfg.train.mini_batch_size)
    train_cfg = cfg.train
    if any(x.source == CONTINUATION for x in samples):
        # The continuations join the iteration's optimiser steps: mini-batches grow, their number does not,
        # so the lr schedule and the number of updates per iteration stay those of the same run without them.
        grown = max(cfg.train.mini_batch_size, math.ceil(len(samples) / max(1, steps_per_epoch)))
        train_cfg = cfg.train.model_copy(update={"mini_batch_size": grown})
    return IterationBatch(samples, train_cfg, cfg.train.epochs * steps_per_epoch)


@task(name="train_policy", **STAGE)
def train_policy(
    cfg: Config,
    layout: RunLayout,
    start: FileRef,
    policy: FileRef,
    samples: FileRef,
    iteration: int,
    code_version: str,
) -> StageOutput:
    """`start` is the run's start policy (LoRA base and KL reference), `policy` the latest checkpoint,
    `samples` the iteration's TRAIN_SAMPLES file (compute_advantages', or replay_buffer's for SPO-tree)."""
    from tasks.trainer import rl_update

    batch = iteration_batch(cfg, start, samples)
    # The linear schedule's horizon (configs/schema.py fills it from run.iterations); a constant one never reads it.
    total_steps = (cfg.train.schedule_iterations or 0) * batch.steps_per_iter
    if cfg.train.processes > 1:
        return _train_distributed(cfg, layout, start, policy, batch, iteration, total_steps)
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
            pad_id=tok.pad_token_id,
            device=device,
            consecutive_skips=skips,
            on_step=lambda i, n, loss: progress.advance(1, loss=loss),
            compute_dtype=compute_dtype(cfg, device),
            **update_options(cfg, iteration),
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


def update_options(cfg: Config, iteration: int) -> dict:
    """rl_update's keyword arguments that come from the config, the same in one process and on every rank:
    the sampling temperature, the shuffle seed (the iteration), Dr. GRPO's length normaliser, micro-batch
    whitening, and whether pi_old is the sampler's (SPO-tree with tree.old_logprobs=generation)."""
    return {
        "temperature": cfg.rollout.temperature,
        "seed": iteration,
        "norm_len": cfg.rollout.max_tokens,
        "whiten_micro_batch": micro_batch_whitening(cfg),
        "old_from_sampler": cfg.advantage.spec.grows_trees and cfg.tree.old_logprobs == "generation",
    }


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
    layout: RunLayout,
    start: FileRef,
    policy: FileRef,
    batch: IterationBatch,
    iteration: int,
    total_steps: int,
) -> StageOutput:
    """train_policy with cfg.train.processes > 1: the same update under torchrun in a subprocess
    (tasks/distributed.py), bounded by cfg.train.timeout_seconds. The job directory keeps its logs."""
    from tasks.distributed import TrainJob, launch, write_job
    from tasks.tokens import load_tokenizer

    base = start.path if cfg.train.lora_rank else policy.path
    t0 = time.perf_counter()
    with atomic_dir(layout.checkpoint(iteration)) as tmp:
        job = TrainJob(
            train=batch.train_cfg,
            model_dir=base,
            output_dir=tmp,
            optimizer_state=Path(policy.path) / OPTIMIZER_FILE,
            adapter_dir=Path(policy.path) / ADAPTER_DIR if cfg.train.lora_rank else None,
            pad_id=load_tokenizer(base).pad_token_id,
            total_steps=total_steps,
            device=cfg.run.device,
            dtype=cfg.model.dtype,
            torch_threads=cfg.run.torch_threads or None,
            **update_options(cfg, iteration),
        )
        job_dir = write_job(layout.iteration_dir(iteration) / "train_job", batch.samples, job)
        stats = launch(job_dir, cfg.train.processes, cfg.train.timeout_seconds)
    stats["train_launch_seconds"] = time.perf_counter() - t0
    metrics = write_metrics(layout.metrics(iteration, "train"), layout.run_id, iteration, "train", stats)
    return StageOutput(artifact=FileRef.of(layout.checkpoint(iteration)), metrics=metrics)
