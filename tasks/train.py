"""Stage: train_policy. One iteration of policy-gradient updates; writes the next checkpoint."""
from __future__ import annotations

import math
import time
from pathlib import Path

from prefect import task

from configs.schema import Config
from storage.handles import FileRef, atomic_dir
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet
from storage.schemas import ADVANTAGES, ROLLOUTS
from tasks.common import STAGE, StageOutput
from tasks.progress import bar

OPTIMIZER_FILE = "optimizer.pt"


def load_samples(rollouts: FileRef, advantages: FileRef):
    from tasks.trainer import Sample

    r = read_parquet(rollouts, ROLLOUTS)
    a = read_parquet(advantages, ADVANTAGES)
    adv = {(p, s): v for p, s, v in zip(a["prompt_id"].to_pylist(), a["sample_index"].to_pylist(),
                                         a["advantage"].to_pylist())}
    samples = []
    for p, s, pr, c, lp in zip(r["prompt_id"].to_pylist(), r["sample_index"].to_pylist(),
                               r["prompt_token_ids"].to_pylist(), r["completion_token_ids"].to_pylist(),
                               r["sampling_logprobs"].to_pylist()):
        if (p, s) not in adv:
            raise KeyError(f"{advantages.path}: no advantage for prompt {p!r} sample {s}")
        if c:  # an empty completion carries no token to train
            samples.append(Sample(pr, c, lp, adv[(p, s)]))
    return samples


@task(name="train_policy", **STAGE)
def train_policy(cfg: Config, layout: RunLayout, policy: FileRef, rollouts: FileRef, advantages: FileRef,
                 iteration: int, code_version: str) -> StageOutput:
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.tokens import load_tokenizer
    from tasks.trainer import make_scheduler, resolve_device, resolve_dtype, rl_update

    device = resolve_device(cfg.run.device)
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    dtype = resolve_dtype(cfg.model.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(policy.path, dtype=dtype).to(device)
    tok = load_tokenizer(policy.path)
    samples = load_samples(rollouts, advantages)
    steps_per_iter = cfg.train.epochs * math.ceil(
        cfg.rollout.prompts_per_iteration * cfg.rollout.samples_per_prompt / cfg.train.mini_batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = make_scheduler(opt, cfg.train, total_steps=cfg.run.iterations * steps_per_iter)
    state_file = Path(policy.path) / OPTIMIZER_FILE
    if state_file.exists():  # continue AdamW moments and the schedule from the previous iteration
        state = torch.load(state_file, map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    t0 = time.perf_counter()
    with bar(f"train iteration {iteration}", steps_per_iter) as advance:
        stats = rl_update(model, opt, sched, samples, cfg.train, temperature=cfg.rollout.temperature,
                          pad_id=tok.pad_token_id, device=device, seed=iteration, norm_len=cfg.rollout.max_tokens,
                          on_step=lambda i, n: advance(1, ""))
    stats["train_seconds"] = time.perf_counter() - t0
    with atomic_dir(layout.checkpoint(iteration)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / OPTIMIZER_FILE)
    metrics = write_metrics(layout.metrics(iteration, "train"), layout.run_id, iteration, "train", stats)
    return StageOutput(artifact=FileRef.of(layout.checkpoint(iteration)), metrics=metrics)
