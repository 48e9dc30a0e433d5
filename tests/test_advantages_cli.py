"""`segflow advantages` recomputes a run's iteration with the flow's own stage code (issue 28, item 4), and
validates every `--set` through the config schema (item 5).

A "run" here is a run directory as the flow leaves it: config.yaml (the resolved config), the iteration's
input files, and the advantages file written by the compute_advantages task's own body
(`compute_advantages.fn`, called with the arguments the flow passes it). The fast tests fill the input files
with hand-made rows; the slow test takes them from real flows, one per estimator family.
"""

import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from configs.loader import available_presets, resolve, to_yaml
from flows.cli import app
from storage.handles import FileRef, digest
from storage.layout import RunLayout
from storage.parquet import write_parquet
from storage.schemas import REF_LOGPROBS, SEGMENTS, TREE_NODES
from tasks.advantage import artifact_of, compute_advantages, kl_in_reward
from tasks.common import CODE_VERSION

runner = CliRunner()


def _family(cfg) -> str:
    return cfg.advantage.spec.family.value


def run_stage(cfg, layout: RunLayout, it: int = 1) -> Path:
    """The stage as flows/rl_train.py calls it (rollout_iteration / tree_iteration); returns its file."""
    if _family(cfg) == "tree":
        out = compute_advantages.fn(cfg, layout, it, CODE_VERSION, nodes=FileRef.of(layout.tree_nodes(it)))
    else:
        inputs = {"rollouts": FileRef.of(layout.rollouts(it)), "grades": FileRef.of(layout.grades(it))}
        if kl_in_reward(cfg):
            inputs["reference"] = FileRef.of(layout.ref_logprobs(it))
        if _family(cfg) == "segment":
            inputs["segments"] = FileRef.of(layout.segments(it))
        out = compute_advantages.fn(cfg, layout, it, CODE_VERSION, **inputs)
    assert Path(out.artifact.path) == artifact_of(cfg, layout, it)[0]
    return Path(out.artifact.path)


def make_run(runs: Path, name: str, cfg, inputs: Path) -> tuple[RunLayout, Path]:
    """A run directory `runs/name` holding cfg's config.yaml, iteration 1's input files copied from the
    directory `inputs`, and the stage's advantages file computed from them."""
    layout = RunLayout(runs_dir=str(runs), run_id=name)
    layout.iteration_dir(1).mkdir(parents=True)
    layout.config.write_text(to_yaml(cfg))
    for f in ("rollouts", "grades", "ref_logprobs", "segments", "tree_nodes"):
        if (inputs / f"{f}.parquet").exists():
            shutil.copy(inputs / f"{f}.parquet", layout.iteration_dir(1))
    return layout, run_stage(cfg, layout)


def recompute(layout: RunLayout, out: Path, *args: str):
    res = runner.invoke(app, ["advantages", "--run", str(layout.root), "--iteration", "1", "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    return res


def assert_same_file(ours: Path, theirs: Path) -> None:
    assert pq.read_table(ours).to_pandas().equals(pq.read_table(theirs).to_pandas())  # NaN where NaN
    assert digest(ours) == digest(theirs)  # byte for byte: same rows, same order, same schema


# --- hand-made inputs of every family --------------------------------------------------------------------

SEGMENT_ROWS = [  # (sample, start, end, cutpoints, v_start, v_end): lengths and cutpoint counts disagree
    (0, 0, 3, 1, 0.5, 0.25),
    (0, 3, 10, 1, 0.25, 1.0),
    (0, 10, 12, 2, 1.0, 1.0),
    (1, 0, 5, 3, 0.5, 0.75),
    (1, 5, 9, 0, 0.75, 0.0),
    (1, 9, 11, 1, float("nan"), 0.0),
]


def write_inputs(d: Path, seed: int = 0) -> Path:
    """Iteration files of every family in directory `d`: rollouts + grades (groups of 1-8, 0/1/0.5/-2 and
    NaN scores), ref_logprobs (a KL per response), segments, tree_nodes."""
    from tests.test_estimators import _random_batch, _write_batch
    from tests.test_spo_tree import nodes_table, random_forest

    d.mkdir(parents=True, exist_ok=True)
    scores, groups, lengths, keys = _random_batch(seed)
    _write_batch(d, scores.tolist(), groups, lengths, keys)
    grades = pq.read_table(d / "grades.parquet")
    kl = np.random.default_rng(seed).uniform(0, 2, grades.num_rows)
    write_parquet(
        [
            {"run_id": "r", "iteration": 1, "prompt_id": p, "sample_index": i, "ref_logprobs": [-0.1], "kl": k}
            for p, i, k in zip(grades["prompt_id"].to_pylist(), grades["sample_index"].to_pylist(), kl)
        ],
        REF_LOGPROBS,
        d / "ref_logprobs.parquet",
    )
    write_parquet(
        [
            {
                "run_id": "r",
                "iteration": 1,
                "prompt_id": "p",
                "sample_index": s,
                "prefix_id": None,
                "segment_index": j,
                "start_token": a,
                "end_token": b,
                "num_cutpoints": c,
                "cutpoints": list(range(a, a + c)),
                "v_start": v0,
                "n_start": 4,
                "v_end": v1,
                "n_end": 4,
            }
            for j, (s, a, b, c, v0, v1) in enumerate(SEGMENT_ROWS)
        ],
        SEGMENTS,
        d / "segments.parquet",
    )
    write_parquet(nodes_table(random_forest(random.Random(seed), 6)), TREE_NODES, d / "tree_nodes.parquet")
    return d


def whitened(weights) -> np.ndarray:
    """SEGMENT_ROWS' advantages v_end - v_start (unknown V -> 0), whitened over the segments with weight > 0
    by the weighted mean and population variance, eps 1e-8 (spo.md §3.3); weight-0 segments stay raw."""
    a = np.array([0.0 if np.isnan(v1 - v0) else v1 - v0 for *_, v0, v1 in SEGMENT_ROWS])
    w = np.asarray(weights, dtype=float)
    mu = (w * a).sum() / w.sum()
    var = (w * a * a).sum() / w.sum() - mu * mu
    return np.where(w > 0, (a - mu) / np.sqrt(var + 1e-8), a)


def _advantages(path: Path) -> np.ndarray:
    return pq.read_table(path)["advantage"].to_numpy()


# --- fast tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_recomputes_its_runs_advantages_exactly(preset, tmp_path):
    """Every preset's config (estimator and all its keys), on hand-made inputs of its family."""
    cfg = resolve(preset)
    layout, theirs = make_run(tmp_path / "runs", f"{preset}-x", cfg, write_inputs(tmp_path / "in"))
    res = recompute(layout, tmp_path / "ours.parquet")
    assert_same_file(tmp_path / "ours.parquet", theirs)
    assert f"identical to the run's {theirs}" in res.output


def test_kl_in_the_reward_is_read_from_the_runs_ref_logprobs(tmp_path):
    cfg = resolve("grpo", overrides=["train.kl_coef=0.05", "train.kl_placement=reward"])
    inputs = write_inputs(tmp_path / "in")
    layout, theirs = make_run(tmp_path / "runs", "kl-x", cfg, inputs)
    recompute(layout, tmp_path / "ours.parquet")
    assert_same_file(tmp_path / "ours.parquet", theirs)
    # ... and the penalty did reach the advantages: without it they differ
    _, plain = make_run(tmp_path / "runs", "plain-x", resolve("grpo"), inputs)
    assert not np.allclose(_advantages(plain), _advantages(theirs), equal_nan=True)


def test_spo_chain_without_the_probability_mask_recomputes_as_the_run_did(tmp_path):
    """The case the old command got wrong: it assumed the mask was on (masked=True), so an SPO-chain run
    with train.prob_mask_rho=null was whitened with cutpoint weights instead of segment lengths."""
    cfg = resolve("spo_chain", overrides=["train.prob_mask_rho=null"])
    layout, theirs = make_run(tmp_path / "runs", "nomask-x", cfg, write_inputs(tmp_path / "in"))
    res = recompute(layout, tmp_path / "ours.parquet")
    assert "identical to the run's" in res.output
    assert_same_file(tmp_path / "ours.parquet", theirs)
    lengths = [b - a for _, a, b, *_ in SEGMENT_ROWS]
    cutpoints = [c for _, _, _, c, *_ in SEGMENT_ROWS]
    np.testing.assert_allclose(_advantages(theirs), whitened(lengths), rtol=1e-12, atol=1e-12)
    assert np.abs(whitened(lengths) - whitened(cutpoints)).max() > 0.1  # the two weightings do disagree
    # A --set changes only the key it names: turning the mask on gives the cutpoint weighting.
    res = recompute(layout, tmp_path / "masked.parquet", "--set", "train.prob_mask_rho=0.9")
    assert "differs from the run's" in res.output
    np.testing.assert_allclose(_advantages(tmp_path / "masked.parquet"), whitened(cutpoints), rtol=1e-12, atol=1e-12)
    # The file mode builds its config the same way: the default config has no mask.
    res = runner.invoke(
        app,
        [
            "advantages",
            "--estimator",
            "spo_chain",
            "--segments",
            str(layout.segments(1)),
            "--out",
            str(tmp_path / "file.parquet"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert_same_file(tmp_path / "file.parquet", theirs)


def test_estimator_swapped_on_a_run_equals_the_stage_under_that_estimator(tmp_path):
    from tasks.algos import estimators

    inputs = write_inputs(tmp_path / "in")
    layout, _ = make_run(tmp_path / "runs", "grpo-x", resolve("grpo"), inputs)
    _, rloo_run = make_run(tmp_path / "runs", "rloo-x", resolve("grpo", overrides=["advantage.estimator=rloo"]), inputs)
    recompute(layout, tmp_path / "ours.parquet", "--estimator", "rloo")
    assert_same_file(tmp_path / "ours.parquet", rloo_run)
    grades = pq.read_table(inputs / "grades.parquet")
    np.testing.assert_allclose(
        _advantages(rloo_run),
        estimators.rloo(grades["score"].to_numpy(), grades["prompt_id"].to_pylist()),
        rtol=1e-9,
        atol=1e-12,
    )


def test_set_normalize_bogus_fails_naming_the_key_and_allowed_values(tmp_path):
    inputs = write_inputs(tmp_path / "in")
    layout, _ = make_run(tmp_path / "runs", "spo-x", resolve("spo_chain"), inputs)
    allowed = "spo.normalize='bogus': Input should be 'batch', 'micro_batch' or 'none'"
    for args in (
        ["--estimator", "spo_chain", "--segments", str(inputs / "segments.parquet"), "--set", "normalize=bogus"],
        ["--run", str(layout.root), "--iteration", "1", "--set", "spo.normalize=bogus"],
        ["--run", str(layout.root), "--iteration", "1", "--set", "normalize=bogus"],
    ):
        res = runner.invoke(app, ["advantages", *args, "--out", str(tmp_path / "a.parquet")])
        assert res.exit_code == 2 and f"error: {allowed}" in res.output, res.output
    res = runner.invoke(app, ["advantages", "--run", str(layout.root), "-k", "1", "--set", "spo.masked=false"])
    assert res.exit_code == 2 and "unknown key 'spo.masked'" in res.output
    res = runner.invoke(app, ["advantages", "--run", str(layout.root), "-k", "1", "--set", "spo.normalize"])
    assert res.exit_code == 2 and "expected section.key=value" in res.output
    assert not (tmp_path / "a.parquet").exists()


def test_run_mode_refuses_missing_files_and_writing_into_the_run(tmp_path):
    inputs = write_inputs(tmp_path / "in")
    (inputs / "segments.parquet").unlink()
    layout, _ = make_run(tmp_path / "runs", "grpo-x", resolve("grpo"), inputs)
    res = runner.invoke(app, ["advantages", "--run", str(layout.root), "--iteration", "2"])
    assert res.exit_code == 2 and str(layout.grades(2)) in res.output and "no such file" in res.output
    res = runner.invoke(app, ["advantages", "--run", str(layout.root), "-k", "1", "--out", str(layout.advantages(1))])
    assert res.exit_code == 2 and "inside the run directory" in res.output
    res = runner.invoke(
        app,
        [
            "advantages",
            "--run",
            "grpo-x",
            "--runs-dir",
            str(layout.runs_dir),
            "-k",
            "1",
            "--rollouts",
            str(layout.rollouts(1)),
        ],
    )
    assert res.exit_code == 2 and "drop --rollouts" in res.output
    res = runner.invoke(
        app,
        [
            "advantages",
            "--run",
            str(layout.root),
            "-k",
            "1",
            "--estimator",
            "spo_chain",
            "--out",
            str(tmp_path / "a.parquet"),
        ],
    )
    assert res.exit_code == 2 and str(layout.segments(1)) in res.output  # a grpo run has no segments


# --- slow: real runs, one per estimator family -----------------------------------------------------------

FAMILY_RUNS = {  # preset -> overrides on tests/conftest.SMALL, one iteration each
    "grpo": [],
    "spo_chain": ["spo.mc_samples=2", "spo.interval=1"],
    "spo_tree": ["rollout.prompts_per_iteration=4", "tree.branching=[3,2,2]", "tree.edges_per_question=6"],
}


@pytest.fixture(scope="module")
def finished_runs(prefect_harness, live_engine, tmp_path_factory):
    """family -> run directory. The SFT warm start (most of a small run's time) is done once: the SPO runs
    start from the GRPO run's warm-started model."""
    from flows.rl_train import rl_train
    from tests.conftest import SMALL

    runs = tmp_path_factory.mktemp("advantages-cli") / "runs"
    # A 60-step warm start answers few problems right: graded wrong, truncated and unparseable answers score
    # differently here, so groups are mixed and the advantages are not all 0.
    small = SMALL + ["run.iterations=1", "eval.limit=4", "reward.wrong=0.25", "reward.truncated=-1"]
    out = {"response": runs / rl_train(resolve("grpo", overrides=small), str(runs))["run_id"]}
    reuse = [f"model.name_or_path={out['response'] / 'models' / 'warm_start'}", "warm_start.enabled=false"]
    for family, preset in (("segment", "spo_chain"), ("tree", "spo_tree")):
        out[family] = (
            runs / rl_train(resolve(preset, overrides=small + FAMILY_RUNS[preset] + reuse), str(runs))["run_id"]
        )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_reproduces_a_finished_runs_advantages(preset, finished_runs, tmp_path):
    """The three FAMILY_RUNS presets: `segflow advantages` on their real run's iteration 1. Every other
    preset would need a flow of its own (minutes each), so it gets a run directory with its own config and
    the iteration's real input files from its family's run, whose advantages the stage computes as the flow
    would; `segflow advantages` must reproduce that file."""
    from tests.conftest import SMALL

    cfg = resolve(preset, overrides=SMALL + ["run.iterations=1"])
    source = finished_runs[_family(cfg)]
    if preset in FAMILY_RUNS:
        layout = RunLayout(runs_dir=str(source.parent), run_id=source.name)
        theirs = artifact_of(cfg, layout, 1)[0]
    else:
        layout, theirs = make_run(tmp_path / "runs", f"{preset}-x", cfg, source / "iterations" / "0001")
    recompute(layout, tmp_path / "ours.parquet")
    assert_same_file(tmp_path / "ours.parquet", theirs)
    assert np.count_nonzero(np.nan_to_num(_advantages(theirs))) > 0
