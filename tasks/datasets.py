"""Load question/answer records: the synthetic arith task, local JSONL copies, or the Hugging Face hub.

A record is {"prompt_id", "question", "reference", "solution"}; `reference` is the final answer the
grader compares against, `solution` a worked solution when the dataset has one.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from configs.schema import DataSection
from tasks.algos import arith
from tasks.algos.grading import reference_from_solution
from tasks.algos.math_answer import last_boxed

_CALC = re.compile(r"<<[^>]*>>")


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


def _read_rows(source: str, split: str, subset: str | None) -> list[dict]:
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / f"{split}.jsonl"
        if not file.exists():
            found = sorted(p.name for p in path.glob("*.jsonl"))
            raise FileNotFoundError(f"data.source={source!r}: no {split}.jsonl (found: {found})")
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        if not path.exists():
            raise FileNotFoundError(f"data.source={source!r}: no such file")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.exists():
        raise ValueError(f"data.source={source!r}: expected a directory of <split>.jsonl files or a .jsonl file")
    # Not a local path: a Hugging Face dataset id. Needs the network (or a populated HF cache).
    import datasets  # noqa: PLC0415 - heavy and only needed for hub datasets

    return [dict(r) for r in datasets.load_dataset(source, subset, split=split)]


def _field(row: dict, name: str, source: str, i: int) -> str:
    if name not in row:
        raise KeyError(f"data.source={source!r}, row {i}: no field {name!r} (fields: {sorted(row)})")
    return str(row[name])


def load_records(cfg: DataSection, split: str) -> list[dict]:
    if cfg.task == "arith":
        records = _arith_records(cfg, split)
    else:
        source = cfg.test_source if (split == cfg.test_split and cfg.test_source) else cfg.source
        rows = _read_rows(source, split, cfg.subset)
        records = []
        for i, row in enumerate(rows):
            solution = _field(row, cfg.solution_field, source, i) if cfg.solution_field else ""
            if cfg.task == "math" and cfg.answer_field not in row and solution:
                # MATH train sets ship only worked solutions: the reference is the last \boxed{}.
                answer = last_boxed(solution) or ""
            else:
                answer = _field(row, cfg.answer_field, source, i)
            if cfg.task == "gsm8k" and "####" in answer:
                solution, answer = solution or answer, reference_from_solution(answer)
            solution = _CALC.sub("", solution)  # GSM8K's <<48/2=24>> calculator annotations
            pid = str(row.get("unique_id") or row.get("id") or f"{split}-{i:05d}")
            records.append({"prompt_id": pid, "question": _field(row, cfg.question_field, source, i),
                            "reference": answer, "solution": solution})
    limit = cfg.train_limit if split == cfg.train_split else cfg.test_limit
    return records[:limit] if limit else records
