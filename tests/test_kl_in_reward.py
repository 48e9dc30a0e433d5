"""KL penalty in the reward (storage/sql/kl_in_reward.sql): the coefficient reaches DuckDB as a bound
parameter, never as text formatted into the SQL, and the shaped advantages equal the numpy twin's."""

import numpy as np
import pytest

import storage.advantages as advantages
from storage.advantages import compute_advantages
from storage.parquet import write_parquet
from storage.schemas import REF_LOGPROBS
from tasks.algos import estimators
from tests.test_estimators import DEFAULTS, _write_batch

SCORES, GROUPS = [1.0, 0.0, 1.0, 0.0, 0.5, float("nan")], ["a", "a", "b", "b", "c", "c"]


def _shaped_advantages(tmp_path, kl: list[float], coef: float) -> list[float]:
    _write_batch(tmp_path, SCORES, GROUPS, [1] * len(SCORES), range(len(SCORES)))
    write_parquet(
        [
            {"run_id": "r", "iteration": 1, "prompt_id": g, "sample_index": i, "ref_logprobs": [-1.0], "kl": k}
            for i, (g, k) in enumerate(zip(GROUPS, kl))
        ],
        REF_LOGPROBS,
        tmp_path / "ref.parquet",
    )
    table = compute_advantages(
        "dr_grpo",
        tmp_path / "rollouts.parquet",
        tmp_path / "grades.parquet",
        {**DEFAULTS, "kl_reward_coef": coef},
        kl=tmp_path / "ref.parquet",
    )
    return [a for _, a in sorted(zip(table["sample_index"].to_pylist(), table["advantage"].to_pylist()))]


@pytest.mark.parametrize(
    "coef, kl",
    [
        # A tiny coefficient against huge KL sums: the product is O(1), so a coefficient rounded or read
        # as 0 on its way into SQL would change every advantage.
        (1e-300, [0.0, 2e300, 4e300, 0.0, 1e300, 3e300]),
        # Every one of the 17 significant digits matters once multiplied by a large KL sum.
        (0.12345678901234567, [0.0, 2e6, 4e6, 0.0, 1e6, 3e6]),
    ],
)
def test_odd_kl_coefficient_matches_numpy(tmp_path, coef, kl):
    got = _shaped_advantages(tmp_path, kl, coef)
    scores = np.array(SCORES)
    shaped = np.where(np.isfinite(scores), scores - coef * np.array(kl), scores)
    want = estimators.dr_grpo(shaped, GROUPS)
    assert np.isfinite(want[:5]).all() and np.abs(want[:5]).max() > 0.1  # the penalty really moves them
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


class _Recorder:
    """Delegates to a DuckDB cursor and records every SQL text and parameters passed to it."""

    def __init__(self, con, calls):
        self._con, self._calls = con, calls

    def __enter__(self):
        self._con.__enter__()
        return self

    def __exit__(self, *exc):
        return self._con.__exit__(*exc)

    def execute(self, sql, params=None):
        self._calls.append((sql, params))
        return self._con.execute(sql) if params is None else self._con.execute(sql, params)

    def sql(self, sql, params=None):
        self._calls.append((sql, params))
        return self._con.sql(sql) if params is None else self._con.sql(sql, params=params)

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_kl_coefficient_is_bound_not_formatted(tmp_path, monkeypatch):
    calls = []
    real = advantages.scratch_cursor
    monkeypatch.setattr(advantages, "scratch_cursor", lambda: _Recorder(real(), calls))
    coef = 0.123456789012345
    _shaped_advantages(tmp_path, [0.0, 2.0, 4.0, 0.0, 1.0, 3.0], coef)
    texts = [sql for sql, _ in calls]
    assert not [t for t in texts if "123456789" in t], "the coefficient was formatted into SQL text"
    shaping = [(sql, params) for sql, params in calls if "$kl_reward_coef" in sql]
    assert len(shaping) == 1 and shaping[0][1] == {"kl_reward_coef": coef}
