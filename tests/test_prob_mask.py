"""Which tokens train (p_old < rho): the Python rule (tasks/algos/prob_mask.py) and the SQL one
(storage/sql/prob_mask.sql, rho bound) agree, and every caller uses them."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from storage.advantages import replay_take
from storage.catalog import SQL_DIR
from storage.schemas import REPLAY_BUFFER
from storage.scratch_db import scratch_cursor
from tasks.algos.prob_mask import trained_count, trains

# Log-probs with p = 1 (0.0), p = 0 (-inf), p = exp(-0.5) (the boundary of RHOS' third), and NaN.
LOGPROBS = [0.0, -0.5, math.log(0.5), -0.1053605156578263, -3.0, -math.inf, math.nan, -1e-12]
# None: no mask. 1.0 and exp(-0.5): some p equals rho exactly, and does not train.
RHOS = [None, 1.0, math.exp(-0.5), 0.9, 0.5, 1e-9]


def sql_rule(logprobs: list[float], rho: float | None) -> tuple[list[bool], int]:
    """(trains per token, trained_tokens of the list) as DuckDB evaluates prob_mask.sql, rho bound."""
    with scratch_cursor() as con:
        con.execute((SQL_DIR / "prob_mask.sql").read_text())
        per_token = con.sql(
            "select trains(exp(x), $rho) from unnest($lps::double[]) with ordinality t(x, i) order by i",
            params={"lps": logprobs, "rho": rho},
        ).fetchall()
        count = con.sql("select trained_tokens($lps::double[], $rho)", params={"lps": logprobs, "rho": rho}).fetchall()
    return [bool(v) for (v,) in per_token], count[0][0]


@pytest.mark.parametrize("rho", RHOS)
def test_sql_and_python_rules_agree_token_by_token(rho):
    sql, sql_count = sql_rule(LOGPROBS, rho)
    py = [bool(trains(math.exp(x), rho)) for x in LOGPROBS]
    arr = trains(np.exp(np.array(LOGPROBS)), rho)
    ten = trains(torch.tensor(LOGPROBS, dtype=torch.float64).exp(), rho)
    assert sql == py == arr.tolist() == ten.tolist()
    assert sql_count == trained_count(np.exp(np.array(LOGPROBS)), rho) == sum(py)


def test_the_boundary_and_no_mask_by_hand():
    # p == rho does not train; NaN never passes p < rho; without the mask every token trains, NaN included.
    assert sql_rule([0.0, -0.5, math.nan], 1.0) == ([False, True, False], 1)
    assert sql_rule([-0.5, -0.6], math.exp(-0.5)) == ([False, True], 1)
    assert sql_rule([0.0, -0.5, math.nan], None) == ([True, True, True], 3)
    assert sql_rule([], 0.9) == ([], 0)
    assert trains(1.0, 1.0) is False and trains(math.nan, None) and trained_count(np.array([]), None) == 0


def test_trainer_mask_is_the_rule():
    from tasks.trainer import trained_advantages

    old_lp = torch.tensor([[0.0, -0.5, -3.0, 0.0]])
    comp = torch.tensor([[True, True, True, False]])  # the last position is padding
    adv = torch.ones(1, 4)
    _, mask = trained_advantages(adv, old_lp, comp, 1.0, whiten=False)
    assert mask.tolist() == [[False, True, True, False]]
    _, mask = trained_advantages(adv, old_lp, comp, None, whiten=False)
    assert mask.tolist() == comp.tolist()


def test_spo_values_trained_token_metric_is_the_rule():
    from tasks.spo_values import masked_count

    assert masked_count([1.0, 0.5, 0.95, 0.2], 0.95) == 2
    assert masked_count([1.0, 0.5], None) == 2
    assert masked_count([], 0.9) == 0


@pytest.mark.parametrize("rho", [None, 1.0, 0.7])
def test_replay_take_weighs_edges_by_the_sql_rule(rho):
    """Batch whitening over the taken edges' trained tokens, weights from trained_tokens(sampling_logprobs, $rho)."""
    lps = [[0.0, -0.1, -2.0], [-0.5, math.log(0.7)], [0.0, 0.0]]
    adv = [1.0, -1.0, 0.5]
    pool = pa.Table.from_pylist(
        [
            {
                "run_id": "r",
                "added_iteration": 1,
                "policy_version": 0,
                "prompt_id": f"q{i}",
                "node_id": f"q{i}/0",
                "depth": 1,
                "advantage": a,
                "prefix_token_ids": [1],
                "completion_token_ids": [7] * len(lp),
                "sampling_logprobs": lp,
            }
            for i, (lp, a) in enumerate(zip(lps, adv))
        ],
        schema=REPLAY_BUFFER,
    )
    taken, _ = replay_take(
        pool,
        {
            "iteration": 1,
            "max_age": 1,
            "per_question": 1,
            "per_iteration": None,
            "seed": 0,
            "normalize": "batch",
            "rho": rho,
            "whiten_eps": 1e-8,
        },
    )
    got = dict(zip(taken["node_id"].to_pylist(), taken["train_advantage"].to_pylist()))
    # pyarrow stores float32 log-probs; the rule reads those.
    w = np.array([trained_count(np.exp(np.array(lp, dtype=np.float32).astype(np.float64)), rho) for lp in lps], float)
    a = np.array(adv)
    keep = w > 0
    mu = (w * a)[keep].sum() / w[keep].sum()
    var = (w * a * a)[keep].sum() / w[keep].sum() - mu * mu
    want = np.where(keep, (a - mu) / np.sqrt(max(var, 0.0) + 1e-8), a)
    np.testing.assert_allclose([got[f"q{i}/0"] for i in range(3)], want, rtol=1e-12)
    assert w.tolist() == {None: [3, 2, 2], 1.0: [2, 2, 0], 0.7: [1, 1, 0]}[rho]
