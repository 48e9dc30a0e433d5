"""Golden values, named edge cases, and SQL (DuckDB) vs numpy agreement for every estimator."""
import math

import numpy as np
import pytest

from storage.advantages import compute_advantages
from storage.parquet import write_parquet
from storage.schemas import GRADES, ROLLOUTS
from tasks.algos import estimators

G = ["a", "a", "a", "a", "b", "b"]
R = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_grpo_golden():
    # group a: mean .5, population std .5 -> +-1 ; group b: mean .5, std .5 -> +-1
    np.testing.assert_allclose(estimators.grpo(R, G, eps=0.0), [1, -1, -1, 1, 1, -1])
    np.testing.assert_allclose(estimators.grpo([3.0, 1.0, 2.0], ["g"] * 3, eps=0.0),
                               [1 / math.sqrt(2 / 3), -1 / math.sqrt(2 / 3), 0.0])


def test_dr_grpo_golden():
    np.testing.assert_allclose(estimators.dr_grpo([3.0, 1.0, 2.0], ["g"] * 3), [1.0, -1.0, 0.0])


def test_rloo_golden():
    # r_i - mean of the others: 3 - 1.5, 1 - 2.5, 2 - 2
    np.testing.assert_allclose(estimators.rloo([3.0, 1.0, 2.0], ["g"] * 3), [1.5, -1.5, 0.0])


@pytest.mark.parametrize("name", sorted(estimators.REGISTRY))
def test_singleton_all_equal_and_nan(name):
    f = estimators.REGISTRY[name]
    assert f([0.7], ["solo"]).tolist() == [0.0]
    assert f([1.0, 1.0, 1.0], ["g"] * 3).tolist() == [0.0, 0.0, 0.0]
    out = f([1.0, float("nan"), 0.0], ["g"] * 3)
    assert out[1] == 0.0 and out[0] > 0 > out[2]
    # a NaN leaves a one-member group: no baseline, so zero
    assert f([1.0, float("nan")], ["g", "g"]).tolist() == [0.0, 0.0]


def _write_batch(tmp_path, scores, groups):
    rollouts = [{"run_id": "r", "iteration": 1, "prompt_id": g, "sample_index": i, "policy_version": 0, "seed": 0,
                 "prompt_token_ids": [1], "completion_token_ids": [2], "sampling_logprobs": [-0.1],
                 "logprobs_mode": "processed_logprobs", "finish_reason": "stop", "completion_text": "x"}
                for i, g in enumerate(groups)]
    grades = [{"run_id": "r", "iteration": 1, "prompt_id": g, "sample_index": i, "score": s, "status": "ok",
               "extracted": ""} for i, (g, s) in enumerate(zip(groups, scores))]
    write_parquet(rollouts, ROLLOUTS, tmp_path / "rollouts.parquet")
    write_parquet(grades, GRADES, tmp_path / "grades.parquet")


@pytest.mark.parametrize("name", sorted(estimators.REGISTRY))
@pytest.mark.parametrize("seed", range(5))
def test_sql_matches_numpy(tmp_path, name, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=12)  # mixed sizes including singletons
    groups = [f"p{g:02d}" for g, n in enumerate(sizes) for _ in range(n)]
    scores = rng.choice([0.0, 1.0, -2.0, 0.5], size=len(groups))
    scores[rng.random(len(groups)) < 0.1] = np.nan  # failed grades
    first = groups.index("p03")
    scores[first : first + sizes[3]] = 1.0  # one all-equal group
    _write_batch(tmp_path, scores.tolist(), groups)
    table = compute_advantages(name, tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", {"eps": 1e-6})
    sql = dict(zip(table["sample_index"].to_pylist(), table["advantage"].to_pylist()))
    ref = estimators.REGISTRY[name](scores, groups, eps=1e-6)
    np.testing.assert_allclose([sql[i] for i in range(len(groups))], ref, rtol=1e-9, atol=1e-9)
    assert set(table["estimator"].to_pylist()) == {name}


def test_unknown_estimator_lists_known(tmp_path):
    with pytest.raises(ValueError, match="known: .*grpo"):
        compute_advantages("ppo", tmp_path / "r", tmp_path / "g", {})


def test_every_registered_estimator_has_sql():
    from storage.advantages import sql_path

    for name in estimators.REGISTRY:
        header = sql_path(name).read_text().splitlines()[:8]
        assert any("grain" in line for line in header) and any("singleton" in line for line in header)
