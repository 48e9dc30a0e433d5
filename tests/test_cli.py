import json

import numpy as np
from typer.testing import CliRunner

from flows.cli import app
from storage.parquet import read_parquet
from storage.schemas import ADVANTAGES
from tasks.algos import estimators

runner = CliRunner()


def test_grade_command(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [
        {"response": "3+5=8\n#### 8", "reference": "8"},
        {"response": "#### 8", "reference": "8", "finish_reason": "length"},
        {"response": "nothing", "reference": "8"},
    ]) + "\n")
    res = runner.invoke(app, ["grade", "--task", "arith", "--input", str(f), "--set", "truncated=-1"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert [(r["score"], r["status"]) for r in rows] == [(1.0, "ok"), (-1.0, "truncated"), (0.0, "no_answer")]
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["grade", "--task", "arith", "--input", str(f), "--out", str(out)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 3


def test_grade_command_rejects_bad_input(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"response": "x"}\n')
    res = runner.invoke(app, ["grade", "--task", "gsm8k", "--input", str(f)])
    assert res.exit_code == 2 and "in.jsonl:1" in res.output and "reference" in res.output
    res = runner.invoke(app, ["grade", "--task", "poetry", "--input", str(f)])
    assert res.exit_code == 2


def _by_sample(path):
    t = read_parquet(path, ADVANTAGES)
    return [a for _, a in sorted(zip(t["sample_index"].to_pylist(), t["advantage"].to_pylist()))]


def test_advantages_command_recomputes_with_any_estimator(tmp_path):
    from tests.test_estimators import _write_batch

    scores, groups = [1.0, 0.0, 0.0, 1.0, 1.0], ["a", "a", "a", "b", "b"]
    _write_batch(tmp_path, scores, groups, [1] * 5, [4, 3, 2, 1, 0])
    out = tmp_path / "adv.parquet"
    res = runner.invoke(app, ["advantages", "--estimator", "rloo", "--rollouts", str(tmp_path / "rollouts.parquet"),
                              "--grades", str(tmp_path / "grades.parquet"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(_by_sample(out), estimators.rloo(scores, groups))
    res = runner.invoke(app, ["advantages", "--estimator", "ppo", "--rollouts", str(tmp_path / "rollouts.parquet"),
                              "--grades", str(tmp_path / "grades.parquet"), "--out", str(out)])
    assert res.exit_code == 2 and "known: " in res.output
    # estimator options: RED-Drop drops sample 2 (the negative with the smallest seed) of group a
    res = runner.invoke(app, ["advantages", "--estimator", "rec", "--rollouts", str(tmp_path / "rollouts.parquet"),
                              "--grades", str(tmp_path / "grades.parquet"), "--out", str(out),
                              "--set", "rec_drop=balance"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(_by_sample(out), [0.5, -0.5, 0.0, 0.0, 0.0])
    res = runner.invoke(app, ["advantages", "--estimator", "rec", "--rollouts", str(tmp_path / "rollouts.parquet"),
                              "--grades", str(tmp_path / "grades.parquet"), "--out", str(out),
                              "--set", "rec_drop=sometimes"])
    assert res.exit_code == 2 and "rec_drop='sometimes'" in res.output


def test_advantages_command_for_spo_chain_segments(tmp_path):
    from storage.parquet import write_parquet
    from storage.schemas import SEGMENT_ADVANTAGES, SEGMENTS

    rows = [{"run_id": "r", "iteration": 1, "prompt_id": "p", "sample_index": 0, "segment_index": i,
             "start_token": 2 * i, "end_token": 2 * i + 2, "num_cutpoints": 1, "v_start": a, "n_start": 4,
             "v_end": b, "n_end": 4} for i, (a, b) in enumerate([(0.5, 0.25), (0.25, 1.0)])]
    write_parquet(rows, SEGMENTS, tmp_path / "segments.parquet")
    out = tmp_path / "seg_adv.parquet"
    res = runner.invoke(app, ["advantages", "--estimator", "spo_chain", "--segments", str(tmp_path / "segments.parquet"),
                              "--out", str(out), "--set", "normalize=none"])
    assert res.exit_code == 0, res.output
    t = read_parquet(out, SEGMENT_ADVANTAGES)
    assert sorted(zip(t["segment_index"].to_pylist(), t["advantage"].to_pylist())) == [(0, -0.25), (1, 0.75)]
    res = runner.invoke(app, ["advantages", "--estimator", "spo_chain", "--out", str(out)])
    assert res.exit_code == 2 and "--segments" in res.output


def test_run_rejects_bad_config_before_any_work(tmp_path):
    res = runner.invoke(app, ["run", "--set", "train.lrr=1", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and "unknown key 'train.lrr'" in res.output
    assert list(tmp_path.iterdir()) == []
