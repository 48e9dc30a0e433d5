"""Dataset prep for the real-data presets, on local copies (tests/fixtures) and a local model directory."""
import json
from pathlib import Path

import pytest

from configs.loader import resolve
from tasks.prepare import build_prompts
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
    cfg = resolve("gsm8k_qwen05b", overrides=[f"data.source={FIX / 'gsm8k'}", f"model.name_or_path={tiny_model_dir}",
                                               "data.max_prompt_tokens=4000"])
    rows, dropped = build_prompts(cfg, "r", "test")
    raw = [json.loads(x) for x in (FIX / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and dropped == 0
    assert rows[0]["reference"] == "18" and rows[0]["question"] == raw[0]["question"]
    assert "<<" not in rows[0]["solution"] and rows[0]["solution"].endswith("#### 18")
    assert rows[0]["prompt_text"].startswith("<|user|>\n") and rows[0]["prompt_text"].endswith("<|assistant|>\n")
    tok = load_tokenizer(str(tiny_model_dir))
    # the character vocabulary is ASCII: the curly apostrophe of row 0 maps to <unk>
    assert tok.decode(rows[0]["prompt_token_ids"]) == rows[0]["prompt_text"].replace("\u2019", "<unk>")


def test_too_long_prompts_are_dropped_and_counted(tiny_model_dir):
    cfg = resolve("gsm8k_qwen05b", overrides=[f"data.source={FIX / 'gsm8k'}", f"model.name_or_path={tiny_model_dir}",
                                               "data.max_prompt_tokens=300"])
    rows, dropped = build_prompts(cfg, "r", "train")
    assert dropped > 0 and len(rows) + dropped == 20
    assert all(len(r["prompt_token_ids"]) <= 300 for r in rows)


def test_math500_preset_prep_on_local_copy(tiny_model_dir):
    cfg = resolve("math500_r1distill", overrides=[f"data.test_source={FIX / 'math500'}",
                                                  f"model.name_or_path={tiny_model_dir}",
                                                  "data.max_prompt_tokens=100000"])
    rows, _ = build_prompts(cfg, "r", "test")
    raw = [json.loads(x) for x in (FIX / "math500" / "test.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == [x["answer"] for x in raw]
    assert rows[0]["prompt_id"] == raw[0]["unique_id"]
    assert "\\boxed{ANSWER}" in rows[0]["prompt_text"]


def test_math_train_rows_without_answer_use_last_boxed(tmp_path, tiny_model_dir):
    (tmp_path / "train.jsonl").write_text(json.dumps({"problem": "1+1?", "solution": "It is $\\boxed{2}$."}) + "\n")
    cfg = resolve("math500_r1distill", overrides=[f"data.source={tmp_path}", f"model.name_or_path={tiny_model_dir}",
                                                  "data.max_prompt_tokens=100000"])
    rows, _ = build_prompts(cfg, "r", "train")
    assert rows[0]["reference"] == "2"


def test_missing_field_and_split_fail_clearly(tmp_path, tiny_model_dir):
    (tmp_path / "train.jsonl").write_text(json.dumps({"q": "x", "answer": "1"}) + "\n")
    cfg = resolve("gsm8k_qwen05b", overrides=[f"data.source={tmp_path}", f"model.name_or_path={tiny_model_dir}"])
    with pytest.raises(KeyError, match="no field 'question'"):
        build_prompts(cfg, "r", "train")
    with pytest.raises(FileNotFoundError, match="no test.jsonl"):
        build_prompts(cfg, "r", "test")
