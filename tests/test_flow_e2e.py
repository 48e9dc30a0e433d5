"""The whole rl_train flow through Prefect and the real vLLM CPU engine, then resume behaviour."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs.loader import run_id
from storage.catalog import query
from storage.metric_names import describe, flat

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
STAGES = {
    "prepare_dataset",
    "warm_start",
    "evaluate",
    "generate_rollouts",
    "grade",
    "compute_advantages",
    "train_policy",
}


def unlisted_metrics(runs: Path) -> list[str]:
    """Stored metric names missing from storage/metric_names.py ALL_METRICS (they read as `other/<name>`)."""
    _, rows = query(runs, "select distinct name from metrics")
    return sorted(name for (name,) in rows if describe(name) is None)


def test_flow_end_to_end_then_every_stage_is_a_cache_hit(prefect_harness, live_engine, small_config, tmp_path):
    from flows.rl_train import rl_train

    runs = tmp_path / "runs"
    seen = _flow_run_ids()
    first = rl_train(small_config, str(runs))
    assert first["run_id"] == run_id(small_config) and first["iterations_completed"] == 2
    first_run = _new_flow_run(seen)
    assert set(first["stages_executed"]) == STAGES and first["stages_cached"] == {}
    for key in ("initial_eval_accuracy", "final_eval_accuracy", "wall_seconds", "stage_seconds", "preset", "estimator"):
        assert key in first
    root = runs / first["run_id"]
    assert json.loads((root / "summary.json").read_text())["run_id"] == first["run_id"]
    assert (root / "config.yaml").exists() and (root / "checkpoints" / "0002" / "model.safetensors").exists()

    # Every artifact is queryable; sampler and trainer saw the same weights (log-prob gap ~ 0).
    _, rows = query(runs, "select count(*) from rollouts")
    assert rows == [(2 * 8 * 4,)]
    assert unlisted_metrics(runs) == []
    _, rows = query(
        runs, "select count(*) from grades join advantages using (run_id, iteration, prompt_id, sample_index)"
    )
    assert rows == [(64,)]
    # Correct answers reached through wrong steps (arith): the metric equals a recount from the artifacts.
    _, rows = query(
        runs,
        "select r.iteration, g.status, r.completion_text, p.solution from rollouts r "
        "join grades g using (run_id, iteration, prompt_id, sample_index) "
        "join prompts p using (run_id, prompt_id) where p.split = 'train'",
    )
    from tasks.algos.arith import steps_match

    for it in (1, 2):
        ok = [steps_match(text, sol) for i, status, text, sol in rows if i == it and status == "ok"]
        _, metric = query(
            runs, f"select value from metrics where name = 'reward/frac_ok_wrong_steps' and iteration = {it}"
        )
        assert metric == [(pytest.approx((len(ok) - sum(ok)) / max(1, len(ok))),)]
    _, rows = query(runs, "select max(value) from metrics where name = 'actor/logprob_gap_max'")
    assert rows[0][0] < 1e-3
    # New weights reach the running engine by in-place reload (recorded by whichever stage uses them first).
    _, rows = query(
        runs,
        "select count(*) from metrics "
        "where name in ('perf/weight_load_seconds', 'perf/eval_weight_load_seconds') and value > 0",
    )
    assert rows[0][0] >= 3  # warm start (after the fixture's model), checkpoint 1, checkpoint 2
    _, rows = query(runs, "select preset, final_eval_accuracy from runs")
    assert rows == [("default", first["final_eval_accuracy"])]
    # Health checks ran on each iteration's stored metrics (tasks/algos/health.py).
    from flows.rl_train import health_settings
    from tasks.algos.health import diagnose, eval_regression, record

    expected: dict = {}
    first_metrics: dict = {}
    settings = health_settings(small_config)
    _, ((start,),) = query(runs, "select value from metrics where name = 'eval/accuracy' and iteration = 0")
    for it in (1, 2):
        _, rows = query(runs, f"select name, value from metrics where iteration = {it} and stage <> 'eval'")
        stored = {flat(name): value for name, value in rows}  # the health checks index by flat names
        first_metrics = first_metrics or stored
        record(expected, diagnose(stored, settings, first_metrics), it)
        _, ((acc, n),) = query(
            runs,
            f"select max(value) filter (name = 'eval/accuracy'), "
            f"max(value) filter (name = 'eval/problems') from metrics where iteration = {it}",
        )
        record(expected, eval_regression(start, acc, int(n), settings), it)
    assert first["health"] == expected

    # Report artifacts: a progress bar, the per-iteration table and the summary, keyed by run id.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        kinds = {a.key: a.type for a in client.read_artifacts() if a.key}
    key = "rl-train-" + first["run_id"]
    assert kinds.get(f"{key}-progress") == "progress"
    assert kinds.get(f"{key}-metrics") == "table" and kinds.get(f"{key}-summary") == "markdown"
    _assert_live_artifacts_and_ui_labels(first_run, key, small_config)

    seen = _flow_run_ids()
    second = rl_train(small_config, str(runs))
    assert _new_flow_run(seen).name == first["run_id"] + "#2"  # a rerun of the same segflow run
    assert second["stages_executed"] == {}
    assert set(second["stages_cached"]) == STAGES
    assert second["final_eval_accuracy"] == first["final_eval_accuracy"] and second["health"] == first["health"]
    assert second["compute_seconds"] == first["compute_seconds"] and first["compute_seconds"]["train_policy"] > 0

    # A deleted artifact is recomputed (only that stage: its content is identical, so downstream stays cached).
    (root / "iterations" / "0002" / "grades.parquet").unlink()
    third = rl_train(small_config, str(runs))
    assert third["stages_executed"] == {"grade": 1}
    assert (root / "iterations" / "0002" / "grades.parquet").exists()


def _flow_run_ids() -> set:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {r.id for r in client.read_flow_runs()}


def _new_flow_run(seen: set):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        (run,) = [r for r in client.read_flow_runs() if r.id not in seen]
    return run


def _assert_live_artifacts_and_ui_labels(flow_run, key: str, cfg) -> None:
    """The UI's view of one rl_train flow run: name = run id, tags, task runs named by iteration, and one
    table and one plot version per executed iteration (published live, not only at the end)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    assert flow_run.name == run_id(cfg)
    assert {"preset:default", f"estimator:{cfg.advantage.estimator}", "task:arith", "model:tiny"} <= set(flow_run.tags)
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    names = {t.name for t in tasks}
    assert {"prepare_dataset", "warm_start", "evaluate[it=0]", "generate_rollouts[it=1]", "train_policy[it=2]"} <= names
    tables = sorted((a for a in arts if a.key == f"{key}-metrics"), key=lambda a: a.created)
    rows = [json.loads(a.data) if isinstance(a.data, str) else a.data for a in tables]
    assert [[r["iteration"] for r in t] for t in rows] == [[1], [1, 2]]  # after iteration 1 already, then updated
    assert {"reward/mean", "actor/clipfrac", "eval/accuracy"} <= set(rows[-1][-1])  # namespaced columns
    plots = [a for a in arts if a.key == f"{key}-accuracy"]
    assert len(plots) == 2 and all(a.type == "image" and a.data.startswith("data:image/png;base64,") for a in plots)


def test_a_fail_on_finding_stops_the_run_and_a_rerun_without_it_resumes(prefect_harness, live_engine, tmp_path):
    from configs.loader import resolve
    from flows.rl_train import rl_train
    from tasks.algos.health import HealthCheckFailed
    from tests.conftest import SMALL

    # 4 tokens cut every response short: `truncated` fires in iteration 1.
    strict = resolve("default", overrides=SMALL + ["rollout.max_tokens=4", "health.fail_on=[truncated]"])
    runs = tmp_path / "runs"
    with pytest.raises(HealthCheckFailed, match=r"iteration 1: health check truncated .*rollout.max_tokens=4"):
        rl_train(strict, str(runs))
    root = runs / run_id(strict)
    assert (root / "checkpoints" / "0001" / "model.safetensors").exists()
    assert not (root / "iterations" / "0002").exists() and not (root / "summary.json").exists()

    warn_only = resolve("default", overrides=SMALL + ["rollout.max_tokens=4"])
    assert run_id(warn_only) == run_id(strict)
    done = rl_train(warn_only, str(runs))
    assert done["stages_cached"]["train_policy"] == 1 and done["stages_executed"]["train_policy"] == 1
    assert done["health"]["truncated"]["iterations"] == [1, 2]


def _segflow(args, env, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_killed_run_resumes_from_last_completed_stage(tmp_path):
    from tests.conftest import SMALL

    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        "PYTHONPATH": str(ROOT),
    }
    args = ["--runs-dir", str(tmp_path / "runs")] + [a for s in SMALL + ["run.iterations=4"] for a in ("--set", s)]
    proc = _segflow(args, env, start_new_session=True)
    deadline = time.time() + 600
    marker = None
    while time.time() < deadline and proc.poll() is None:
        # iteration 3's rollouts exist only after train_policy(2) returned and its cache record was written
        found = list((tmp_path / "runs").glob("*/iterations/0003/rollouts.parquet"))
        if found:
            marker = found[0]
            break
        time.sleep(0.2)
    assert marker is not None, f"iteration 3 never started; stderr: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = marker.parent.parent.parent
    assert not (run_dir / "summary.json").exists()

    resumed = _segflow(args, env)
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations_completed"] == 4
    cached, executed = summary["stages_cached"], summary["stages_executed"]
    assert cached["prepare_dataset"] == 1 and cached["warm_start"] == 1
    assert cached["train_policy"] >= 2  # iterations 1 and 2 finished before the kill
    assert executed["train_policy"] <= 2


def test_spo_chain_flow_end_to_end(prefect_harness, live_engine, tmp_path):
    from configs.loader import resolve
    from flows.rl_train import rl_train
    from tests.conftest import SMALL

    cfg = resolve("spo_chain", overrides=SMALL + ["spo.mc_samples=2", "spo.interval=1"])
    runs = tmp_path / "runs"
    summary = rl_train(cfg, str(runs))
    assert summary["stages_executed"]["spo_values"] == 2 and summary["estimator"] == "spo_chain"
    assert unlisted_metrics(runs) == []
    # Segments tile every response: they start at 0, are contiguous, and end at its last token.
    _, rows = query(
        runs,
        "select r.prompt_id, r.sample_index, len(r.completion_token_ids), "
        "list(s.start_token order by s.segment_index), list(s.end_token order by s.segment_index) "
        "from rollouts r join segments s using (run_id, iteration, prompt_id, sample_index) "
        "group by all",
    )
    assert rows
    for _, _, n, starts, ends in rows:
        assert starts[0] == 0 and ends[-1] == n and starts[1:] == ends[:-1]
    # The last segment closes with the response's own reward; MC values come from N=2 graded continuations.
    _, rows = query(
        runs,
        "select count(*) from segments s join grades g using (run_id, iteration, prompt_id, "
        "sample_index) where s.end_token = (select max(end_token) from segments x where "
        "x.run_id = s.run_id and x.iteration = s.iteration and x.prompt_id = s.prompt_id and "
        "x.sample_index = s.sample_index) and s.v_end is distinct from g.score",
    )
    assert rows == [(0,)]
    _, rows = query(
        runs, "select count(*), count(distinct prefix_id), min(sample_index), max(sample_index) from mc_rollouts"
    )
    assert rows[0][0] == 2 * rows[0][1] and rows[0][0] > 0 and rows[0][2:] == (0, 1)
    _, rows = query(
        runs,
        "select count(*) from segment_advantages a join segments s using "
        "(run_id, iteration, prompt_id, sample_index, segment_index)",
    )
    assert rows[0][0] > 0
    _, rows = query(runs, "select min(value) from metrics where name = 'spo/mc_generated_tokens'")
    assert rows[0][0] > 0
    # Each segment lists its cutpoints; with interval 1 every segment after the first starts at one.
    _, rows = query(runs, "select segment_index, start_token, end_token, num_cutpoints, cutpoints from segments")
    assert all(len(c) == k and all(a <= i < b for i in c) for _, a, b, k, c in rows)
    assert all(c and c[0] == a for j, a, _, _, c in rows if j > 0)
    _, rows = query(
        runs,
        "select iteration, max(value) filter (name = 'spo/mc_rollouts'), "
        "max(value) filter (name = 'spo/mc_dedup_savings'), "
        "max(value) filter (name = 'spo/mc_prefixes_unique') / max(value) filter (name = 'spo/mc_prefixes'), "
        "max(value) filter (name = 'spo/mc_tokens_per_trained_token'), "
        "(select count(*) from mc_rollouts m where m.iteration = x.iteration) "
        "from metrics x where iteration > 0 group by 1 order by 1",
    )
    assert [r[0] for r in rows] == [1, 2]
    for _, mc, saved, unique_share, per_trained, recorded in rows:
        assert mc == recorded and saved == pytest.approx(1 - unique_share) and per_trained > 0

    # The segments view: a markdown artifact per iteration, and `segflow segments` in the terminal.
    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    from flows.artifact_keys import artifact_key
    from flows.cli import app

    with get_client(sync_client=True) as client:
        key = artifact_key("rl-train", summary["run_id"]) + "-segments"
        views = [a for a in client.read_artifacts() if a.key == key]
    assert len(views) == 2 and all("⟦" in a.data and "A trained" in a.data for a in views)
    res = CliRunner().invoke(app, ["segments", summary["run_id"], "--runs-dir", str(runs), "--n", "3"])
    assert res.exit_code == 0, res.output
    assert f"{summary['run_id']}, iteration 2:" in res.output and res.output.count("segment") >= 3
    assert "⟦" in res.output and "V start -> end" in res.output


def test_spo_chain_trains_its_monte_carlo_continuations(prefect_harness, live_engine, tmp_path):
    from configs.loader import resolve
    from flows.rl_train import rl_train
    from tests.conftest import SMALL

    cfg = resolve(
        "spo_chain", overrides=SMALL + ["run.iterations=1", "spo.mc_samples=4", "spo.interval=1", "spo.mc_train=true"]
    )
    runs = tmp_path / "runs"
    summary = rl_train(cfg, str(runs))
    # Each trained continuation is one segment over its own tokens, from V(prefix) = the mean grade of the
    # prefix's 4 continuations to its own grade, and only where the two differ.
    _, rows = query(
        runs,
        "with v as (select prefix_id, avg(score) as v from mc_rollouts group by 1) "
        "select s.start_token, s.end_token, len(m.completion_token_ids), len(m.sampling_logprobs), "
        "s.v_start, v.v, s.v_end, m.score, s.n_start, "
        "m.prefix_token_ids[len(m.prefix_token_ids) - m.prefix_tokens + 1:] "
        "from segments s join mc_rollouts m using (run_id, iteration, prefix_id, sample_index) "
        "join v using (prefix_id) where s.prefix_id is not null",
    )
    assert rows
    for start, end, n, n_lp, v_start, v, v_end, score, n_start, response_prefix in rows:
        assert (start, end) == (0, n) and n_lp == n and n_start == 4
        assert v_start == pytest.approx(v) and v_end == score and v_end != v_start and len(response_prefix) >= 1
    _, skipped = query(
        runs,
        "with v as (select prefix_id, avg(score) as v, count(*) as n from mc_rollouts group by 1) "
        "select count(*) from mc_rollouts m join v using (prefix_id) where m.score = v.v",
    )
    assert skipped[0][0] > 0  # prefixes whose continuations all agree carry no signal and do not train
    # They train beside the responses, in as many optimiser steps as the responses alone would take.
    _, metrics = query(
        runs,
        "select name, value from metrics where iteration = 1 and name in "
        "('spo/mc_trained_samples', 'actor/samples', 'actor/optimizer_steps')",
    )
    m = {flat(name): value for name, value in metrics}
    _, responses = query(runs, "select count(*) from rollouts where len(completion_token_ids) > 0")
    assert m["mc_trained_samples"] == len(rows) and m["train_samples"] == responses[0][0] + len(rows)
    assert (
        m["optimizer_steps"]
        == -(-cfg.rollout.prompts_per_iteration * cfg.rollout.samples_per_prompt // cfg.train.mini_batch_size)
        * cfg.train.epochs
    )
    # `segflow segments` still draws the responses alone.
    from typer.testing import CliRunner

    from flows.cli import app

    res = CliRunner().invoke(app, ["segments", summary["run_id"], "--runs-dir", str(runs), "--n", "2"])
    assert res.exit_code == 0 and "iteration 1:" in res.output, res.output


def test_spo_chain_adaptive_n_tops_up_only_prefixes_whose_first_samples_disagree(
    prefect_harness, live_engine, tmp_path
):
    from configs.loader import resolve
    from flows.rl_train import rl_train
    from tests.conftest import SMALL

    cfg = resolve(
        "spo_chain",
        overrides=SMALL + ["run.iterations=1", "spo.mc_samples=4", "spo.mc_samples_min=2", "spo.interval=1"],
    )
    runs = tmp_path / "runs"
    rl_train(cfg, str(runs))
    _, rows = query(
        runs,
        "select prefix_id, list(sample_index order by sample_index), "
        "list(score order by sample_index) from mc_rollouts group by 1",
    )
    settled = topped = 0
    for _, index, scores in rows:
        assert index in ([0, 1], [0, 1, 2, 3])
        first_agree = scores[0] == scores[1] and all(x == x for x in scores[:2])  # equal and not NaN
        assert first_agree == (len(index) == 2)  # the second stage runs exactly where the first two disagree
        settled, topped = settled + (len(index) == 2), topped + (len(index) == 4)
    assert settled and topped
    # V at a boundary inside a response is the mean of the samples its prefix got, with their count.
    _, counts = query(runs, "select distinct n_start from segments where start_token > 0")
    assert {c for (c,) in counts} == {2, 4}
    _, metric = query(runs, "select value from metrics where name = 'spo/mc_settled_early' and iteration = 1")
    assert metric == [(pytest.approx(settled / (settled + topped)),)]


def test_spo_tree_flow_end_to_end_and_replay_buffer_resume(prefect_harness, live_engine, tmp_path):
    from configs.loader import resolve
    from flows.rl_train import rl_train
    from storage.handles import digest
    from tests.conftest import SMALL

    cfg = resolve(
        "spo_tree",
        overrides=SMALL
        + [
            "run.iterations=3",
            "rollout.prompts_per_iteration=4",
            "tree.branching=[3,2,2]",
            "tree.edges_per_question=6",
            "tree.buffer_age=2",
        ],
    )
    runs = tmp_path / "runs"
    summary = rl_train(cfg, str(runs))
    assert summary["stages_executed"]["tree_rollouts"] == 3 and "generate_rollouts" not in summary["stages_executed"]
    assert unlisted_metrics(runs) == []
    # Trees: the root's children tile the response; a leaf's response is its ancestors' tokens + its own.
    _, rows = query(
        runs,
        "select count(*) filter (where depth = 0), count(*) filter (where depth = 1), "
        "count(*) filter (where is_leaf and not isfinite(score)) from tree_nodes where iteration = 1",
    )
    assert rows == [(4, 4 * 3, 0)]
    _, rows = query(
        runs,
        "select count(*) from tree_nodes c join tree_nodes p on p.node_id = c.parent_id "
        "and p.iteration = c.iteration where c.token_start <> p.token_end",
    )
    assert rows == [(0,)]
    # Interior nodes filled a full M-token segment; truncated leaves score the penalty, never a grade.
    _, rows = query(runs, "select count(*) from tree_nodes where depth > 0 and not is_leaf and len(token_ids) <> 8")
    assert rows == [(0,)]
    _, rows = query(
        runs,
        "select count(*) from tree_nodes where is_leaf and finish_reason = 'length' "
        "and (status <> 'truncated' or score <> 0)",
    )
    assert rows == [(0,)]
    # Every trained edge was kept, is at most buffer_age - 1 old, and no question gives more than 6 per iteration.
    _, rows = query(
        runs,
        "select count(*) from train_edges e left join tree_advantages a on a.node_id = e.node_id "
        "and a.iteration = e.added_iteration where a.kept is distinct from true or e.age >= 2",
    )
    assert rows == [(0,)]
    _, rows = query(runs, "select max(n) from (select iteration, prompt_id, count(*) n from train_edges group by all)")
    assert rows[0][0] is None or rows[0][0] <= 6

    # Resume: a lost buffer state is rebuilt byte for byte from its inputs, and nothing downstream reruns.
    root = runs / summary["run_id"]
    state = root / "iterations" / "0002" / "replay_buffer.parquet"
    before = digest(state), digest(root / "iterations" / "0003" / "train_edges.parquet")
    state.unlink()
    (root / "iterations" / "0002" / "train_edges.parquet").unlink()
    again = rl_train(cfg, str(runs))
    assert again["stages_executed"] == {"replay_buffer": 1}
    assert (digest(state), digest(root / "iterations" / "0003" / "train_edges.parquet")) == before

    # The run compared (table, plots as image artifacts the UI draws from data URIs) and reported in HTML.
    from prefect.client.orchestration import get_client

    from flows.artifact_keys import artifact_key
    from flows.compare import compare
    from flows.html_report import write_report
    from flows.run_plots import load_run

    result = compare([summary["run_id"]], str(runs), str(tmp_path / "plots"))
    assert result["runs"][0]["run_id"] == summary["run_id"] and set(result["plots"]) == {
        "iteration",
        "tokens",
        "seconds",
    }
    with get_client(sync_client=True) as client:
        key = artifact_key("compare", summary["run_id"])
        images = [a for a in client.read_artifacts() if a.type == "image" and (a.key or "").startswith(key)]
    assert len(images) == 3 and all(a.data.startswith("data:image/png;base64,") for a in images)
    html = write_report(load_run(summary["run_id"], runs), tmp_path / "report.html").read_text()
    assert summary["run_id"] in html and "data:image/png;base64," in html


def test_eval_flow_metrics_resume_and_sql(prefect_harness, live_engine, tiny_model_dir, tmp_path):
    import shutil

    from flows.evaluate import EvalSpec, evaluate

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    spec = EvalSpec(
        checkpoints=(str(tiny_model_dir), str(other)), samples=2, limit=6, budgets=(64, 96), price_in=0.5, price_out=2.0
    )
    runs = tmp_path / "runs"
    first = evaluate(spec, str(runs))
    assert first["cells_executed"] == 4 and len(first["cells"]) == 4
    assert {(c["checkpoint"], c["budget"]) for c in first["cells"]} == {
        (n, b) for n in ("model", "other") for b in (64, 96)
    }
    assert all(c["problems"] == 6 and c["k"] == 2 and "pass_at_2" in c for c in first["cells"])
    # Identical weights, identical seeds: identical answers, so the paired difference is exactly 0.
    assert all(x["greedy"]["mean_diff"] == 0 and x["greedy"]["p_value"] == 1 for x in first["comparisons"])
    _, rows = query(
        runs,
        "select checkpoint, budget, count(*), max(prompt_tokens + num_tokens) from eval_samples "
        "group by all order by 1, 2",
    )
    assert [r[:3] for r in rows] == [("model", 64, 18), ("model", 96, 18), ("other", 64, 18), ("other", 96, 18)]
    assert all(r[3] <= r[1] for r in rows)  # the budget bounds prompt + answer
    again = evaluate(spec, str(runs))
    assert again["cells_executed"] == 0 and again["cells"] == first["cells"]


def test_crashes_inside_a_parquet_write_and_a_checkpoint_save_resume_to_identical_results(tmp_path):
    """SIGKILL at two fault points (storage/faults.py), rerun, and compare with an uninterrupted run."""
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import load_file

    from tests.conftest import SMALL

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    args = [a for s in SMALL for a in ("--set", s)]

    def run(runs: str, crash_at: str | None) -> int:
        e = {**env, **({"SEGFLOW_CRASH_AT": crash_at} if crash_at else {})}
        proc = _segflow(["--runs-dir", str(tmp_path / runs), *args], e, start_new_session=True)
        proc.wait(timeout=900)
        try:  # a killed run's temporary Prefect server (it holds our stderr pipe) dies with it, as on a real crash
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
        return proc.returncode

    assert run("ref", None) == 0
    assert run("crash", "parquet_write:9") == -signal.SIGKILL  # inside a write after the warm start
    assert run("crash", "checkpoint_save:1") == -signal.SIGKILL  # inside the first checkpoint it saves
    assert run("crash", None) == 0
    ref, got = (next((tmp_path / r).glob("*/summary.json")).parent for r in ("ref", "crash"))
    assert not [p for p in got.rglob("*") if p.name.endswith((".tmp", ".old"))]  # swept on resume
    for name in ("rollouts", "grades", "advantages"):
        for f in sorted(ref.glob(f"iterations/*/{name}.parquet")):
            assert pq.read_table(f).equals(pq.read_table(got / f.relative_to(ref))), f
    for f in sorted(ref.glob("checkpoints/*/model.safetensors")):
        a, b = load_file(str(f)), load_file(str(got / f.relative_to(ref)))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), f
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, got))
    assert sa["eval_accuracy"] == sb["eval_accuracy"] and sb["stages_cached"]["warm_start"] == 1


def test_a_failed_stage_is_reported_to_the_webhook(prefect_harness, tmp_path, monkeypatch):
    import http.server
    import threading

    from configs.loader import resolve
    from flows.rl_train import rl_train

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SEGFLOW_NOTIFY_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
    overrides = ["data.task=gsm8k", f"data.source={tmp_path / 'missing'}"]
    cfg = resolve("default", overrides=overrides)
    try:
        with pytest.raises(Exception, match="missing"):
            rl_train(cfg, str(tmp_path / "runs"))
        # Through the deployment entry point: the rl_train subflow reports, its parent `train` does not repeat it.
        from flows.deploy import train

        with pytest.raises(Exception, match="missing"):
            train(preset="default", overrides=overrides, runs_dir=str(tmp_path / "runs"))
    finally:
        server.shutdown()
    assert len(received) == 2
    for body in received:
        assert body["flow"] == "rl_train" and body["stage"] == "prepare_dataset"
        assert "missing" in body["error"] and body["run_dir"] == str(tmp_path / "runs" / run_id(cfg))
        assert body["text"].startswith("segflow rl_train failed in prepare_dataset")


def test_prefect_flow_run_retry_reruns_only_the_failed_stage_onward(tmp_path):
    """A stage fails (injected); `prefect flow-run retry` re-runs the flow run: finished stages are cache hits."""
    from tests.conftest import SMALL

    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(ROOT),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    runs = tmp_path / "runs"
    code = f"from flows.deploy import train\ntrain(preset='default', overrides={SMALL!r}, runs_dir={str(runs)!r})"
    failed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "SEGFLOW_FAIL_AT": "stage:grade:2"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert failed.returncode != 0 and "injected failure at stage:grade" in failed.stderr
    ls = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    print([r.id for r in c.read_flow_runs() if r.name and r.state_type.value == 'FAILED'"
            " and r.parent_task_run_id is None][0])",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    flow_run_id = ls.stdout.strip().splitlines()[-1]
    retry = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "retry", flow_run_id, "--entrypoint", "flows/deploy.py:train"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert retry.returncode == 0, retry.stderr[-3000:]
    summary = json.loads(next(runs.glob("*/summary.json")).read_text())
    assert summary["iterations_completed"] == 2
    cached, executed = summary["stages_cached"], summary["stages_executed"]
    assert cached["warm_start"] == 1 and cached["generate_rollouts"] == 2 and cached["grade"] == 1
    assert executed == {"grade": 1, "compute_advantages": 1, "train_policy": 1, "evaluate": 1}
