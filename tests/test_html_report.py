"""The HTML report's sections (flows/html_report.py) on synthetic run directories: samples beside their question
and reference answer, the config's differences from its preset, SPO-chain and SPO-tree panels only for SPO runs,
the loss plot, one panel per metric, and run directories that lack files."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pytest
import yaml

from configs.loader import PRESETS_DIR, resolve, to_yaml
from flows import html_report
from flows.html_report import ABSENT, config_diff, present_metrics, read_iteration_metrics, spo_family, write_report
from flows.run_plots import load_run
from storage.layout import RunLayout
from storage.metric_names import qualified
from storage.metrics import write_metrics
from storage.parquet import write_parquet
from storage.schemas import (
    GRADES,
    PROMPTS,
    ROLLOUTS,
    SEGMENT_ADVANTAGES,
    SEGMENTS,
    TREE_ADVANTAGES,
    TREE_NODES,
)
from tasks.algos.registry import Family
from tests.test_run_reports import SUMMARY_A, make_run

TEXT = "3+4=7,7-2=5"  # the SPO fixtures' response: one token per character with the tiny tokenizer

# Stage metrics shared by every fixture run (iterations 1-4); `loss` is the train stage's.
BASE_METRICS = {
    "grade": {"reward_mean": 0.5, "accuracy": 0.5, "frac_zero_std_groups": 0.25},
    "advantage": {"adv_std": 0.9},
    "train": {"loss": 0.0123, "clipfrac": 0.01, "grad_norm": 0.7, "train_seconds": 1.0},
}
CHAIN_METRICS = {
    "spo": {
        "segments_per_response": 3.0,
        "cutpoints_per_response": 4.5,
        "mc_generated_tokens": 1234.0,
        "mc_tokens_per_trained_token": 2.75,
        "mc_dedup_savings": 0.375,
        "mc_seconds": 4.0,
    }
}
TREE_METRICS = {
    "tree": {"nodes_per_tree": 6.0, "generation_seconds": 2.0},
    "advantage": {"adv_std": 0.9, "kept_edges": 17.0},
    "replay": {"edges_trained": 16.0, "buffer_size": 5.0},
}
SPO_ONLY = ("segments_per_response", "mc_dedup_savings", "nodes_per_tree", "kept_edges", "buffer_size")


def metrics(extra: dict | None = None) -> dict:
    """iteration -> stage -> values: BASE_METRICS with reward_mean rising per iteration, plus `extra`."""
    out = {}
    for it in (1, 2, 3, 4):
        stages = {stage: dict(values) for stage, values in {**BASE_METRICS, **(extra or {})}.items()}
        stages["grade"]["reward_mean"] = stages["grade"]["accuracy"] = 0.125 * it
        out[it] = stages
    return out


def summary(run_id: str, preset: str, estimator: str) -> dict:
    return {**SUMMARY_A, "run_id": run_id, "preset": preset, "estimator": estimator, "health": {}}


def question(pid: str) -> str:
    return f"What is 6*7, asked as {pid} <b>?"


def reference(pid: str) -> str:
    return f"42 & {pid}"


def write_prompts(layout: RunLayout, split: str, ids: list[str]) -> None:
    rows = [
        {
            "run_id": layout.run_id,
            "split": split,
            "prompt_id": pid,
            "question": question(pid),
            "reference": reference(pid),
            "solution": "",
            "prompt_text": question(pid) + "\n",
            "prompt_token_ids": [5, 6],
        }
        for pid in ids
    ]
    write_parquet(rows, PROMPTS, layout.prompts(split))


def decode(ids: list[int]) -> str:
    """The fixtures' tokenizer: token id i is TEXT[i] (the report's decoder is patched to it; the run's own
    tokenizer loads through flows/cli_views.py, as `segflow segments` decodes)."""
    return "".join(TEXT[i] for i in ids)


IDS = list(range(len(TEXT)))


def make_report_run(tmp: Path, run_id: str, preset: str, estimator: str, overrides: list[str], extra=None) -> Path:
    """A finished run: config.yaml as the flow writes it (resolved preset + `overrides`), per-iteration
    metrics, evaluations at 0, 2, 4 (tests.test_run_reports.eval_rows) and the test split's prompts."""
    root = make_run(tmp, summary(run_id, preset, estimator), to_yaml(resolve(preset, overrides=overrides)))
    layout = RunLayout(runs_dir=str(tmp), run_id=run_id)
    for it, stages in metrics(extra).items():
        for stage, values in stages.items():
            write_metrics(layout.metrics(it, stage), run_id, it, stage, values)
    write_prompts(layout, "test", ["p0", "p1", "p2", "p3"])
    return root


def write_chain_iteration(layout: RunLayout, it: int, ids: list[int]) -> None:
    """Two responses of q0 (TEXT, reward 1 ok / 0 wrong), each cut into segments [0,3) [3,9) [9,11) with
    cutpoints 3, 6 and 9, as spo_values and compute_advantages write them."""
    base = {"run_id": layout.run_id, "iteration": it, "prompt_id": "q0"}
    rollouts, grades, segs, advs = [], [], [], []
    for j, (score, status) in enumerate([(1.0, "ok"), (0.0, "wrong")]):
        rollouts.append(
            {
                **base,
                "sample_index": j,
                "policy_version": it - 1,
                "seed": j,
                "prompt_token_ids": [1],
                "completion_token_ids": ids,
                "sampling_logprobs": [-0.5] * len(ids),
                "logprobs_mode": "processed_logprobs",
                "finish_reason": "stop",
                "completion_text": TEXT,
            }
        )
        grades.append({**base, "sample_index": j, "score": score, "status": status, "extracted": "5"})
        for k, (start, end, cuts, v0, v1) in enumerate([(0, 3, [], 0.5, 0.25), (3, 9, [3, 6], 0.25, 0.75)]):
            seg = {**base, "sample_index": j, "prefix_id": None, "segment_index": k, "start_token": start}
            seg |= {"end_token": end, "num_cutpoints": len(cuts), "v_start": v0, "v_end": v1}
            segs.append({**seg, "cutpoints": cuts, "n_start": 4, "n_end": 4})
            advs.append({**seg, "advantage": v1 - v0})
        seg = {**base, "sample_index": j, "prefix_id": None, "segment_index": 2, "start_token": 9, "end_token": 11}
        seg |= {"num_cutpoints": 1, "v_start": 0.75, "v_end": score}
        segs.append({**seg, "cutpoints": [9], "n_start": 4, "n_end": 1})
        advs.append({**seg, "advantage": score - 0.75})
    write_parquet(rollouts, ROLLOUTS, layout.rollouts(it))
    write_parquet(grades, GRADES, layout.grades(it))
    write_parquet(segs, SEGMENTS, layout.segments(it))
    write_parquet(advs, SEGMENT_ADVANTAGES, layout.segment_advantages(it))


def write_tree_iteration(layout: RunLayout, it: int, ids: list[int]) -> None:
    """One tree for q0: the root and two leaves, /0 = TEXT[:3] (reward 1, kept) and /1 = TEXT[3:] (reward 0)."""
    base = {"run_id": layout.run_id, "iteration": it, "prompt_id": "q0"}
    nodes, advs = [], []
    for node_id, parent, child, tokens, score, status, value, adv, kept in [
        ("q0", None, 0, [], math.nan, None, 0.5, None, False),
        ("q0/0", "q0", 0, ids[:3], 1.0, "ok", 1.0, 0.5, True),
        ("q0/1", "q0", 1, ids[3:], 0.0, "wrong", 0.0, -0.5, False),
    ]:
        depth, leaf = (0, False) if parent is None else (1, True)
        nodes.append(
            {
                **base,
                "policy_version": it - 1,
                "node_id": node_id,
                "parent_id": parent,
                "depth": depth,
                "child_index": child,
                "token_start": 0,
                "token_end": len(tokens),
                "token_ids": tokens,
                "sampling_logprobs": [-0.5] * len(tokens),
                "seed": 0,
                "finish_reason": None if parent is None else "stop",
                "is_leaf": leaf,
                "score": score,
                "status": status,
            }
        )
        advs.append(
            {
                **base,
                "node_id": node_id,
                "parent_id": parent,
                "depth": depth,
                "is_leaf": leaf,
                "n_leaves": 1 if leaf else 2,
                "value": value,
                "parent_value": None if parent is None else 0.5,
                "sibling_std": 0.5,
                "advantage": adv,
                "kept": kept,
            }
        )
    write_parquet(nodes, TREE_NODES, layout.tree_nodes(it))
    write_parquet(advs, TREE_ADVANTAGES, layout.tree_advantages(it))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    """HTML of a GRPO, an SPO-chain and an SPO-tree report, by estimator."""
    tmp = tmp_path_factory.mktemp("runs")
    make_report_run(tmp, "grpo_run", "default", "grpo", ["run.iterations=4", "train.lr=0.0005"])
    root = make_report_run(tmp, "chain_run", "spo_chain", "spo_chain", ["run.iterations=4"], CHAIN_METRICS)
    layout = RunLayout(runs_dir=str(tmp), run_id="chain_run")
    write_prompts(layout, "train", ["q0"])
    write_chain_iteration(layout, 1, IDS[::-1])  # an earlier iteration: the view draws the last one
    write_chain_iteration(layout, 4, IDS)
    assert root.is_dir()
    make_report_run(tmp, "tree_run", "spo_tree", "spo_tree", ["run.iterations=4"], TREE_METRICS)
    layout = RunLayout(runs_dir=str(tmp), run_id="tree_run")
    write_tree_iteration(layout, 4, IDS)
    write_prompts(layout, "train", ["q0"])
    out = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(html_report, "run_decoder", lambda root: decode)
        return {
            name: write_report(load_run(name + "_run", tmp), out / f"{name}.html", samples=3).read_text()
            for name in ("grpo", "chain", "tree")
        }


def test_samples_show_question_and_reference_next_to_the_response(runs):
    page = runs["grpo"]
    # p0 is correct at the last evaluation (iteration 4): its question, reference and response are on the page.
    sample = page[page.index("<b>p0</b>") : page.index("<b>p1</b>")]
    assert html.escape(question("p0")) in sample and "What is 6*7, asked as p0 &lt;b&gt;?" in sample
    assert html.escape(reference("p0")) in sample and "42 &amp; p0" in sample
    assert "answer 42 at iteration 4" in sample and '<span class="ok">ok</span>' in sample
    wrong = page[page.index("<b>p2</b>") :]
    assert html.escape(question("p2")) in wrong and '<span class="wrong">wrong</span>' in wrong


def test_config_diff_lists_the_set_overrides_against_the_preset(runs):
    preset_file = yaml.safe_load((PRESETS_DIR / "default.yaml").read_text())
    preset_iterations = preset_file["run"]["iterations"]
    assert preset_iterations != 4
    row = f'<td class="text">run.iterations</td><td class="text">{preset_iterations}</td><td class="text">4</td>'
    assert row in runs["grpo"]
    lr = resolve("default").train.lr
    assert (
        f'<td class="text">train.lr</td><td class="text">{json.dumps(lr)}</td><td class="text">0.0005</td>'
        in (runs["grpo"])
    )
    # Only those two keys differ; the full config is folded below the table.
    assert "2 keys differ from preset <b>default</b>" in runs["grpo"]
    assert "<details><summary>Full resolved config</summary><pre>run:\n  preset: default" in runs["grpo"]
    assert runs["grpo"].index("2 keys differ") < runs["grpo"].index("<h2>Summary</h2>")


def test_config_diff_by_hand():
    cfg = resolve("spo_chain", overrides=["spo.mc_samples=8", "run.iterations=7"])
    preset, rows = config_diff(to_yaml(cfg))
    assert preset == "spo_chain"
    spo_file = yaml.safe_load((PRESETS_DIR / "spo_chain.yaml").read_text())
    assert rows == [("run.iterations", resolve("spo_chain").run.iterations, 7), ("spo.mc_samples", 4, 8)]
    assert spo_file["spo"]["mc_samples"] == 4
    assert config_diff(to_yaml(resolve("spo_chain")))[1] == []
    # A file from before a key existed: the key takes today's default, as loading it would.
    old = yaml.safe_load(to_yaml(cfg))
    del old["eval"]["every"]
    assert config_diff(yaml.safe_dump(old))[1] == rows
    # A key the schema no longer has: the file is compared as written.
    old["train"]["retired_knob"] = 3
    _, rows = config_diff(yaml.safe_dump(old))
    assert ("train.retired_knob", ABSENT, 3) in rows and ("eval.every", resolve("spo_chain").eval.every, ABSENT) in rows
    with pytest.raises(ValueError, match="unknown preset 'grpo_small'"):
        config_diff("run:\n  preset: grpo_small\n")


def test_spo_chain_report_has_its_panels_and_segments_view(runs):
    page = runs["chain"]
    assert '<h2 id="spo_chain">SPO-chain</h2>' in page and 'id="spo_tree"' not in page
    alt = "SPO-chain metrics per iteration: segments_per_response, cutpoints_per_response, mc_generated_tokens, "
    assert alt + "mc_tokens_per_trained_token, mc_dedup_savings, mc_seconds" in page
    # The last iteration's responses, with cutpoints marked and segments separated, beside their question.
    assert "Iteration 4: 2 responses, 2 drawn." in page
    sep = '<span class="sep"> ‖ </span>'
    assert f"3+4{sep}<mark>=</mark>7,<mark>7</mark>-2{sep}<mark>=</mark>5" in page
    assert "<b>q0 #0  reward 1.00 (ok), 11 tokens, 3 segments</b>" in page
    assert "<b>q0 #1  reward 0.00 (wrong), 11 tokens, 3 segments</b>" in page
    assert html.escape(question("q0")) in page
    for name in ("segments_per_response", "mc_dedup_savings"):  # also columns of the metrics table
        assert f'title="{qualified(name)}"' in page
    assert "<td>0.375</td>" in page  # mc_dedup_savings


def test_spo_tree_report_has_its_panels_and_tree_view(runs):
    page = runs["tree"]
    assert '<h2 id="spo_tree">SPO-tree</h2>' in page and 'id="spo_chain"' not in page
    assert "SPO-tree metrics per iteration: nodes_per_tree, kept_edges, edges_trained, buffer_size" in page
    assert "Iteration 4: 1 trees, 1 drawn." in page
    # tree_lines: the kept edge /0 (A = 1.0 - 0.5) carries '*', the other does not.
    assert "├── /0  *A=+0.50  V=1.00  3 tok  &quot;3+4&quot;  leaf 1.00 ok" in page
    assert "└── /1   A=-0.50  V=0.00  8 tok  &quot;=7,7-2=5&quot;  leaf 0.00 wrong" in page


def test_grpo_report_has_no_spo_panels(runs):
    page = runs["grpo"]
    assert "SPO-chain" not in page and "SPO-tree" not in page and "segments_per_response" not in page
    assert "<mark>" not in page


def test_loss_is_plotted_and_duplicate_accuracy_dropped(runs, tmp_path):
    for page in runs.values():
        alt = page[page.index('alt="training metrics per iteration: ') :].split('"')[1]
        plotted = alt.split(": ")[1].split(", ")
        assert "loss" in plotted and "reward_mean" in plotted
        assert "accuracy" not in plotted  # equal to reward_mean at every iteration (BASE_METRICS)
        assert not set(plotted) & set(SPO_ONLY)
        assert page.count("held-out accuracy vs iteration") == 1  # no tokens or seconds redraw of one curve
        assert f'title="{qualified("reward_mean")} (= {qualified("accuracy")})"' in page
        assert f'title="{qualified("accuracy")}"' not in page
        assert "<td>0.0123</td>" in page  # the loss column
    # Where they differ, both stay.
    metrics = {1: {"reward_mean": 0.5, "accuracy": 0.25}, 2: {"reward_mean": 0.5, "accuracy": 0.5}}
    assert present_metrics(metrics)[:2] == ["reward_mean", "accuracy"]


def test_spo_family_from_the_estimator_registry_else_from_stage_metrics():
    got = [spo_family(e, {}) for e in ("spo_chain", "spo_tree", "grpo", "rloo")]
    assert got == [Family.SEGMENT, Family.TREE, None, None]
    assert spo_family("grpo", {1: {"segments_per_response": 2.0}}) is None  # the registry decides a known estimator
    # An estimator older code knew: the metrics its stages wrote.
    assert spo_family("", {1: {"reward_mean": 1.0, "mc_seconds": 0.0}}) is None
    assert spo_family("", {1: {"segments_per_response": 2.0}}) is Family.SEGMENT
    assert spo_family("retired", {1: {"kept_edges": 3.0}}) is Family.TREE


def test_metrics_table_scrolls_with_a_sticky_first_column(runs):
    page = runs["chain"]
    table = page[page.index("<h2>Metrics table</h2>") :]
    assert table.split("\n")[1].startswith('<div class="scroll"><table>')
    assert ".scroll th:first-child, .scroll td:first-child { position: sticky; left: 0;" in page
    assert "segments_<wbr>per_<wbr>response" in table  # headers wrap at '_'


def test_report_of_an_old_run_directory_skips_what_is_missing(tmp_path):
    """config.yaml of an unknown preset, metrics without eval or prompts files, an SPO-chain run whose segments
    files are incomplete: each section says what it lacks, the page is written."""
    root = tmp_path / "old_run"
    layout = RunLayout(runs_dir=str(tmp_path), run_id="old_run")
    root.mkdir()
    layout.config.write_text("run:\n  preset: retired_preset\n  iterations: 2\n")
    for it in (1, 2):
        write_metrics(layout.metrics(it, "grade"), "old_run", it, "grade", {"reward_mean": 0.5})
        write_metrics(layout.metrics(it, "spo"), "old_run", it, "spo", {"segments_per_response": 2.0})
    layout.segment_advantages(2).parent.mkdir(parents=True, exist_ok=True)
    layout.segment_advantages(2).write_text("not parquet")  # and no rollouts, grades or segments
    page = write_report(load_run("old_run", tmp_path), tmp_path / "old.html").read_text()
    assert '<p class="partial"><b>partial (0 of 2 iterations)</b>' in page
    assert "No comparison with the preset: unknown preset &#x27;retired_preset&#x27;" in page
    assert '<h2 id="spo_chain">SPO-chain</h2>' in page and "Could not draw the segments view" in page
    assert "No greedy evaluation responses found." in page and "loss" not in read_iteration_metrics(root)[1]


def test_an_spo_run_before_its_first_iteration_shows_its_empty_panel(tmp_path):
    layout = RunLayout(runs_dir=str(tmp_path), run_id="young_tree")
    layout.root.mkdir()
    layout.config.write_text(to_yaml(resolve("spo_tree", overrides=["run.iterations=3"])))
    page = write_report(load_run("young_tree", tmp_path), tmp_path / "young.html").read_text()
    assert '<p class="partial"><b>partial (0 of 3 iterations)</b>' in page
    assert '<h2 id="spo_tree">SPO-tree</h2>' in page and "No iteration has an SPO-tree" in page
    preset = resolve("spo_tree").run.iterations
    assert f'<td class="text">run.iterations</td><td class="text">{preset}</td><td class="text">3</td>' in page
