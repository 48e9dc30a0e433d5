"""Dataset prep for the real-data presets, on local copies (tests/fixtures) and a local model directory,
and the checks on bad dataset rows (data.on_bad_row = fail | skip)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from configs.loader import resolve
from configs.schema import DataSection
from storage.layout import RunLayout
from storage.metrics import read_metrics
from tasks.datasets.loader import SKIP_REASONS, BadRow, load_records, load_records_checked
from tasks.prepare import build_prompts, prepare_dataset
from tasks.tokens import load_tokenizer

FIX = Path(__file__).parent / "fixtures"


def test_arith_prompts(small_config):
    rows, dropped = build_prompts(small_config, "r", "train")
    assert len(rows) == 200 and dropped == 0
    tok = load_tokenizer("tiny")
    r = rows[0]
    assert tok.decode(r["prompt_token_ids"]) == r["prompt_text"] == r["question"] + "\n"
    assert r["solution"].endswith(f"#### {r['reference']}")


def test_gsm8k_preset_prep_on_local_copy(tiny_model_dir):
    cfg = resolve(
        "gsm8k_qwen05b",
        overrides=[
            f"data.source={FIX / 'gsm8k'}",
            f"model.name_or_path={tiny_model_dir}",
            "data.max_prompt_tokens=2000",
        ],
    )
    rows, dropped = build_prompts(cfg, "r", "test")
    raw = [json.loads(x) for x in (FIX / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and dropped == 0
    assert rows[0]["reference"] == "18" and rows[0]["question"] == raw[0]["question"]
    assert "<<" not in rows[0]["solution"] and rows[0]["solution"].endswith("#### 18")
    assert rows[0]["prompt_text"].startswith("<|user|>\n") and rows[0]["prompt_text"].endswith("<|assistant|>\n")
    tok = load_tokenizer(str(tiny_model_dir))
    # the character vocabulary is ASCII: the curly apostrophe of row 0 is dropped (tasks/tiny_model.build_tokenizer)
    assert tok.decode(rows[0]["prompt_token_ids"]) == rows[0]["prompt_text"].replace("\u2019", "")


def test_too_long_prompts_are_dropped_and_counted(tiny_model_dir):
    cfg = resolve(
        "gsm8k_qwen05b",
        overrides=[
            f"data.source={FIX / 'gsm8k'}",
            f"model.name_or_path={tiny_model_dir}",
            "data.max_prompt_tokens=300",
        ],
    )
    rows, dropped = build_prompts(cfg, "r", "train")
    assert dropped > 0 and len(rows) + dropped == 20
    assert all(len(r["prompt_token_ids"]) <= 300 for r in rows)


def test_math500_preset_prep_on_local_copy(tiny_model_dir):
    cfg = resolve(
        "math500_r1distill",
        overrides=[
            f"data.test_source={FIX / 'math500'}",
            f"model.name_or_path={tiny_model_dir}",
            "data.max_prompt_tokens=100000",
            "rollout.max_model_len=100001",
        ],
    )
    rows, _ = build_prompts(cfg, "r", "test")
    raw = [json.loads(x) for x in (FIX / "math500" / "test.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == [x["answer"] for x in raw]
    assert rows[0]["prompt_id"] == raw[0]["unique_id"]
    assert "\\boxed{ANSWER}" in rows[0]["prompt_text"]


def test_math_train_rows_without_answer_use_last_boxed(tmp_path, tiny_model_dir):
    (tmp_path / "train.jsonl").write_text(json.dumps({"problem": "1+1?", "solution": "It is $\\boxed{2}$."}) + "\n")
    cfg = resolve(
        "math500_r1distill",
        overrides=[
            f"data.source={tmp_path}",
            f"model.name_or_path={tiny_model_dir}",
            "data.max_prompt_tokens=100000",
            "rollout.max_model_len=100001",
        ],
    )
    rows, _ = build_prompts(cfg, "r", "train")
    assert rows[0]["reference"] == "2"


def test_missing_field_and_split_fail_clearly(tmp_path, tiny_model_dir):
    (tmp_path / "train.jsonl").write_text(json.dumps({"q": "x", "answer": "1"}) + "\n")
    cfg = resolve("gsm8k_qwen05b", overrides=[f"data.source={tmp_path}", f"model.name_or_path={tiny_model_dir}"])
    with pytest.raises(ValueError, match="line 1: no field 'question'"):
        build_prompts(cfg, "r", "train")
    with pytest.raises(FileNotFoundError, match="no test.jsonl"):
        build_prompts(cfg, "r", "test")


# --- bad rows ---------------------------------------------------------------------------------------------

GOOD = [b'{"id": "q-1", "question": "1+1?", "answer": "2"}', b'{"id": "q-2", "question": "2+2?", "answer": "4"}']


def _jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _data(source: Path, policy: str = "fail", **kw) -> DataSection:
    return DataSection(task="gsm8k", source=str(source), on_bad_row=policy, **kw)


# One bad line after two good ones and a blank line (so it is physical line 4), and the message expected for it.
BAD_LINES = {
    "bad_json": (
        b'{"question": "a", "answer" "3"}',
        'not valid JSON (Expecting \':\' delimiter at column 28): \'{"question": "a", "answer" "3"}\'',
    ),
    "not_object": (b'["1+1?", "2"]', 'not a JSON object (an array): \'["1+1?", "2"]\''),
    "missing_question": (b'{"q": "1+1?", "answer": "2"}', "no field 'question' (fields: ['answer', 'q'])"),
    "missing_answer": (b'{"question": "1+1?", "ans": "2"}', "no field 'answer' (fields: ['ans', 'question'])"),
    "empty_question": (b'{"question": "", "answer": "2"}', "field 'question' is empty ('')"),
    "blank_answer": (b'{"question": "1+1?", "answer": " \\t "}', "field 'answer' is empty (' \\t ')"),
    "null_question": (b'{"question": null, "answer": "2"}', "field 'question' is null"),
    "nothing_after_hashes": (
        b'{"question": "1+1?", "answer": "so 2 ####  "}',
        "field 'answer' has nothing after '####' ('so 2 ####  ')",
    ),
    "non_utf8": (
        b'{"question": "caf\xff?", "answer": "2"}',
        'not UTF-8 (byte 0xff at offset 17): b\'{"question": "caf\\xff?", "answer": "2"}\'',
    ),
    "lone_surrogate": (
        b'{"question": "x \\ud800", "answer": "2"}',
        "field 'question' is not valid Unicode (surrogates not allowed at character 2): 'x \\ud800'",
    ),
    "duplicate_id": (b'{"id": "q-1", "question": "3+3?", "answer": "6"}', "duplicate id 'q-1' (first at line 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_row_fails_naming_file_line_and_value(tmp_path, case):
    line, problem = BAD_LINES[case]
    path = _jsonl(tmp_path / "train.jsonl", [*GOOD, b"", line, b'{"question": "later", "answer": "1"}'])
    with pytest.raises(BadRow) as e:
        load_records(_data(path), "train")
    assert isinstance(e.value, ValueError)  # the CLI reports ValueErrors as `error: ...` and exits 2
    assert str(e.value) == f"data.source={str(path)!r}, line 4: {problem}"


def test_bad_value_is_truncated_in_the_message(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [b'{"question": "' + b"x" * 500 + b'" "answer": "1"}'])
    with pytest.raises(BadRow, match="line 1: not valid JSON") as e:
        load_records(_data(path), "train")
    quoted = str(e.value).split("): ", 1)[1]
    assert len(quoted) == 80 and quoted.startswith('\'{"question": "xxx') and quoted.endswith("...")


def test_skip_drops_every_bad_kind_counts_it_and_keeps_good_rows_in_order(tmp_path):
    lines = [
        b'{"id": "a", "question": "q a", "answer": "1"}',
        b'{"question": "a", "answer" "3"}',  # bad_json
        b'{"question": "q gen", "answer": "#### 2"}',  # good, generated id: 3rd non-blank row
        b'"just a string"',  # not_object
        b"7",  # not_object
        b'{"id": "b", "question": "caf\xc3\xa9 \xe2\x80\x99", "answer": "3"}',  # good, multi-byte UTF-8
        b'{"id": "c", "question": "x\xff", "answer": "4"}',  # bad_utf8
        b'{"id": "d", "answer": "5"}',  # missing_field
        b'{"id": "e", "question": "q e"}',  # missing_field
        b"",
        b'{"id": "f", "question": "  ", "answer": "6"}',  # empty_field
        b'{"id": "g", "question": "q g", "answer": null}',  # empty_field
        b'{"id": "a", "question": "q a again", "answer": "7"}',  # duplicate_id
        b'{"id": "h", "question": "q h", "answer": "8"}',
    ]
    records, skipped = load_records_checked(_data(_jsonl(tmp_path / "train.jsonl", lines), "skip"), "train")
    assert skipped == {
        "bad_json": 1,
        "not_object": 2,
        "bad_utf8": 1,
        "missing_field": 2,
        "empty_field": 2,
        "duplicate_id": 1,
    }
    assert [r["prompt_id"] for r in records] == ["a", "train-00002", "b", "h"]
    assert [r["question"] for r in records] == ["q a", "q gen", "caf\u00e9 \u2019", "q h"]
    assert [r["reference"] for r in records] == ["1", "2", "3", "8"]
    # the same file under fail stops at the first bad row
    with pytest.raises(BadRow, match=r"line 2: not valid JSON"):
        load_records_checked(_data(tmp_path / "train.jsonl"), "train")


def test_duplicate_ids(tmp_path):
    rows = [
        {"unique_id": "u/1", "problem": "p1", "answer": "1"},
        {"unique_id": "u/2", "problem": "p2", "answer": "2"},
        {"unique_id": "u/1", "problem": "p1 again", "answer": "9"},
    ]
    path = _jsonl(tmp_path / "test.jsonl", [json.dumps(r).encode() for r in rows])
    math = DataSection(task="math", source=str(path), question_field="problem", test_split="test")
    with pytest.raises(BadRow, match=r"line 3: duplicate id 'u/1' \(first at line 1\)$") as e:
        load_records(math, "test")
    assert e.value.reason == "duplicate_id"
    # skip keeps the first occurrence
    records, skipped = load_records_checked(math.model_copy(update={"on_bad_row": "skip"}), "test")
    assert [(r["prompt_id"], r["question"]) for r in records] == [("u/1", "p1"), ("u/2", "p2")]
    assert skipped["duplicate_id"] == 1 and sum(skipped.values()) == 1
    # an explicit id equal to a generated one is a duplicate too
    path = _jsonl(
        tmp_path / "gen.jsonl",
        [b'{"question": "a", "answer": "1"}', b'{"id": "train-00000", "question": "b", "answer": "2"}'],
    )
    with pytest.raises(BadRow, match=r"line 2: duplicate id 'train-00000' \(first at line 1\)"):
        load_records(_data(path), "train")


def test_non_utf8_byte_names_line_and_offset(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [GOOD[0], b'{"question": "\xc3\xa9\xe9t\xc3\xa9", "answer": "1"}', GOOD[1]])
    with pytest.raises(BadRow) as e:
        load_records(_data(path), "train")
    assert e.value.reason == "bad_utf8"
    assert str(e.value).startswith(f"data.source={str(path)!r}, line 2: not UTF-8 (byte 0xe9 at offset 16): b'")
    records, skipped = load_records_checked(_data(path, "skip"), "train")
    assert [r["prompt_id"] for r in records] == ["q-1", "q-2"] and skipped["bad_utf8"] == 1
    # a UTF-16 file: every line is bad; the first says why
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes('{"question": "a", "answer": "1"}\n'.encode("utf-16"))
    with pytest.raises(BadRow, match=r"line 1: not UTF-8 \(byte 0xff at offset 0\) \(the file looks UTF-16"):
        load_records(_data(utf16), "train")


def test_bom_and_crlf_are_not_bad_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD[0] + b"\r\n" + GOOD[1] + b"\r\n")
    records, skipped = load_records_checked(_data(path, "skip"), "train")
    assert [r["prompt_id"] for r in records] == ["q-1", "q-2"] and sum(skipped.values()) == 0


def test_empty_file_and_all_rows_bad_fail_naming_the_file(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [b"", b"  "])
    with pytest.raises(ValueError, match=r"data.source='.*train.jsonl': no rows \(the file or split is empty\)"):
        load_records(_data(path, "skip"), "train")
    _jsonl(path, [b"nope", b"[]"])
    with pytest.raises(
        ValueError,
        match=r"train.jsonl': all 2 rows are bad and were skipped \(data.on_bad_row='skip'; "
        r"bad_json: 1, not_object: 1\)",
    ):
        load_records(_data(path, "skip"), "train")


def test_directory_and_test_source_messages_name_key_and_file(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [GOOD[0], b'{"question": "", "answer": "1"}'])
    with pytest.raises(BadRow) as e:
        load_records(_data(tmp_path), "train")
    assert (
        str(e.value) == f"data.source={str(tmp_path)!r} (file {tmp_path / 'train.jsonl'}), line 2: "
        "field 'question' is empty ('')"
    )
    other = _jsonl(tmp_path / "other.jsonl", [b"{"])
    with pytest.raises(BadRow, match=r"^data.test_source='.*other.jsonl', line 1: not valid JSON"):
        load_records(_data(tmp_path, test_source=str(other)), "test")


def test_hub_rows_are_checked_by_row_index(monkeypatch):
    rows = [
        {"question": "a", "answer": "#### 1"},
        {"question": "b", "answer": "#### 2"},
        {"question": "", "answer": "#### 3"},
    ]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: rows))
    cfg = DataSection(task="gsm8k", source="org/ds", subset="main")
    with pytest.raises(BadRow) as e:
        load_records(cfg, "train")
    assert str(e.value) == "data.source='org/ds' (subset 'main', split 'train'), row 2: field 'question' is empty ('')"
    records, skipped = load_records_checked(cfg.model_copy(update={"on_bad_row": "skip"}), "train")
    assert [r["reference"] for r in records] == ["1", "2"] and skipped["empty_field"] == 1


def test_arith_is_unaffected_by_the_row_checks(small_config):
    records, skipped = load_records_checked(small_config.data, "train")
    assert skipped == dict.fromkeys(SKIP_REASONS, 0)
    assert records == load_records(small_config.data.model_copy(update={"on_bad_row": "skip"}), "train")
    assert len(records) == 200 and records[0]["prompt_id"] == "arith-train-00000"


def _gsm8k_dir(tmp_path: Path, train: list[bytes], test: list[bytes]) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    _jsonl(d / "train.jsonl", train)
    _jsonl(d / "test.jsonl", test)
    return d


def test_prepare_dataset_reports_skips_as_metrics(tmp_path, tiny_model_dir, capsys):
    d = _gsm8k_dir(
        tmp_path,
        [*GOOD, b"{", b'{"id": "q-1", "question": "x", "answer": "1"}', b"\xff"],
        [GOOD[0], b'{"question": "", "answer": "1"}'],
    )
    cfg = resolve(
        "gsm8k_qwen05b", overrides=[f"data.source={d}", f"model.name_or_path={tiny_model_dir}", "data.on_bad_row=skip"]
    )
    refs = prepare_dataset.fn(cfg, RunLayout(runs_dir=str(tmp_path / "runs"), run_id="r"), "v")
    m = read_metrics(refs.metrics)
    assert {k: m[k] for k in m if "_skipped_" in k} == {
        "train_skipped_bad_json": 1,
        "train_skipped_not_object": 0,
        "train_skipped_bad_utf8": 1,
        "train_skipped_missing_field": 0,
        "train_skipped_empty_field": 0,
        "train_skipped_duplicate_id": 1,
        "train_skipped_bad_rows": 3,
        "test_skipped_bad_json": 0,
        "test_skipped_not_object": 0,
        "test_skipped_bad_utf8": 0,
        "test_skipped_missing_field": 0,
        "test_skipped_empty_field": 1,
        "test_skipped_duplicate_id": 0,
        "test_skipped_bad_rows": 1,
    }
    assert m["train_prompts"] == 2 and m["test_prompts"] == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        (
            f"prepare_dataset: split 'train' of data.source={str(d)!r}: skipped 3 bad rows (bad_json: 1, bad_utf8: 1, "
            "duplicate_id: 1) under data.on_bad_row='skip'"
        ),
        (
            f"prepare_dataset: split 'test' of data.source={str(d)!r}: skipped 1 bad rows (empty_field: 1) "
            "under data.on_bad_row='skip'"
        ),
    ]


def test_prepare_dataset_writes_nothing_when_a_row_is_bad(tmp_path, tiny_model_dir):
    # the bad row is in the test split, read after train: the train prompts must not be written either
    d = _gsm8k_dir(tmp_path, GOOD, [GOOD[0], b'{"id": "q-9", "question": "x", "answer": 5', GOOD[1]])
    cfg = resolve("gsm8k_qwen05b", overrides=[f"data.source={d}", f"model.name_or_path={tiny_model_dir}"])
    layout = RunLayout(runs_dir=str(tmp_path / "runs"), run_id="r")
    with pytest.raises(BadRow, match=r"\(file .*test.jsonl\), line 2: not valid JSON"):
        prepare_dataset.fn(cfg, layout, "v")
    assert not (tmp_path / "runs").exists() or not any(p.is_file() for p in (tmp_path / "runs").rglob("*"))
