"""Run comparison tables, accuracy plots and the HTML report, on fake finished runs built from real files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from flows.html_report import pick_samples, write_report
from flows.run_plots import (
    accuracy_points,
    comparison_dir,
    comparison_rows,
    format_table,
    load_run,
    markdown_table,
    partial_note,
    plot_accuracy,
    png_data_uri,
)
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import write_parquet
from storage.schemas import EVAL_RESULTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPT = "<script>alert(1)</script>"

# Run A: evaluated at 0, 2, 4; best accuracy at iteration 2; has compute_seconds_at_eval and avg@k.
SUMMARY_A = {
    "run_id": "run_a",
    "preset": "grpo_small",
    "estimator": "grpo",
    "iterations_completed": 4,
    "initial_eval_accuracy": 0.25,
    "final_eval_accuracy": 0.5,
    "eval_accuracy": {"0": 0.25, "2": 0.625, "4": 0.5},
    "eval_avg_at_k": {"0": 0.2, "2": 0.4, "4": 0.45},
    "generated_tokens": 2_500_000.0,
    "generated_tokens_at_eval": {"0": 0.0, "2": 1_200_000.0, "4": 2_500_000.0},
    "compute_seconds_at_eval": {"0": 3.0, "2": 40.0, "4": 81.5},
    "wall_seconds": 95.25,
    "stage_seconds": {"grade": 1.0, "train_policy": 50.0},
    "compute_seconds": {"generate_rollouts": 30.5, "train_policy": 48.0, "evaluate": 3.0},
    "stages_executed": {"grade": 4, "train_policy": 4},
    "stages_cached": {"grade": 0, "train_policy": 0},
    "code_version": "abc123",
    "health": {
        "clipping": {"first_message": "31% of trained tokens were clipped: lower train.lr <now>", "iterations": [3, 4]}
    },
}
# Run B: an older summary without compute_seconds_at_eval, avg@k or health.
SUMMARY_B = {
    **{k: v for k, v in SUMMARY_A.items() if k not in ("compute_seconds_at_eval", "eval_avg_at_k", "health")},
    "run_id": "run_b",
    "preset": "spo_tree",
    "estimator": "spo_tree",
    "iterations_completed": 2,
    "initial_eval_accuracy": 0.25,
    "final_eval_accuracy": 0.75,
    "eval_accuracy": {"0": 0.25, "2": 0.75},
    "generated_tokens": 750_000.0,
    "generated_tokens_at_eval": {"0": 0.0, "2": 750_000.0},
}
CONFIG_A = "run:\n  preset: grpo_small\n  iterations: 4\nadvantage:\n  estimator: grpo\n"

# iteration -> stage -> metrics, for run A.
METRICS_A = {
    it: {
        "grade": {"reward_mean": 0.125 * it, "accuracy": 0.1 * it},
        "train": {"clipfrac": 0.0625 * it, "grad_norm": 1.5 + it, "train_seconds": 12.0},
    }
    for it in (1, 2, 3, 4)
}


EVAL_PROBLEMS = 4  # the greedy problems of eval_rows


def make_run(runs_dir: Path, summary: dict, config: str, metrics: dict | None = None) -> Path:
    layout = RunLayout(runs_dir=str(runs_dir), run_id=summary["run_id"])
    layout.root.mkdir(parents=True)
    layout.config.write_text(config)
    for it, stages in (metrics or {}).items():
        for stage, values in stages.items():
            write_metrics(layout.metrics(it, stage), layout.run_id, it, stage, values)
    for it in map(int, summary["eval_accuracy"]):
        write_parquet(eval_rows(layout.run_id, it), EVAL_RESULTS, layout.eval_results(it))
        write_metrics(
            layout.eval_metrics(it),
            layout.run_id,
            it,
            "eval",
            {"eval_accuracy": summary["eval_accuracy"][str(it)], "eval_problems": EVAL_PROBLEMS},
        )
    layout.summary.write_text(json.dumps(summary))
    return layout.root


def eval_rows(run_id: str, it: int) -> list[dict]:
    """Four greedy problems (p0, p1 correct; p2 wrong with a script tag; p3 no answer) + one sampled row."""

    def row(pid: str, status: str, text: str, decoding: str = "greedy") -> dict:
        values = {
            "run_id": run_id,
            "iteration": it,
            "split": "test",
            "prompt_id": pid,
            "decoding": decoding,
            "sample_index": 0,
            "num_tokens": len(text),
            "score": 1.0 if status == "ok" else 0.0,
            "status": status,
            "completion_text": text,
        }
        # Columns the report does not read (finish_reason, extracted, ...) get a neutral value, so the
        # fixture follows EVAL_RESULTS as it grows.
        return {f.name: values.get(f.name, _neutral(f.type)) for f in EVAL_RESULTS}

    return [
        row("p0", "ok", f"answer 42 at iteration {it}"),
        row("p1", "ok", "so x = 7 & y < 3"),
        row("p2", "wrong", f"I think {SCRIPT} 13"),
        row("p3", "no_answer", "hmm"),
        row("p0", "ok", "SAMPLED-ONLY-TEXT", decoding="sampled"),
    ]


def _neutral(t: pa.DataType) -> object:
    if pa.types.is_string(t):
        return ""
    if pa.types.is_integer(t):
        return 0
    if pa.types.is_floating(t):
        return 0.0
    return None


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("runs")
    make_run(d, SUMMARY_A, CONFIG_A, METRICS_A)
    make_run(d, SUMMARY_B, "run:\n  preset: spo_tree\n")
    # An unfinished run: config written at start, no summary.json yet.
    (d / "run_c").mkdir()
    (d / "run_c" / "config.yaml").write_text("run: {}\n")
    return d


@pytest.fixture(scope="module")
def report(runs_dir, tmp_path_factory) -> str:
    out = write_report(load_run("run_a", runs_dir), tmp_path_factory.mktemp("report") / "run_a.html", samples=3)
    return out.read_text()


def test_load_run_by_id_and_by_path(runs_dir):
    by_id = load_run("run_a", runs_dir)
    by_path = load_run(str(runs_dir / "run_a"), Path("/nonexistent"))
    for run in (by_id, by_path):
        assert (run.run_id, run.preset, run.estimator) == ("run_a", "grpo_small", "grpo")
        assert run.config == CONFIG_A
        assert run.summary["final_eval_accuracy"] == 0.5
    assert by_id.root == runs_dir / "run_a"


def test_load_run_errors(runs_dir):
    with pytest.raises(ValueError, match="no run directory with summary.json or config.yaml") as e:
        load_run("run_missing", runs_dir)
    assert str(runs_dir / "run_missing") in str(e.value)  # names what was tried


def test_comparison_rows_by_hand(runs_dir):
    a, b = comparison_rows([load_run("run_a", runs_dir), load_run("run_b", runs_dir)])
    assert (a["run_id"], a["preset"], a["estimator"], a["iterations"]) == ("run_a", "grpo_small", "grpo", 4)
    assert (a["initial_accuracy"], a["final_accuracy"]) == (0.25, 0.5)
    assert (a["best_accuracy"], a["best_iteration"]) == (0.625, 2)  # best is not the final one
    assert a["final_avg_at_k"] == 0.45
    assert a["generated_tokens_m"] == pytest.approx(2.5)
    assert a["compute_seconds"] == pytest.approx(30.5 + 48.0 + 3.0)
    assert a["wall_seconds"] == 95.25
    assert (b["best_accuracy"], b["best_iteration"], b["final_avg_at_k"]) == (0.75, 2, None)
    assert b["generated_tokens_m"] == pytest.approx(0.75)

    text = format_table([a, b])
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines[:2]}) == 1  # header and rule align
    assert "62.5%" in lines[2] and "2.500" in lines[2] and "81.5" in lines[2]
    assert lines[3].split()[0] == "run_b" and "-" in lines[3].split()  # missing avg@k shown as '-'
    md = markdown_table([a, b]).splitlines()
    assert md[0].startswith("| run |") and md[1].startswith("|---|") and len(md) == 4
    assert "| 75.0% |" in md[3]


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000


def test_plot_accuracy_writes_pngs(runs_dir, tmp_path):
    runs = [load_run("run_a", runs_dir), load_run("run_b", runs_dir)]
    paths = plot_accuracy(runs, tmp_path / "plots")
    assert set(paths) == {"iteration", "tokens", "seconds"}  # run_b lacks seconds, run_a still plots
    for path in paths.values():
        assert path.parent == tmp_path / "plots"
        _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths.values())
    assert png_data_uri(paths["iteration"]).startswith("data:image/png;base64,iVBORw0KGgo")


def test_plot_accuracy_without_compute_seconds(runs_dir, tmp_path):
    paths = plot_accuracy([load_run("run_b", runs_dir)], tmp_path)
    assert set(paths) == {"iteration", "tokens"}
    _assert_png(paths["tokens"])


def test_seconds_axis_starts_at_rl_and_error_bars_are_binomial_se(runs_dir):
    run = load_run("run_a", runs_dir)
    pts = accuracy_points(run, "compute_seconds_at_eval", from_rl_start=True)
    # compute_seconds_at_eval {0: 3.0, 2: 40.0, 4: 81.5}: iteration 0 (warm start + first eval) is the origin.
    assert pts.xs == [0.0, 37.0, 78.5]
    assert pts.ys == [25.0, 62.5, 50.0]
    # SE = sqrt(p (1 - p) / n) with n = 4 problems, in %.
    expected = [100 * (0.25 * 0.75 / 4) ** 0.5, 100 * (0.625 * 0.375 / 4) ** 0.5, 100 * (0.5 * 0.5 / 4) ** 0.5]
    assert pts.errs == pytest.approx(expected)
    assert pts.errs[2] == pytest.approx(25.0)
    # Without from_rl_start the raw values stay (other axes: tokens start at 0 by construction).
    assert accuracy_points(run, "compute_seconds_at_eval").xs == [3.0, 40.0, 81.5]
    assert accuracy_points(run, None).xs == [0.0, 2.0, 4.0]


def test_error_bars_from_summary_eval_problems_win_and_unknown_n_has_none(tmp_path):
    summary = {**SUMMARY_B, "run_id": "run_n", "eval_problems": {"0": 100, "2": 100}}
    root = make_run(tmp_path, summary, "run: {}\n")
    pts = accuracy_points(load_run(str(root), tmp_path), None)
    assert pts.errs == pytest.approx([100 * (0.25 * 0.75 / 100) ** 0.5, 100 * (0.75 * 0.25 / 100) ** 0.5])
    (root / "eval" / "0000" / "metrics-eval.parquet").unlink()
    summary.pop("eval_problems")
    (root / "summary.json").write_text(json.dumps(summary))
    assert accuracy_points(load_run(str(root), tmp_path), None).errs == [None, pytest.approx(100 * (0.1875 / 4) ** 0.5)]


def test_comparison_dir_differs_per_comparison_and_not_per_order(tmp_path):
    ab = comparison_dir(["run_b", "run_a"], tmp_path)
    assert ab == tmp_path / "compare" / "run_a+run_b"
    assert comparison_dir(["run_a", "run_b"], tmp_path) == ab
    assert comparison_dir(["run_a", "run_c"], tmp_path) != ab
    # Same last parts in different directories: a hash of the full names keeps them apart.
    x, y = comparison_dir(["x/run_a", "run_b"], tmp_path), comparison_dir(["y/run_a", "run_b"], tmp_path)
    assert x != y and x.name.startswith("run_a+run_b-") and x.parent == tmp_path / "compare"


def test_two_comparisons_keep_their_own_plots(runs_dir, tmp_path):
    a, b = load_run("run_a", runs_dir), load_run("run_b", runs_dir)
    first = plot_accuracy([a, b], comparison_dir(["run_a", "run_b"], tmp_path))
    second = plot_accuracy([a], comparison_dir(["run_a"], tmp_path))
    assert first["iteration"] != second["iteration"]
    assert first["iteration"].read_bytes() != second["iteration"].read_bytes()
    assert {p.name for p in (tmp_path / "compare").iterdir()} == {"run_a", "run_a+run_b"}


def test_pick_samples_mixes_correct_and_wrong():
    rows = [{"status": s, "id": i} for i, s in enumerate(["ok"] * 5 + ["wrong"] * 5)]
    assert [r["status"] for r in pick_samples(rows, 5)] == ["ok"] * 3 + ["wrong"] * 2
    assert [r["status"] for r in pick_samples(rows[:6], 5)] == ["ok"] * 4 + ["wrong"]  # one wrong: ok fills in
    assert len(pick_samples(rows[:2], 5)) == 2


def test_report_is_self_contained_and_escaped(report):
    assert report.startswith("<!DOCTYPE html>")
    assert "run_a" in report and "grpo_small" in report
    assert "preset: grpo_small\n  iterations: 4" in report  # config.yaml text in a <pre>
    assert '<img src="data:image/png;base64,' in report
    assert "http://" not in report and "https://" not in report and "<script" not in report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert "so x = 7 &amp; y &lt; 3" in report


def test_report_metrics_and_samples(report):
    from storage.metric_names import qualified

    for name in ("reward_mean", "accuracy", "clipfrac", "grad_norm", "train_seconds"):  # namespaced headers
        assert f'<th><span title="{qualified(name)}">' in report
    for value in ("0.375", "0.1875", "5.5", "0.25", "12"):  # reward_mean/clipfrac at 3, grad_norm at 4, ...
        assert f"<td>{value}</td>" in report
    assert "62.5%" in report and "2,500,000" in report  # best accuracy, generated tokens
    # Samples come from the last evaluation (iteration 4), greedy only: 2 correct + 1 wrong of 3.
    assert "answer 42 at iteration 4" in report and "answer 42 at iteration 2" not in report
    assert "SAMPLED-ONLY-TEXT" not in report
    assert report.count('class="sample"') == 3


def test_report_lists_health_findings(report, runs_dir, tmp_path):
    assert (
        '<td class="text">clipping</td><td class="text">3, 4</td>'
        '<td class="text">31% of trained tokens were clipped: lower train.lr &lt;now&gt;</td>'
    ) in report
    other = write_report(load_run("run_b", runs_dir), tmp_path / "run_b.html").read_text()
    assert "No health-check findings." in other and "No health-check findings." not in report


def test_in_flow_evaluation_draws_the_same_samples_for_runs_that_share_a_seed(tmp_path, monkeypatch):
    """Common random numbers: two runs that differ only in algorithm evaluate a checkpoint with the same
    sampling seeds (so equal SFT starts score equally); a different run.seed draws differently."""
    import tasks.evaluate as evaluate_mod
    from configs.loader import resolve, run_id
    from storage.handles import FileRef
    from storage.schemas import PROMPTS
    from tasks.engines.base import Completion

    class RecordingEngine:
        def __init__(self):
            self.seeds = []

        def generate(self, requests, *, temperature, top_p, stop=(), progress=True):
            if temperature > 0:
                self.seeds.append([r.seed for r in requests])
            return [Completion([1], [-0.1], "stop", "#### 3") for _ in requests]

    prompts = tmp_path / "test.parquet"
    write_parquet(
        [
            {
                "run_id": "x",
                "split": "test",
                "prompt_id": f"q{i}",
                "question": "1+2",
                "reference": "3",
                "solution": "",
                "prompt_text": "1+2",
                "prompt_token_ids": [5, 6],
            }
            for i in range(3)
        ],
        PROMPTS,
        prompts,
    )
    seeds = []
    for overrides in (["advantage.estimator=grpo"], ["advantage.estimator=rloo"], ["run.seed=1"]):
        cfg = resolve("default", overrides=[*overrides, "eval.samples=4"])
        engine = RecordingEngine()
        monkeypatch.setattr(evaluate_mod, "get_engine", lambda *a, _e=engine, **k: (_e, {}))
        layout = RunLayout(runs_dir=str(tmp_path / "runs"), run_id=run_id(cfg))
        evaluate_mod.evaluate.fn(cfg, layout, FileRef.of(prompts), FileRef.of(prompts), 0, "v")
        seeds.append(engine.seeds[0])
    assert len(seeds[0]) == 12 and len(set(seeds[0])) == 12
    assert seeds[0] == seeds[1]  # grpo and rloo runs: different run ids, same draws
    assert seeds[2] != seeds[0]  # another run.seed: other draws


def test_iteration_metrics_count_generated_tokens_per_training_sample():
    """The x axis of cost comparisons: rollout + Monte Carlo tokens per sample the iteration trains."""
    from flows.rl_train import generated_tokens, iteration_metrics

    grpo = iteration_metrics([{"generated_tokens": 2560.0, "samples": 128.0}, {"loss": 0.25}])
    assert grpo["generated_tokens_per_sample"] == 20.0 and grpo["loss"] == 0.25
    chain = [{"generated_tokens": 1000.0, "samples": 100.0}, {"mc_generated_tokens": 3000.0}]
    assert iteration_metrics(chain)["generated_tokens_per_sample"] == 40.0
    chain[1]["mc_trained_samples"] = 100.0  # spo.mc_train: trained continuations are samples too
    assert iteration_metrics(chain)["generated_tokens_per_sample"] == 20.0
    assert generated_tokens(iteration_metrics(chain)) == 4000.0
    tree = iteration_metrics([{"generated_tokens": 3000.0, "kept_edges": 100.0, "samples": 999.0}])
    assert tree["generated_tokens_per_sample"] == 30.0  # kept edges, not the tree's node count
    assert "generated_tokens_per_sample" not in iteration_metrics([{"generated_tokens": 10.0}])


# A run that crashed in iteration 3 of 4: iterations 1-2 trained, iteration 3 only graded, evaluated at 0 and 2.
PARTIAL_CONFIG = "run:\n  preset: grpo_small\n  iterations: 4\nadvantage:\n  estimator: grpo\n"
PARTIAL_METRICS = {
    1: {"rollout": {"generated_tokens": 100.0}, "grade": {"reward_mean": 0.25}, "train": {"clipfrac": 0.1}},
    2: {"rollout": {"generated_tokens": 300.0}, "grade": {"reward_mean": 0.5}, "train": {"clipfrac": 0.2}},
    3: {"rollout": {"generated_tokens": 50.0}, "grade": {"reward_mean": 0.75}},
}


def make_partial_run(runs_dir: Path) -> Path:
    """make_run's files without summary.json."""
    root = make_run(
        runs_dir, {"run_id": "run_p", "eval_accuracy": {"0": 0.25, "2": 0.5}}, PARTIAL_CONFIG, PARTIAL_METRICS
    )
    (root / "summary.json").unlink()
    return root


def test_unfinished_run_loads_as_partial_from_its_metrics(tmp_path):
    make_partial_run(tmp_path)
    run = load_run("run_p", tmp_path)
    s = run.summary
    assert (run.run_id, run.preset, run.estimator) == ("run_p", "grpo_small", "grpo")
    assert s["partial"] == {"iterations_completed": 2, "iterations_planned": 4}  # iteration 3 never trained
    assert s["eval_accuracy"] == {"0": 0.25, "2": 0.5}
    assert (s["initial_eval_accuracy"], s["final_eval_accuracy"]) == (0.25, 0.5)
    assert s["generated_tokens"] == 450.0 and s["generated_tokens_at_eval"] == {"0": 0.0, "2": 400.0}
    assert partial_note(run) == "partial (2 of 4 iterations)"
    assert partial_note(load_run("run_a", make_run_dir(tmp_path))) is None
    (row,) = comparison_rows([run])
    assert (row["iterations"], row["status"], row["final_accuracy"]) == (2, "partial (2 of 4 iterations)", 0.5)
    assert "partial (2 of 4 iterations)" in format_table([row]) and "partial (2 of 4" in markdown_table([row])


def make_run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "finished"
    make_run(d, SUMMARY_A, CONFIG_A, METRICS_A)
    return d


def test_report_of_an_unfinished_run_says_partial(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    root = make_partial_run(tmp_path)
    result = CliRunner().invoke(app, ["report", "run_p", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "run_p: partial (2 of 4 iterations), not finished" in result.output
    page = (root / "report.html").read_text()
    assert '<p class="partial"><b>partial (2 of 4 iterations)</b>' in page
    assert "62.5%" not in page and "50.0%" in page  # the final accuracy so far, from eval/0002


def test_an_empty_started_run_is_partial_with_unknown_plan(runs_dir):
    run = load_run("run_c", runs_dir)  # config.yaml only, no iterations (run: {})
    assert partial_note(run) == "partial (0 of ? iterations)" and run.summary["eval_accuracy"] == {}


@pytest.mark.slow
def test_compare_flow_accepts_an_unfinished_run_and_marks_it_partial(prefect_harness, tmp_path):
    from flows.compare import compare

    make_partial_run(tmp_path)
    make_run(tmp_path, SUMMARY_A, CONFIG_A, METRICS_A)
    result = compare(["run_p", "run_a"], str(tmp_path), str(tmp_path / "plots"))
    assert [(r["run_id"], r["status"]) for r in result["runs"]] == [
        ("run_p", "partial (2 of 4 iterations)"),
        ("run_a", "finished"),
    ]
    assert Path(result["plots"]["iteration"]).is_file()


def test_compare_cli_writes_each_comparison_to_its_own_folder(runs_dir, prefect_harness):
    from typer.testing import CliRunner

    from flows.cli_ops import app

    outputs = [
        CliRunner().invoke(app, ["compare", *names, "--runs-dir", str(runs_dir)])
        for names in (["run_a", "run_b"], ["run_a"])
    ]
    for result, folder in zip(outputs, ("run_a+run_b", "run_a")):
        assert result.exit_code == 0, result.output
        assert f"plots: {runs_dir / 'compare' / folder}\n" in result.output
        assert (runs_dir / "compare" / folder / "accuracy_vs_iteration.png").is_file()
