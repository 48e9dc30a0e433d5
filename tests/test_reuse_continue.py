"""Issue 31 item 6: a warm start shared by every run of a runs directory with the same inputs, and a run
continued by raising run.iterations (an execution key; a linear schedule's horizon has its own key)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from configs.loader import load_run_config, resolve, run_id, to_yaml
from storage.layout import TABLE_GLOBS, RunLayout
from storage.metrics import read_metrics
from storage.parquet import read_parquet
from storage.schemas import RUNS
from storage.shared import build_once, link

# --- run.iterations is an execution key; a linear schedule's horizon is not ---------------------------------


def test_raising_run_iterations_keeps_the_run_id():
    assert run_id(resolve("default", overrides=["run.iterations=2"])) == run_id(
        resolve("default", overrides=["run.iterations=3"])
    )


def test_a_linear_schedule_takes_its_horizon_from_run_iterations_into_the_run_id():
    two, three = (resolve("default", overrides=[f"run.iterations={n}", "train.schedule=linear"]) for n in (2, 3))
    assert (two.train.schedule_iterations, three.train.schedule_iterations) == (2, 3)
    assert run_id(two) != run_id(three)


def test_a_linear_schedule_with_its_horizon_set_keeps_the_run_id_when_run_iterations_changes():
    two, three = (
        resolve("default", overrides=[f"run.iterations={n}", "train.schedule=linear", "train.schedule_iterations=8"])
        for n in (2, 3)
    )
    assert run_id(two) == run_id(three) and two.train.schedule_iterations == 8


def test_a_constant_schedule_leaves_the_horizon_unset():
    assert resolve("default", overrides=["run.iterations=5"]).train.schedule_iterations is None


def test_a_saved_config_without_the_horizon_key_still_loads(tmp_path):
    """config.yaml of a run made before train.schedule_iterations existed: it loads, and a linear schedule's
    horizon is that run's own run.iterations."""
    data = yaml.safe_load(to_yaml(resolve("default", overrides=["run.iterations=6", "train.schedule=linear"])))
    del data["train"]["schedule_iterations"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_run_config(path)
    assert cfg.run.iterations == 6 and cfg.train.schedule_iterations == 6


def test_linear_lr_reaches_zero_at_the_horizon_not_at_run_iterations():
    """The trainer's schedule length is train.schedule_iterations x steps per iteration (tasks/train.py)."""
    import torch

    from tasks.trainer import make_scheduler

    cfg = resolve("default", overrides=["run.iterations=4", "train.schedule=linear", "train.schedule_iterations=2"])
    steps_per_iter = 3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg.train, (cfg.train.schedule_iterations or 0) * steps_per_iter)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


# --- build_once / link ---------------------------------------------------------------------------------------


def test_build_once_builds_a_missing_directory_then_reuses_it(tmp_path):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "w.txt").write_text("weights")

    dest = tmp_path / "shared" / "warm_start" / "k"
    assert build_once(dest, build) is True
    assert build_once(dest, build) is False
    assert len(calls) == 1 and (dest / "w.txt").read_text() == "weights"
    assert calls[0] != dest  # built aside, renamed into place


def test_a_second_builder_at_the_same_time_waits_and_reuses_the_first_ones_directory(tmp_path):
    dest = tmp_path / "k"
    started, built, results = threading.Event(), [], {}

    def slow(out: Path) -> None:
        started.set()
        time.sleep(0.5)
        built.append("slow")
        (out / "w.txt").write_text("first")

    def fast(out: Path) -> None:
        built.append("fast")
        (out / "w.txt").write_text("second")

    a = threading.Thread(target=lambda: results.setdefault("a", build_once(dest, slow)))
    a.start()
    assert started.wait(10)
    results["b"] = build_once(dest, fast)  # the lock is held by `a` while it builds
    a.join()
    assert results == {"a": True, "b": False} and built == ["slow"]
    assert (dest / "w.txt").read_text() == "first"


def test_build_once_removes_what_a_killed_builder_left(tmp_path):
    dest = tmp_path / "k"
    left = tmp_path / ".k.0badc0de.tmp"
    left.mkdir()
    (left / "half.bin").write_text("x")
    other = tmp_path / ".other.0badc0de.tmp"  # another key's builder may be alive: not ours to remove
    other.mkdir()
    build_once(dest, lambda out: (out / "w.txt").write_text("w"))
    assert not left.exists() and other.exists() and (dest / "w.txt").exists()


def test_link_makes_a_relative_symlink_replacing_an_old_directory(tmp_path):
    target = tmp_path / "shared" / "warm_start" / "k"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    path = tmp_path / "run" / "models" / "warm_start"
    path.mkdir(parents=True)
    (path / "config.json").write_text("old")
    link(path, target)
    assert os.readlink(path) == "../../shared/warm_start/k" and (path / "config.json").read_text() == "{}"
    other = tmp_path / "shared" / "warm_start" / "k2"
    other.mkdir()
    link(path, other)
    assert path.resolve() == other.resolve()


# --- the shared directory is not a run ------------------------------------------------------------------------


def test_the_shared_directory_is_no_run_to_the_catalog_and_the_cli(tmp_path):
    from flows.cli import _has_runs
    from storage.catalog import query

    runs = tmp_path / "runs"
    shared = RunLayout(runs_dir=str(runs), run_id="x").shared_warm_start("0123456789abcdef")
    shared.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        (shared / name).write_text("{}")
    (shared / "warm_start.json").write_text(json.dumps({"inputs": {}, "metrics": {}}))
    assert [p for p in TABLE_GLOBS.values() if list(runs.glob(p))] == []
    assert not _has_runs(runs)
    counts = [query(runs, f"select count(*) from {name}")[1][0][0] for name in (*TABLE_GLOBS, "health")]
    assert counts == [0] * (len(TABLE_GLOBS) + 1)


# --- the warm_start stage --------------------------------------------------------------------------------------

FAST = ["data.arith.n_train=64", "data.arith.n_test=8", "warm_start.steps=3", "warm_start.batch_size=8"]


def _warm_start(cfg, runs: Path):
    from tasks.prepare import prepare_dataset, warm_start

    layout = RunLayout(runs_dir=str(runs), run_id=run_id(cfg))
    data = prepare_dataset.fn(cfg, layout, "v")
    return layout, warm_start.fn(cfg, layout, data.train, "v")


def test_two_presets_with_the_same_sft_inputs_share_one_warm_start(tmp_path):
    runs = tmp_path / "runs"
    grpo, rloo = resolve("default", overrides=FAST), resolve("rloo", overrides=FAST)
    first_layout, first = _warm_start(grpo, runs)
    second_layout, second = _warm_start(rloo, runs)
    assert first_layout.run_id != second_layout.run_id
    assert first.artifact == second.artifact  # same directory, same content
    assert Path(first.artifact.path).parent == runs / "shared" / "warm_start"
    for layout in (first_layout, second_layout):  # each run links it where a run's warm start always was
        assert layout.warm_start.resolve() == Path(first.artifact.path).resolve()
    m1, m2 = read_metrics(first.metrics), read_metrics(second.metrics)
    assert Path(first.metrics.path).is_relative_to(first_layout.root)
    assert Path(second.metrics.path).is_relative_to(second_layout.root)  # metrics stay per run
    assert (m1["sft_reused"], m2["sft_reused"]) == (0.0, 1.0)
    assert {k: v for k, v in m1.items() if k != "sft_reused"} == {k: v for k, v in m2.items() if k != "sft_reused"}
    record = json.loads((Path(first.artifact.path) / "warm_start.json").read_text())
    assert record["inputs"]["seed"] == 0 and record["inputs"]["warm_start"]["steps"] == 3


def test_another_seed_or_sft_setting_gets_its_own_warm_start(tmp_path):
    runs = tmp_path / "runs"
    _, base = _warm_start(resolve("default", overrides=FAST), runs)
    _, seeded = _warm_start(resolve("default", overrides=FAST + ["run.seed=1"]), runs)
    _, longer = _warm_start(resolve("default", overrides=FAST + ["warm_start.steps=4"]), runs)
    assert len({base.artifact.path, seeded.artifact.path, longer.artifact.path}) == 3
    assert read_metrics(longer.metrics)["sft_reused"] == 0.0


# --- through the flow ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_longer_run_continues_its_run_and_another_preset_reuses_its_warm_start(
    prefect_harness, live_engine, tmp_path
):
    from flows.rl_train import rl_train
    from tests.conftest import SMALL

    runs = tmp_path / "runs"
    base = [s for s in SMALL if not s.startswith(("run.iterations=", "eval.every="))] + ["eval.every=10"]
    two = rl_train(resolve("default", overrides=base + ["run.iterations=2"]), str(runs))
    row = runs / two["run_id"] / "run.parquet"
    created = read_parquet(row, RUNS)["created_at"][0].as_py()
    three = rl_train(resolve("default", overrides=base + ["run.iterations=3"]), str(runs))
    # The runs table holds the continued config, and the run keeps the time it was created.
    (after,) = read_parquet(row, RUNS).to_pylist()
    assert (json.loads(after["config_json"])["run"]["iterations"], after["created_at"]) == (3, created)
    assert three["run_id"] == two["run_id"] and three["iterations_completed"] == 3
    cached, executed = three["stages_cached"], three["stages_executed"]
    assert cached["prepare_dataset"] == cached["warm_start"] == 1
    assert cached["generate_rollouts"] == cached["train_policy"] == 2 and executed["train_policy"] == 1
    # Evaluations: the 2-iteration run's last one (kept, a cache hit) and the new end; none in between.
    assert (set(two["eval_accuracy"]), set(three["eval_accuracy"])) == ({"0", "2"}, {"0", "2", "3"})
    assert cached["evaluate"] == 2 and executed["evaluate"] == 1
    assert three["eval_accuracy"]["2"] == two["eval_accuracy"]["2"]
    assert (runs / two["run_id"] / "checkpoints" / "0003" / "model.safetensors").exists()

    other = rl_train(resolve("rloo", overrides=base + ["run.iterations=1"]), str(runs))
    assert other["run_id"] != two["run_id"]
    warm = [runs / s["run_id"] / "models" / "warm_start" for s in (two, other)]
    assert (
        warm[0].resolve() == warm[1].resolve()
        and warm[0].resolve().parent == (runs / "shared" / "warm_start").resolve()
    )
    assert (
        read_metrics(runs / other["run_id"] / "iterations" / "0000" / "metrics-warm_start.parquet")["sft_reused"] == 1
    )
    assert other["initial_eval_accuracy"] == two["initial_eval_accuracy"]
