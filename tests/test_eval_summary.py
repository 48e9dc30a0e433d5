"""Eval metrics of one result set (hand-computed), paired comparison inputs, and the eval spec."""

import math
from pathlib import Path

import pytest

from flows.eval_spec import dataset_section
from flows.evaluate import EvalSpec, compare, label
from tasks.algos.eval_summary import per_problem_scores, summarize


def answers(pid: str, greedy: str, sampled: list[tuple[str, str]], tokens: int = 10) -> list[dict]:
    """greedy status; sampled (status, extracted answer) in sample order."""
    rows = [
        {
            "prompt_id": pid,
            "decoding": "greedy",
            "sample_index": 0,
            "prompt_tokens": 5,
            "num_tokens": tokens,
            "status": greedy,
            "extracted": "",
        }
    ]
    rows += [
        {
            "prompt_id": pid,
            "decoding": "sampled",
            "sample_index": i,
            "prompt_tokens": 5,
            "num_tokens": tokens + i,
            "status": st,
            "extracted": ex,
        }
        for i, (st, ex) in enumerate(sampled)
    ]
    return rows


# p1: 2 of 4 sampled correct ("7"), majority tie 7/9 at k=4 broken by the earliest (sample 0: "9", wrong).
# p2: 0 of 4 correct, one truncated. p3: 4 of 4 correct.
ROWS = (
    answers("p1", "ok", [("wrong", "9"), ("ok", "7"), ("ok", "7"), ("wrong", "9")])
    + answers("p2", "wrong", [("wrong", "1"), ("wrong", "2"), ("truncated", ""), ("wrong", "1")])
    + answers("p3", "ok", [("ok", "3")] * 4)
)


def test_summarize_by_hand():
    m = summarize(ROWS, price_in_per_mtok=1e6, price_out_per_mtok=1e6)  # $1 per token: cost = tokens
    assert m["problems"] == 3 and m["k"] == 4
    assert m["greedy_accuracy"] == pytest.approx(2 / 3)
    assert m["greedy_accuracy_se"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))  # sd of (1,0,1) / sqrt(3)
    assert m["avg_at_k"] == pytest.approx((0.5 + 0 + 1) / 3)
    # pass@1 = avg accuracy; pass@2 for p1 = 1 - C(2,2)/C(4,2) = 5/6; pass@4: p1, p3 solved.
    assert m["pass_at_1"] == pytest.approx(0.5) and m["pass_at_2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert m["pass_at_4"] == pytest.approx(2 / 3)
    assert m["maj_at_1"] == pytest.approx(1 / 3)  # only p3's first sample is correct
    assert m["maj_at_4"] == pytest.approx(1 / 3)  # p1's 2-2 tie goes to sample 0's "9"
    assert m["maj_at_2"] == pytest.approx(1 / 3)  # p1: "9" vs "7" tie -> "9"
    assert m["truncation_rate"] == pytest.approx(1 / 12)
    # Sampled tokens are 10..13 per problem: mean 11.5 output + 5 input = 16.5 per attempt.
    assert m["cost_per_attempt"] == pytest.approx(16.5)
    assert m["cost_of_pass"] == pytest.approx(16.5 / 0.5)
    assert set(m) >= {"length_mean", "length_p50", "length_p90", "length_max"}


def test_summarize_greedy_only_zero_accuracy_and_zero_cost():
    rows = answers("p1", "wrong", []) + answers("p2", "no_answer", [])
    m = summarize(rows)
    assert m["greedy_accuracy"] == 0 and "avg_at_k" not in m and "pass_at_1" not in m
    assert m["cost_per_attempt"] == 0 and math.isinf(m["cost_of_pass"])  # nothing ever passes
    m = summarize(answers("p1", "ok", []))
    assert m["cost_of_pass"] == 0  # free attempts that pass cost nothing


def test_per_problem_scores_and_paired_comparison():
    s = per_problem_scores(ROWS)
    assert s == {
        "p1": {"greedy": 1.0, "avg": 0.5},
        "p2": {"greedy": 0.0, "avg": 0.0},
        "p3": {"greedy": 1.0, "avg": 1.0},
    }
    better = [dict(r, status="ok") if r["prompt_id"] == "p2" else r for r in ROWS]
    c = compare(ROWS, better, seed=0)
    assert c["problems"] == 3 and c["greedy"]["b01"] == 1 and c["greedy"]["b10"] == 0
    assert c["greedy"]["mean_diff"] == pytest.approx(1 / 3) and c["greedy"]["p_value"] == 1.0
    assert c["avg_at_k"]["mean_diff"] == pytest.approx(1 / 3)
    assert compare(ROWS, better, seed=0) == c  # the bootstrap is deterministic under a seed


def test_eval_spec_id_datasets_and_labels(tmp_path):
    spec = EvalSpec(checkpoints=("a",), samples=4)
    assert spec.eval_id() == EvalSpec(checkpoints=("a",), samples=4).eval_id() != EvalSpec(checkpoints=("a",)).eval_id()
    assert dataset_section("arith", spec).task == "arith"
    assert dataset_section("gsm8k=/data/gsm8k", spec).source == "/data/gsm8k"
    assert dataset_section("math500=/data/m500", spec).test_source == "/data/m500"
    f = tmp_path / "mine.jsonl"
    f.write_text('{"question": "1+1?", "answer": "2"}\n')
    d = dataset_section(str(f), spec)
    assert (d.task, d.source, d.test_split) == ("math", str(f), "mine")
    with pytest.raises(ValueError, match="nope"):
        dataset_section("nope", spec)
    run_ckpt = tmp_path / "runs" / "grpo-abc" / "checkpoints" / "0020"
    assert label(run_ckpt, str(run_ckpt)) == "grpo-abc@0020"
    assert label(Path("/hf/cache/snap"), "Qwen/Qwen2.5-0.5B") == "Qwen--Qwen2.5-0.5B"
