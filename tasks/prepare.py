"""Stage 1: prepare_dataset (records -> prompts Parquet, tokenised) and warm_start (tiny model SFT)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import PROMPTS
from storage.shared import build_once, link
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


# Written into each shared warm start: the inputs its directory name digests, and what its SFT measured.
WARM_START_RECORD = "warm_start.json"


def sft_examples(train: FileRef, tok) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, solution ids + eos) per training prompt, in file order: what the SFT samples from."""
    table = read_parquet(train, PROMPTS)
    return [
        (list(p), tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        for p, s in zip(table["prompt_token_ids"].to_pylist(), table["solution"].to_pylist())
    ]


def warm_start_inputs(
    cfg: Config, device: str, vocab_size: int, examples: list[tuple[list[int], list[int]]], code_version: str
) -> dict:
    """Everything the warm start's weights depend on, and nothing else (no run id, preset or RL setting), so
    every run of a runs directory with equal inputs shares one warm start: the tiny model's shape and
    vocabulary, the SFT settings, run.seed (model init and batch order), the device type and torch threads
    (float results differ between CPU and CUDA kernels and with the reduction order), the examples themselves
    (sha256 of their token ids: the data section, the prompt template and the tokenizer reach the SFT only
    through them; the prompts file itself also carries the run id) and the code version."""
    blob = json.dumps(examples, separators=(",", ":")).encode()
    return {
        "model_tiny": cfg.model.tiny.model_dump(mode="json"),
        "vocab_size": vocab_size,
        "warm_start": cfg.warm_start.model_dump(mode="json"),
        "seed": cfg.run.seed,
        "device": device,
        "torch_threads": cfg.run.torch_threads,
        "examples": len(examples),
        "examples_sha256": hashlib.sha256(blob).hexdigest(),
        "code_version": code_version,
    }


def inputs_key(inputs: dict) -> str:
    """The shared directory's name: the first 16 hex digits of sha256 over the canonical JSON of `inputs`."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@task(name="warm_start", **STAGE)
def warm_start(cfg: Config, layout: RunLayout, train: FileRef, code_version: str) -> StageOutput:
    """Build the tiny model and SFT it on worked solutions (loss on completion tokens only), once per runs
    directory for each distinct `warm_start_inputs`: `<runs_dir>/shared/warm_start/<key>/`, which this run
    links as models/warm_start. A run whose inputs match an existing one (another preset, a longer run) reuses
    it, so its start accuracy is the same. The metrics are the run's own: those the SFT measured when it
    was built (sft_seconds is what the start cost, whoever paid it) plus sft_reused (1 = built by an earlier
    run)."""
    from tasks import tiny_model
    from tasks.trainer import resolve_device

    if cfg.model.name_or_path != "tiny":
        raise ValueError(f"warm_start builds the tiny model only; model.name_or_path={cfg.model.name_or_path!r}")
    device = resolve_device(cfg.run.device)
    tok = tiny_model.build_tokenizer()
    examples = sft_examples(train, tok)
    inputs = warm_start_inputs(cfg, device.type, len(tok), examples, code_version)
    shared = layout.shared_warm_start(inputs_key(inputs))
    built = build_once(shared, lambda tmp: _build_warm_start(cfg, tok, examples, device, inputs, tmp))
    if not built:
        print(f"warm_start: reusing {shared} (same model, SFT settings, examples and seed as an earlier run)")
    link(layout.warm_start, shared)
    measured = json.loads((shared / WARM_START_RECORD).read_text())["metrics"]
    metrics = write_metrics(
        layout.iteration_dir(0) / "metrics-warm_start.parquet",
        layout.run_id,
        0,
        "warm_start",
        {**measured, "sft_reused": float(not built)},
    )
    return StageOutput(artifact=FileRef.of(shared), metrics=metrics)


def _build_warm_start(cfg: Config, tok, examples: list, device, inputs: dict, out: Path) -> None:
    """SFT a freshly initialised tiny model on `examples` and save it, with WARM_START_RECORD, into `out`."""
    import torch

    from tasks import tiny_model
    from tasks.sft import sft

    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
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
    metrics = {
        "sft_loss": loss,
        "sft_seconds": time.perf_counter() - t0,
        "sft_steps": cfg.warm_start.steps,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    tiny_model.save(model.cpu(), tok, out)
    (out / WARM_START_RECORD).write_text(json.dumps({"inputs": inputs, "metrics": metrics}, indent=2))
