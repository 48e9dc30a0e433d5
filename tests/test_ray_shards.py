"""rollout.shards: requests split across Ray engine actors give the single engine's results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from configs.loader import resolve, run_id
from tasks.engines.base import Request
from tasks.engines.ray_engine import prompt_groups, shard_requests, split_contiguous

ROOT = Path(__file__).resolve().parent.parent


def test_split_contiguous_balances_in_order_and_never_leaves_a_run_empty():
    assert split_contiguous([1] * 8, 2) == [(0, 4), (4, 8)]
    assert split_contiguous([6, 1, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 7)]
    assert split_contiguous([1, 1, 1, 1, 1, 1, 6], 2) == [(0, 6), (6, 7)]
    assert split_contiguous([1, 1], 4) == [(0, 1), (1, 2)]
    assert split_contiguous([5, 0, 0], 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_contiguous([], 2) == []
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 50, rng.integers(1, 30)).tolist()
        parts = int(rng.integers(1, 6))
        runs = split_contiguous(sizes, parts)
        assert len(runs) == min(parts, len(sizes))
        assert runs[0][0] == 0 and runs[-1][1] == len(sizes) and all(a < b for a, b in runs)
        assert all(runs[i][1] == runs[i + 1][0] for i in range(len(runs) - 1))


def test_requests_of_one_prompt_stay_on_one_engine():
    reqs = [Request([1, p], seed=i, max_tokens=8) for i, p in enumerate([3, 3, 3, 4, 4, 5, 5, 5, 5, 6])]
    assert prompt_groups(reqs) == [(0, 3), (3, 5), (5, 9), (9, 10)]
    ranges = shard_requests(reqs, 2)
    assert ranges == [(0, 5), (5, 10)]
    assert shard_requests(reqs[:3], 2) == [(0, 3)]  # one prompt: one engine, however many samples


def test_execution_keys_change_neither_the_run_id_nor_stage_cache_keys():
    from prefect.utilities.hashing import hash_objects

    from configs.schema import without_execution_keys

    one = resolve("default")
    two = resolve("default", overrides=["rollout.shards=2", "rollout.ray_address=auto", "train.timeout_seconds=60"])
    assert run_id(one) == run_id(two) and two.rollout.shards == 2
    assert hash_objects({"cfg": without_execution_keys(two)}) == hash_objects({"cfg": one})
    assert run_id(resolve("default", overrides=["rollout.max_tokens=40"])) != run_id(one)
    # The stages' policy keeps its Config-aware inputs part (Prefect swaps plain Inputs subclasses out).
    from tasks.common import STAGE, StageInputs

    policy = next(p for p in STAGE["cache_policy"].policies if isinstance(p, StageInputs))
    key = policy.compute_key(None, {"cfg": two, "x": 1}, {})
    assert (
        key == policy.compute_key(None, {"cfg": one, "x": 1}, {}) != policy.compute_key(None, {"cfg": one, "x": 2}, {})
    )
    # A section passed on its own (`segflow eval` hands its cells a RolloutSection) is hashed the same way.
    section = policy.compute_key(None, {"rollout": two.rollout}, {})
    assert section == policy.compute_key(None, {"rollout": one.rollout}, {})
    assert section != policy.compute_key(None, {"rollout": one.rollout.model_copy(update={"top_p": 0.5})}, {})


def test_eval_shards_are_not_part_of_the_eval_id():
    from flows.evaluate import EvalSpec

    one = EvalSpec(checkpoints=("a",), samples=2)
    assert EvalSpec(checkpoints=("a",), samples=2, shards=4, ray_address="auto").eval_id() == one.eval_id()
    assert EvalSpec(checkpoints=("a",), samples=3).eval_id() != one.eval_id()


@pytest.mark.slow
def test_two_ray_engines_generate_and_reload_like_one(tiny_model_dir, tmp_path):
    from configs.schema import RolloutSection, TinyModelSection
    from tasks import tiny_model
    from tasks.engines.live import get_engine, reusable
    from tasks.engines.ray_engine import ShardedEngine

    # The process-wide engine as it is now (an earlier test may have replaced the session fixture's).
    live_engine, _ = get_engine(tiny_model_dir, RolloutSection(), "float32", 0)

    reqs = [Request([5 + p, 7, 9], seed=100 + i, max_tokens=16) for p in range(6) for i in range(4)]

    def same(a, b):
        assert [c.token_ids for c in a] == [c.token_ids for c in b]
        assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)

    live_engine.load_weights(tiny_model_dir)
    sharded = ShardedEngine(str(tiny_model_dir), RolloutSection(shards=2), "float32", 0)
    try:
        assert sharded.start_seconds > 0 and sharded.compatible(RolloutSection(shards=2), "float32")
        assert not sharded.compatible(RolloutSection(), "float32")
        assert not reusable(live_engine, tiny_model_dir, RolloutSection(shards=2), "float32")  # the registry's class
        same(sharded.generate(reqs, temperature=1.0, top_p=0.9), live_engine.generate(reqs, temperature=1.0, top_p=0.9))
        # New weights reach both actors in place and they still agree with the single engine.
        tok = tiny_model.build_tokenizer()
        tiny_model.save(tiny_model.build_model(TinyModelSection(), len(tok), seed=7), tok, tmp_path / "perturbed")
        assert sharded.load_weights(tmp_path / "perturbed") > 0 and sharded.load_weights(tmp_path / "perturbed") == 0
        live_engine.load_weights(tmp_path / "perturbed")
        same(sharded.generate(reqs, temperature=1.0, top_p=1.0), live_engine.generate(reqs, temperature=1.0, top_p=1.0))
    finally:
        sharded.shutdown()
        live_engine.load_weights(tiny_model_dir)


@pytest.mark.slow
def test_sharded_run_equals_single_engine_run_and_resumes_under_either(
    prefect_harness, live_engine, small_config, tmp_path
):
    """One run on 2 Ray engine actors (a subprocess: it owns its engines) and the same run on the single
    in-process engine produce the same rollouts, and either run directory is a full cache hit for the other."""
    from flows.rl_train import rl_train
    from tests.conftest import SMALL

    single = rl_train(small_config, str(tmp_path / "a"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["run", "--runs-dir", str(tmp_path / "b")] + [a for s in SMALL + ["rollout.shards=2"] for a in ("--set", s)]
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rid = single["run_id"]
    a, b = tmp_path / "a" / rid, tmp_path / "b" / rid
    assert b.exists(), "the shard count must not change the run id"
    for it in ("0001", "0002"):
        ta, tb = (pq.read_table(d / "iterations" / it / "rollouts.parquet") for d in (a, b))
        assert ta.column("completion_token_ids").to_pylist() == tb.column("completion_token_ids").to_pylist()
        assert ta.column("seed").to_pylist() == tb.column("seed").to_pylist()
        for x, y in zip(ta.column("sampling_logprobs").to_pylist(), tb.column("sampling_logprobs").to_pylist()):
            np.testing.assert_allclose(x, y, atol=1e-5)
    _, engines = _shard_metrics(tmp_path / "b")
    assert engines == 2

    # The sharded run, rerun on one engine (a subprocess too: it shares the first's result storage).
    args = ["run", "--runs-dir", str(tmp_path / "b")] + [a for s in SMALL for a in ("--set", s)]
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads((b / "summary.json").read_text())
    assert again["stages_executed"] == {} and again["stages_cached"]["generate_rollouts"] == 2


@pytest.mark.slow
def test_sharded_eval_equals_single_engine_eval_and_shares_its_cache(
    prefect_harness, live_engine, tiny_model_dir, tmp_path
):
    """`segflow eval --shards 2` (a subprocess: it owns its Ray engines) gives the single engine's answers, and
    the single engine then finds every cell of the sharded evaluation cached."""
    from flows.evaluate import EvalSpec, evaluate

    spec = EvalSpec(checkpoints=(str(tiny_model_dir),), samples=2, limit=8, budgets=(64,))
    single = evaluate(spec, str(tmp_path / "a"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [
        "eval",
        "-c",
        str(tiny_model_dir),
        "-k",
        "2",
        "--limit",
        "8",
        "--budget",
        "64",
        "--temperature",
        "0.6",
        "--top-p",
        "0.95",
        "--shards",
        "2",
        "--runs-dir",
        str(tmp_path / "b"),
    ]
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    cell = Path("evals", spec.eval_id(), "model", "arith", "64", "samples.parquet")
    ta, tb = (pq.read_table(tmp_path / d / cell) for d in ("a", "b"))
    assert ta.num_rows == tb.num_rows == 8 * 3  # greedy + 2 samples per problem
    for col in ("prompt_id", "decoding", "sample_index", "num_tokens", "finish_reason", "score", "completion_text"):
        assert ta.column(col).to_pylist() == tb.column(col).to_pylist(), col
    sharded = json.loads((tmp_path / "b" / "evals" / spec.eval_id() / "summary.json").read_text())
    assert [c["engines"] for c in sharded["cells"]] == [2.0] and [c["engines"] for c in single["cells"]] == [1.0]
    assert sharded["cells_executed"] == 1
    again = evaluate(spec, str(tmp_path / "b"))
    assert again["cells_executed"] == 0 and again["cells"] == sharded["cells"]


def _shard_metrics(runs):
    from storage.catalog import query

    _, rows = query(runs, "select count(*), max(value) from metrics where name = 'rollout/engines'")
    return rows[0]


@pytest.mark.slow
def test_placement_that_never_happens_times_out_naming_the_keys(tiny_model_dir):
    """A cluster without room for the actors (here 1 CPU for 2 actors of 1 CPU) fails after
    rollout.placement_timeout_seconds instead of waiting for good, and leaves nothing pending."""
    import ray

    from configs.schema import RolloutSection
    from tasks.engines.ray_engine import ShardedEngine, ShardPlacementError

    if ray.is_initialized():
        pytest.skip("Ray already runs in this process with other resources")
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=256 * 2**20,
    )
    try:
        cfg = RolloutSection(shards=2, shard_cpus=1, ray_address="auto", placement_timeout_seconds=2)
        with pytest.raises(
            ShardPlacementError,
            match=r"could not place rollout.shards=2 engine actors of "
            r"\{'CPU': 1.0\} each .* rollout.placement_timeout_seconds=2",
        ):
            ShardedEngine(str(tiny_model_dir), cfg, "float32", 0)
        from ray.util.placement_group import placement_group_table

        assert all(g["state"] == "REMOVED" for g in placement_group_table().values())
    finally:
        ray.shutdown()
