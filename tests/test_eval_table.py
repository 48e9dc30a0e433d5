"""The `segflow eval` table: the k it used in the headers, cost columns only when a price was given."""

from __future__ import annotations

from flows.evaluate import comparison_markdown, table_row
from tasks.algos.eval_summary import table_columns


def _cell(**extra) -> dict:
    return {
        "checkpoint": "ckpt",
        "dataset": "arith",
        "budget": 256,
        "problems": 10.0,
        "greedy_accuracy": 0.5,
        "greedy_accuracy_se": 0.1667,
        "cost_of_pass": 0.0,
        **extra,
    }


SAMPLED = {
    "k": 4.0,
    "avg_at_k": 0.45,
    "avg_at_k_se": 0.05,
    "pass_at_4": 0.8,
    "pass_at_4_se": 0.13,
    "maj_at_4": 0.6,
    "maj_at_4_se": 0.16,
}


def _summary(cells: list[dict], price_in: float = 0.0, price_out: float = 0.0) -> dict:
    frontier = [{"dataset": "arith", "budget": 256, "checkpoint": "ckpt", "cost_of_pass": 0.0021}]
    return {
        "eval_id": "e1",
        "spec": {"price_in": price_in, "price_out": price_out},
        "cells": cells,
        "comparisons": [],
        "frontier_cost_of_pass": frontier,
    }


def test_table_columns_name_k_and_hide_cost_without_prices():
    assert table_columns(4, False) == [
        ("greedy", "greedy_accuracy"),
        ("avg@4", "avg_at_k"),
        ("pass@4", "pass_at_4"),
        ("maj@4", "maj_at_4"),
    ]
    assert table_columns(0, True) == [("greedy", "greedy_accuracy"), ("cost-of-pass", "cost_of_pass")]


def test_eval_markdown_with_k4_and_no_prices_has_k_headers_and_no_cost():
    text = comparison_markdown(_summary([_cell(**SAMPLED)]))
    header, _, row = text.splitlines()[2:5]
    assert header == "| checkpoint | dataset | budget | greedy | avg@4 | pass@4 | maj@4 |"
    assert row == "| ckpt | arith | 256 | 0.500 ± 0.167 | 0.450 ± 0.050 | 0.800 ± 0.130 | 0.600 ± 0.160 |"
    assert "cost" not in text.lower()


def test_eval_markdown_greedy_only_with_prices_shows_cost_and_frontier():
    text = comparison_markdown(_summary([_cell(cost_of_pass=0.0042)], price_out=2.0))
    header, _, row = text.splitlines()[2:5]
    assert header == "| checkpoint | dataset | budget | greedy | cost-of-pass |"
    assert row == "| ckpt | arith | 256 | 0.500 ± 0.167 | 0.0042 |"
    assert text.splitlines()[-1] == "Frontier cost-of-pass: arith@256: ckpt (0.0021)"


def test_eval_table_artifact_rows_use_the_same_headers():
    row = table_row(_cell(**SAMPLED), 4, False)
    assert row == {
        "checkpoint": "ckpt",
        "dataset": "arith",
        "budget": 256,
        "problems": 10.0,
        "greedy": 0.5,
        "greedy se": 0.1667,
        "avg@4": 0.45,
        "avg@4 se": 0.05,
        "pass@4": 0.8,
        "pass@4 se": 0.13,
        "maj@4": 0.6,
        "maj@4 se": 0.16,
        "k": 4.0,
    }
    assert "cost-of-pass" in table_row(_cell(), 0, True)


def test_every_table_column_is_a_key_summarize_writes_for_k3():
    from tasks.algos.eval_summary import summarize

    rows = [
        {"prompt_id": f"p{i}", "decoding": d, "sample_index": j, "prompt_tokens": 5, "num_tokens": 10,
         "status": "ok" if (i + j) % 2 else "wrong", "extracted": str(j)}
        for i in range(3)
        for d, n in (("greedy", 1), ("sampled", 3))
        for j in range(n)
    ]  # fmt: skip
    summary = summarize(rows, price_out_per_mtok=1.0)
    assert summary["k"] == 3.0
    assert [h for h, _ in table_columns(3, True)] == ["greedy", "avg@3", "pass@3", "maj@3", "cost-of-pass"]
    assert all(key in summary for _, key in table_columns(3, True))
