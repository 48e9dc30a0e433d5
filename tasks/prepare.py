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
from tasks.datasets.loader import (
    SKIP_REASONS,
    load_records,
    load_records_checked,
    split_source,
)
from tasks.progress import bar
from tasks.tokens import encode_prompt, model_tokenizer, render_prompt


class DatasetRefs(BaseModel):
    train: FileRef
    test: FileRef
    metrics: FileRef


def build_prompts(cfg: Config, run_id: str, split: str) -> tuple[list[dict], int]:
    """Prompt rows for one split and the number dropped for exceeding data.max_prompt_tokens."""
    return prompt_rows(cfg, run_id, split, load_records(cfg.data, split))


def prompt_rows(cfg: Config, run_id: str, split: str, records: list[dict]) -> tuple[list[dict], int]:
    """Tokenised prompt rows of `records` and the number dropped for exceeding data.max_prompt_tokens."""
    tok = model_tokenizer(cfg.model)
    rows, dropped = [], 0
    for r in records:
        text = render_prompt(r["question"], cfg.data, tok)
        ids = encode_prompt(text, cfg.data, tok)
        if len(ids) > cfg.data.max_prompt_tokens:
            dropped += 1
            continue
        rows.append(
            {
                "run_id": run_id,
                "split": split,
                "prompt_id": r["prompt_id"],
                "question": r["question"],
                "reference": r["reference"],
                "solution": r["solution"],
                "prompt_text": text,
                "prompt_token_ids": ids,
            }
        )
    if not rows:
        key, source = split_source(cfg.data, split)
        raise ValueError(
            f"split {split!r} of {key}={source!r} has no prompt within "
            f"data.max_prompt_tokens={cfg.data.max_prompt_tokens}"
        )
    return rows, dropped


def skip_metrics(name: str, skipped: dict[str, int]) -> dict[str, int]:
    """`<name>_skipped_<reason>` for every reason (zeros too: the metric set does not depend on the data)
    and the total `<name>_skipped_bad_rows`."""
    out = {f"{name}_skipped_{reason}": skipped.get(reason, 0) for reason in SKIP_REASONS}
    out[f"{name}_skipped_bad_rows"] = sum(skipped.values())
    return out


def _report_skips(cfg: Config, split: str, skipped: dict[str, int]) -> None:
    """One line per split that lost rows (the flow logs prints), so a skip is never silent."""
    if total := sum(skipped.values()):
        key, source = split_source(cfg.data, split)
        counts = ", ".join(f"{k}: {v}" for k, v in skipped.items() if v)
        print(
            f"prepare_dataset: split {split!r} of {key}={source!r}: skipped {total} bad rows ({counts}) "
            "under data.on_bad_row='skip'"
        )


@task(name="prepare_dataset", **STAGE)
def prepare_dataset(cfg: Config, layout: RunLayout, code_version: str) -> DatasetRefs:
    # Both splits are read and checked before either is written: a bad test row leaves no train file behind.
    built, metrics = {}, {}
    for name, split in (("train", cfg.data.train_split), ("test", cfg.data.test_split)):
        records, skipped = load_records_checked(cfg.data, split)
        _report_skips(cfg, split, skipped)
        rows, dropped = prompt_rows(cfg, layout.run_id, split, records)
        built[name] = (split, rows)
        metrics[f"{name}_prompts"] = len(rows)
        metrics[f"{name}_dropped_too_long"] = dropped
        metrics |= skip_metrics(name, skipped)
    refs = {name: write_parquet(rows, PROMPTS, layout.prompts(split)) for name, (split, rows) in built.items()}
    m = write_metrics(layout.iteration_dir(0) / "metrics-prepare.parquet", layout.run_id, 0, "prepare", metrics)
    return DatasetRefs(train=refs["train"], test=refs["test"], metrics=m)


@task(name="warm_start", **STAGE)
def warm_start(cfg: Config, layout: RunLayout, train: FileRef, code_version: str) -> StageOutput:
    """Build the tiny model and SFT it on worked solutions (loss on completion tokens only)."""
    import torch

    from tasks import tiny_model
    from tasks.sft import sft
    from tasks.trainer import resolve_device

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
        loss = sft(
            model,
            examples,
            steps=cfg.warm_start.steps,
            batch_size=cfg.warm_start.batch_size,
            lr=cfg.warm_start.lr,
            min_lr_ratio=cfg.warm_start.min_lr_ratio,
            seed=cfg.run.seed,
            pad_id=tok.pad_token_id,
            device=device,
            on_step=lambda step, loss: advance(1, f"loss {loss:.3f}"),
        )
    seconds = time.perf_counter() - t0
    with atomic_dir(layout.warm_start) as tmp:
        tiny_model.save(model.cpu(), tok, tmp)
    metrics = write_metrics(
        layout.iteration_dir(0) / "metrics-warm_start.parquet",
        layout.run_id,
        0,
        "warm_start",
        {
            "sft_loss": loss,
            "sft_seconds": seconds,
            "sft_steps": cfg.warm_start.steps,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
    return StageOutput(artifact=FileRef.of(layout.warm_start), metrics=metrics)
