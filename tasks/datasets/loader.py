"""Load question/answer records: a synthetic task's generated problems, local JSONL copies, or the Hugging Face hub.

A record is {"prompt_id", "question", "reference", "solution"}; `reference` is the final answer the
grader compares against, `solution` a worked solution when the dataset has one. What differs by task
(generated problems, the reference read out of a row) is in the task's module (tasks/datasets/registry.py).

Every row of a real dataset is checked before it becomes a record (valid UTF-8 and JSON, an object,
question/answer present and non-blank, ids unique). `data.on_bad_row` decides what a bad row does:
`fail` raises BadRow naming the file, the line (JSONL, 1-based) or row (hub, 0-based index) and the
value; `skip` drops it and counts it under its reason (SKIP_REASONS).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from configs.schema import DataSection
from tasks.datasets.registry import spec_of_task, task_module
from tasks.datasets.rows import SKIP_REASONS, BadRow, show, text_field
from tasks.local_paths import looks_like_path, missing_path

_CALC = re.compile(r"<<[^>]*>>")
_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


# --- raw rows: (position, bytes of one JSONL line | hub row) -------------------------------------------


def _jsonl_lines(file: Path, label: str) -> Iterator[tuple[str, bytes]]:
    """Non-blank lines as bytes: decoding per line lets a non-UTF-8 byte name its line number."""
    try:
        data = file.read_bytes()
    except OSError as e:  # permissions, a FIFO gone away...: say which file, as a ValueError the CLI reports
        raise ValueError(f"{label}: cannot read {file}: {e.strerror or e}") from e
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            yield f"line {n}", raw.rstrip(b"\r")


def _hub_rows(source: str, split: str, subset: str | None) -> Iterator[tuple[str, dict]]:
    # Not a local path: a Hugging Face dataset id. Needs the network (or a populated HF cache).
    import datasets  # noqa: PLC0415 - heavy and only needed for hub datasets

    for i, r in enumerate(datasets.load_dataset(source, subset, split=split)):
        yield f"row {i}", dict(r)


def _raw_rows(key: str, source: str, split: str, subset: str | None) -> tuple[str, Iterable[tuple[str, bytes | dict]]]:
    """The label that starts every message about this split (config key, value, file) and its raw rows."""
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / f"{split}.jsonl"
        if not file.exists():
            found = sorted(p.name for p in path.glob("*.jsonl"))
            raise FileNotFoundError(f"{key}={source!r}: no {split}.jsonl (found: {found})")
        label = f"{key}={source!r} (file {file})"
        return label, _jsonl_lines(file, label)
    if path.suffix == ".jsonl":
        if not path.exists():
            raise FileNotFoundError(missing_path(key, source))
        label = f"{key}={source!r}"
        return label, _jsonl_lines(path, label)
    if path.exists():
        raise ValueError(f"{key}={source!r}: expected a directory of <split>.jsonl files or a .jsonl file")
    if looks_like_path(source):  # `../data/gsm8k` from the wrong directory: never a hub id, so say so now
        raise FileNotFoundError(missing_path(key, source))
    where = f"subset {subset!r}, split {split!r}" if subset else f"split {split!r}"
    return f"{key}={source!r} ({where})", _hub_rows(source, split, subset)


# --- one row -> one record, or BadRow ------------------------------------------------------------------


def _parse_line(raw: bytes, where: str) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (the file looks UTF-16: save it as UTF-8)" if raw.startswith(_UTF16_BOMS) else ""
        raise BadRow(
            where, "bad_utf8", f"not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}){hint}: {show(raw)}"
        ) from None
    text = text.removeprefix("\ufeff")  # a BOM (also mid-file, where files were concatenated) is not data
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRow(where, "bad_json", f"not valid JSON ({e.msg} at column {e.colno}): {show(text)}") from None
    if not isinstance(row, dict):
        raise BadRow(where, "not_object", f"not a JSON object ({_JSON_TYPES.get(type(row), 'a value')}): {show(text)}")
    return row


def _record(row: dict, cfg: DataSection, split: str, index: int, where: str) -> dict:
    question = text_field(row, cfg.question_field, where)
    solution = text_field(row, cfg.solution_field, where, blank_ok=True) if cfg.solution_field else ""
    answer, solution = task_module(cfg.task).reference(row, cfg, solution, where)
    solution = _CALC.sub("", solution)  # GSM8K's <<48/2=24>> calculator annotations
    # `index` counts every non-blank row, bad ones too, so a skipped row does not renumber the rest.
    pid = str(row.get("unique_id") or row.get("id") or f"{split}-{index:05d}")
    return {"prompt_id": pid, "question": question, "reference": answer, "solution": solution}


# --- a split --------------------------------------------------------------------------------------------


def split_source(cfg: DataSection, split: str) -> tuple[str, str]:
    """(config key, source) that `split` is read from: the test split may have its own source."""
    if split == cfg.test_split and cfg.test_source:
        return "data.test_source", cfg.test_source
    return "data.source", cfg.source


def _checked_records(cfg: DataSection, split: str) -> tuple[list[dict], dict[str, int]]:
    key, source = split_source(cfg, split)
    label, raw_rows = _raw_rows(key, source, split, cfg.subset)
    records: list[dict] = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    first_at: dict[str, str] = {}  # prompt id -> position of its first row, for the duplicate message
    n = 0
    for n, (pos, raw) in enumerate(raw_rows, start=1):
        where = f"{label}, {pos}"
        try:
            row = _parse_line(raw, where) if isinstance(raw, bytes) else raw
            rec = _record(row, cfg, split, n - 1, where)
            if rec["prompt_id"] in first_at:
                raise BadRow(
                    where,
                    "duplicate_id",
                    f"duplicate id {show(rec['prompt_id'])} (first at {first_at[rec['prompt_id']]})",
                )
        except BadRow as bad:
            if cfg.on_bad_row == "fail":
                raise
            skipped[bad.reason] += 1
            continue
        first_at[rec["prompt_id"]] = pos
        records.append(rec)
    if n == 0:
        raise ValueError(f"{label}: no rows (the file or split is empty)")
    if not records:
        counts = ", ".join(f"{k}: {v}" for k, v in skipped.items() if v)
        raise ValueError(f"{label}: all {n} rows are bad and were skipped (data.on_bad_row='skip'; {counts})")
    return records, skipped


def load_records_checked(cfg: DataSection, split: str) -> tuple[list[dict], dict[str, int]]:
    """Records of `split` and, per reason in SKIP_REASONS, how many bad rows data.on_bad_row='skip' dropped.

    Under on_bad_row='fail' the first bad row raises BadRow (a ValueError) and the counts are all zero.
    """
    if spec_of_task(cfg.task).synthetic:
        records, skipped = task_module(cfg.task).synthetic_records(cfg, split), dict.fromkeys(SKIP_REASONS, 0)
    else:
        records, skipped = _checked_records(cfg, split)
    limit = cfg.train_limit if split == cfg.train_split else cfg.test_limit
    return (records[:limit] if limit else records), skipped


def load_records(cfg: DataSection, split: str) -> list[dict]:
    """Records of `split`; callers that do not report skipped rows (segflow eval) use this."""
    return load_records_checked(cfg, split)[0]
