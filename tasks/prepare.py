"""Stage 1: prepare_dataset (records -> prompts Parquet, tokenised) and warm_start (tiny model SFT)."""
from __future__ import annotations

import time

from prefect import task
from pydantic import BaseModel

from configs.schema import Config
from storage.handles import FileRef, atomic_dir
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import PROMPTS
from tasks.common import STAGE, StageOutput
from tasks.datasets import load_records
from tasks.progress import bar
from tasks.tokens import encode_prompt, model_tokenizer, render_prompt


class DatasetRefs(BaseModel):
    train: FileRef
    test: FileRef
    metrics: FileRef


def build_prompts(cfg: Config, run_id: str, split: str) -> tuple[list[dict], int]:
    """Prompt rows for one split and the number dropped for exceeding data.max_prompt_tokens."""
    tok = model_tokenizer(cfg.model)
    rows, dropped = [], 0
    for r in load_records(cfg.data, split):
        text = render_prompt(r["question"], cfg.data, tok)
        ids = encode_prompt(text, cfg.data, tok)
        if len(ids) > cfg.data.max_prompt_tokens:
            dropped += 1
            continue
        rows.append({"run_id": run_id, "split": split, "prompt_id": r["prompt_id"], "question": r["question"],
                     "reference": r["reference"], "solution": r["solution"], "prompt_text": text,
                     "prompt_token_ids": ids})
    if not rows:
        raise ValueError(f"split {split!r} of data.source={cfg.data.source!r} has no prompt within "
                         f"data.max_prompt_tokens={cfg.data.max_prompt_tokens}")
    return rows, dropped


@task(name="prepare_dataset", **STAGE)
def prepare_dataset(cfg: Config, layout: RunLayout, code_version: str) -> DatasetRefs:
    refs, metrics = {}, {}
    for name, split in (("train", cfg.data.train_split), ("test", cfg.data.test_split)):
        rows, dropped = build_prompts(cfg, layout.run_id, split)
        refs[name] = write_parquet(rows, PROMPTS, layout.prompts(split))
        metrics[f"{name}_prompts"] = len(rows)
        metrics[f"{name}_dropped_too_long"] = dropped
    m = write_metrics(layout.iteration_dir(0) / "metrics-prepare.parquet", layout.run_id, 0, "prepare", metrics)
    return DatasetRefs(train=refs["train"], test=refs["test"], metrics=m)


@task(name="warm_start", **STAGE)
def warm_start(cfg: Config, layout: RunLayout, train: FileRef, code_version: str) -> StageOutput:
    """Build the tiny model and SFT it on worked solutions (loss on completion tokens only)."""
    import torch

    from tasks import tiny_model
    from tasks.trainer import resolve_device, sft

    if cfg.model.name_or_path != "tiny":
        raise ValueError(f"warm_start builds the tiny model only; model.name_or_path={cfg.model.name_or_path!r}")
    device = resolve_device(cfg.run.device)
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    tok = tiny_model.build_tokenizer()
    table = read_parquet(train, PROMPTS)
    examples = [
        (list(p), tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        for p, s in zip(table["prompt_token_ids"].to_pylist(), table["solution"].to_pylist())
    ]
    model = tiny_model.build_model(cfg.model.tiny, len(tok), seed=cfg.run.seed).to(device)
    t0 = time.perf_counter()
    with bar("warm start (SFT)", cfg.warm_start.steps) as advance:
        loss = sft(model, examples, steps=cfg.warm_start.steps, batch_size=cfg.warm_start.batch_size,
                   lr=cfg.warm_start.lr, seed=cfg.run.seed, pad_id=tok.pad_token_id, device=device,
                   on_step=lambda step, loss: advance(1, f"loss {loss:.3f}"))
    seconds = time.perf_counter() - t0
    with atomic_dir(layout.warm_start) as tmp:
        tiny_model.save(model.cpu(), tok, tmp)
    metrics = write_metrics(layout.iteration_dir(0) / "metrics-warm_start.parquet", layout.run_id, 0, "warm_start",
                            {"sft_loss": loss, "sft_seconds": seconds, "sft_steps": cfg.warm_start.steps,
                             "parameters": sum(p.numel() for p in model.parameters())})
    return StageOutput(artifact=FileRef.of(layout.warm_start), metrics=metrics)
