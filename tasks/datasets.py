"""Load question/answer records: the synthetic arith task, local JSONL copies, or the Hugging Face hub.

A record is {"prompt_id", "question", "reference", "solution"}; `reference` is the final answer the
grader compares against, `solution` a worked solution when the dataset has one.

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
from tasks.algos import arith
from tasks.algos.grading import reference_from_solution
from tasks.algos.math_answer import last_boxed

_CALC = re.compile(r"<<[^>]*>>")
SKIP_REASONS = ("bad_json", "not_object", "bad_utf8", "missing_field", "empty_field", "duplicate_id")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SHOW = 80  # longest value quoted in a message: enough to find the row, short enough to read


class BadRow(ValueError):
    """A dataset row that cannot become a record; `reason` is one of SKIP_REASONS."""

    def __init__(self, where: str, reason: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.reason = reason


def _show(value: object) -> str:
    r = repr(value)
    return r if len(r) <= _SHOW else r[: _SHOW - 3] + "..."


def _arith_records(cfg: DataSection, split: str) -> list[dict]:
    a = cfg.arith
    problems = arith.generate(a.n_train + a.n_test, a.min_terms, a.max_terms, a.max_operand, a.seed)
    train, test = arith.split(problems, a.n_test)
    chosen = train if split == cfg.train_split else test
    return [
        {"prompt_id": f"arith-{split}-{i:05d}", "question": p.question, "reference": str(p.answer),
         "solution": p.solution}
        for i, p in enumerate(chosen)
    ]


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
            raise FileNotFoundError(f"{key}={source!r}: no such file")
        label = f"{key}={source!r}"
        return label, _jsonl_lines(path, label)
    if path.exists():
        raise ValueError(f"{key}={source!r}: expected a directory of <split>.jsonl files or a .jsonl file")
    where = f"subset {subset!r}, split {split!r}" if subset else f"split {split!r}"
    return f"{key}={source!r} ({where})", _hub_rows(source, split, subset)


# --- one row -> one record, or BadRow ------------------------------------------------------------------

def _parse_line(raw: bytes, where: str) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (the file looks UTF-16: save it as UTF-8)" if raw.startswith(_UTF16_BOMS) else ""
        raise BadRow(where, "bad_utf8", f"not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}){hint}: "
                                        f"{_show(raw)}") from None
    text = text.removeprefix("\ufeff")  # a BOM (also mid-file, where files were concatenated) is not data
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRow(where, "bad_json", f"not valid JSON ({e.msg} at column {e.colno}): {_show(text)}") from None
    if not isinstance(row, dict):
        raise BadRow(where, "not_object", f"not a JSON object ({_JSON_TYPES.get(type(row), 'a value')}): "
                                          f"{_show(text)}")
    return row


def _text(row: dict, name: str, where: str, *, blank_ok: bool = False) -> str:
    """Field `name` as text; a missing, null or (unless blank_ok) blank value is a bad row."""
    if name not in row:
        raise BadRow(where, "missing_field", f"no field {name!r} (fields: {_show(sorted(row))})")
    value = row[name]
    if value is None and blank_ok:
        return ""
    if value is None:
        raise BadRow(where, "empty_field", f"field {name!r} is null")
    if not blank_ok and not str(value).strip():
        raise BadRow(where, "empty_field", f"field {name!r} is empty ({_show(value)})")
    text = str(value)
    try:  # a JSON escape like "\ud800" decodes to a lone surrogate, which Parquet and tokenizers reject later
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRow(where, "bad_utf8", f"field {name!r} is not valid Unicode ({e.reason} at character "
                                        f"{e.start}): {_show(text)}") from None
    return text


def _answer(row: dict, cfg: DataSection, solution: str, where: str) -> tuple[str, str]:
    """(reference, solution): the reference may come out of the solution, and GSM8K's out of its answer."""
    if cfg.task == "math" and cfg.answer_field not in row and solution:
        # MATH train sets ship only worked solutions: the reference is the last \boxed{}.
        boxed = last_boxed(solution)
        if not (boxed and boxed.strip()):
            raise BadRow(where, "missing_field", f"no field {cfg.answer_field!r} and no \\boxed{{}} answer in "
                                                 f"field {cfg.solution_field!r} ({_show(solution[-60:])})")
        return boxed, solution
    answer = _text(row, cfg.answer_field, where)
    if cfg.task == "gsm8k" and "####" in answer:
        solution, answer = solution or answer, reference_from_solution(answer)
        if not answer:
            raise BadRow(where, "empty_field", f"field {cfg.answer_field!r} has nothing after '####' "
                                               f"({_show(solution[-60:])})")
    return answer, solution


def _record(row: dict, cfg: DataSection, split: str, index: int, where: str) -> dict:
    question = _text(row, cfg.question_field, where)
    solution = _text(row, cfg.solution_field, where, blank_ok=True) if cfg.solution_field else ""
    answer, solution = _answer(row, cfg, solution, where)
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
                raise BadRow(where, "duplicate_id", f"duplicate id {_show(rec['prompt_id'])} "
                                                    f"(first at {first_at[rec['prompt_id']]})")
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
    if cfg.task == "arith":
        records, skipped = _arith_records(cfg, split), dict.fromkeys(SKIP_REASONS, 0)
    else:
        records, skipped = _checked_records(cfg, split)
    limit = cfg.train_limit if split == cfg.train_split else cfg.test_limit
    return (records[:limit] if limit else records), skipped


def load_records(cfg: DataSection, split: str) -> list[dict]:
    """Records of `split`; callers that do not report skipped rows (segflow eval) use this."""
    return load_records_checked(cfg, split)[0]
