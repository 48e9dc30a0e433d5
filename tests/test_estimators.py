"""Golden values, named edge cases, and SQL (DuckDB) vs numpy agreement for every estimator."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from configs.schema import AdvantageSection
from storage.advantages import compute_advantages, sql_path
from storage.parquet import write_parquet
from storage.schemas import GRADES, REF_LOGPROBS, ROLLOUTS
from tasks.algos import estimators
from tasks.algos.registry import Family, names

G = ["a", "a", "a", "a", "b", "b"]
R = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
RESPONSE = names(Family.RESPONSE)  # the estimators with a numpy twin in tasks/algos/estimators.py


def test_grpo_golden():
    # group a: mean .5, population std .5 -> +-1 ; group b: mean .5, std .5 -> +-1
    np.testing.assert_allclose(estimators.grpo(R, G, eps=0.0), [1, -1, -1, 1, 1, -1])
    np.testing.assert_allclose(
        estimators.grpo([3.0, 1.0, 2.0], ["g"] * 3, eps=0.0), [1 / math.sqrt(2 / 3), -1 / math.sqrt(2 / 3), 0.0]
    )


def test_dr_grpo_golden():
    np.testing.assert_allclose(estimators.dr_grpo([3.0, 1.0, 2.0], ["g"] * 3), [1.0, -1.0, 0.0])


def test_rloo_golden():
    # r_i - mean of the others: 3 - 1.5, 1 - 2.5, 2 - 2
    np.testing.assert_allclose(estimators.rloo([3.0, 1.0, 2.0], ["g"] * 3), [1.5, -1.5, 0.0])


def test_reinforce_pp_baseline_golden():
    # x = r - group mean: a -> [.5, -.5], b -> [1, -1]; lengths 1,3,2,2 -> token mean mu = (.5 - 1.5 + 2 - 2)/8 = -1/8
    # token variance = (1*(5/8)^2 + 3*(3/8)^2 + 2*(9/8)^2 + 2*(7/8)^2)/8 = 0.609375
    out = estimators.reinforce_pp_baseline([1.0, 0.0, 2.0, 0.0], ["a", "a", "b", "b"], [1, 3, 2, 2], whiten_eps=0.0)
    sd = math.sqrt(0.609375)
    np.testing.assert_allclose(out, [0.625 / sd, -0.375 / sd, 1.125 / sd, -0.875 / sd])


def test_rec_golden_and_red_drop():
    scores, groups = [1.0, 0.0, 0.0, 0.0], ["g"] * 4
    np.testing.assert_allclose(estimators.rec(scores, groups, keys=[0, 1, 2, 3]), [0.75, -0.25, -0.25, -0.25])
    # balance: 1 positive, 3 negatives -> the 2 negatives with the smallest keys (samples 3 and 1) are dropped,
    # the kept pair {1, 0} has mean .5
    out = estimators.rec(scores, groups, keys=[9, 5, 7, 1], rec_drop="balance")
    np.testing.assert_allclose(out, [0.5, 0.0, -0.5, 0.0])
    out = estimators.rec(scores, groups, keys=[9, 5, 7, 1], rec_drop="balance", rec_std_normalize=True, eps=0.0)
    np.testing.assert_allclose(out, [1.0, 0.0, -1.0, 0.0])
    # more positives than negatives: nothing is dropped
    np.testing.assert_allclose(
        estimators.rec([1.0, 1.0, 0.0], ["g"] * 3, keys=[0, 1, 2], rec_drop="balance"), [1 / 3, 1 / 3, -2 / 3]
    )


def test_opmd_golden():
    np.testing.assert_allclose(estimators.opmd([1.0, 0.0], ["g", "g"]), [0.5, -0.5])
    lae = math.log((math.e + 1) / 2)  # tau = 1: log mean exp(r)
    np.testing.assert_allclose(estimators.opmd([1.0, 0.0], ["g", "g"], opmd_baseline="logavgexp"), [1 - lae, -lae])
    lae2 = 2 * math.log((math.exp(0.5) + 1) / 2)  # tau = 2
    np.testing.assert_allclose(estimators.opmd([1.0, 0.0], ["g", "g"], "logavgexp", 2.0), [1 - lae2, -lae2])


def test_asymre_golden():
    # baseline = mean + shift = .5 - .1
    np.testing.assert_allclose(estimators.asymre([1.0, 0.0], ["g", "g"]), [0.6, -0.4])
    np.testing.assert_allclose(estimators.asymre([1.0, 1.0], ["g", "g"], asymre_shift=-0.25), [0.25, 0.25])


def _compute(name, scores, groups, **params):
    n = len(scores)
    return estimators.compute(name, scores, groups, {**DEFAULTS, **params}, lengths=np.ones(n), keys=np.arange(n))


DEFAULTS = AdvantageSection().model_dump()


@pytest.mark.parametrize("name", sorted(RESPONSE))
def test_singleton_and_nan(name):
    assert _compute(name, [0.7], ["solo"]).tolist() == [0.0]
    out = _compute(name, [1.0, float("nan"), 0.0], ["g"] * 3)
    assert out[1] == 0.0 and out[0] > 0 > out[2]
    # a NaN leaves a one-member group: no baseline, so zero
    assert _compute(name, [1.0, float("nan")], ["g", "g"]).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("name", sorted(set(RESPONSE) - {"asymre"}))
def test_all_equal_group_gets_zero(name):
    assert _compute(name, [1.0, 1.0, 1.0], ["g"] * 3).tolist() == [0.0, 0.0, 0.0]


def test_asymre_all_equal_group_gets_the_shift():
    np.testing.assert_allclose(_compute("asymre", [1.0, 1.0], ["g", "g"]), [0.1, 0.1])


def _write_batch(tmp_path, scores, groups, lengths, keys):
    rollouts = [
        {
            "run_id": "r",
            "iteration": 1,
            "prompt_id": g,
            "sample_index": i,
            "policy_version": 0,
            "seed": int(k),
            "prompt_token_ids": [1],
            "completion_token_ids": [2] * int(n),
            "sampling_logprobs": [-0.1] * int(n),
            "logprobs_mode": "processed_logprobs",
            "finish_reason": "stop",
            "completion_text": "x",
        }
        for i, (g, n, k) in enumerate(zip(groups, lengths, keys))
    ]
    grades = [
        {"run_id": "r", "iteration": 1, "prompt_id": g, "sample_index": i, "score": s, "status": "ok", "extracted": ""}
        for i, (g, s) in enumerate(zip(groups, scores))
    ]
    write_parquet(rollouts, ROLLOUTS, tmp_path / "rollouts.parquet")
    write_parquet(grades, GRADES, tmp_path / "grades.parquet")


def _random_batch(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=12)  # mixed sizes including singletons
    groups = [f"p{g:02d}" for g, n in enumerate(sizes) for _ in range(n)]
    scores = rng.choice([0.0, 1.0, -2.0, 0.5], size=len(groups))
    scores[rng.random(len(groups)) < 0.1] = np.nan  # failed grades
    first = groups.index("p03")
    scores[first : first + sizes[3]] = 1.0  # one all-equal group
    lengths = rng.integers(1, 7, size=len(groups))
    keys = rng.integers(0, 2**40, size=len(groups))
    return scores, groups, lengths, keys


PARAM_VARIANTS = [
    {},
    {"rec_drop": "balance"},
    {"rec_drop": "balance", "rec_std_normalize": True},
    {"opmd_baseline": "logavgexp", "opmd_tau": 0.5},
    {"asymre_shift": -0.3, "eps": 1e-3},
]


@pytest.mark.parametrize("name", sorted(RESPONSE))
@pytest.mark.parametrize("seed", range(4))
def test_sql_matches_numpy(tmp_path, name, seed):
    scores, groups, lengths, keys = _random_batch(seed)
    _write_batch(tmp_path, scores.tolist(), groups, lengths, keys)
    params = {**DEFAULTS, **PARAM_VARIANTS[seed % len(PARAM_VARIANTS)]}
    table = compute_advantages(name, tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", params)
    sql = dict(zip(table["sample_index"].to_pylist(), table["advantage"].to_pylist()))
    ref = estimators.compute(name, scores, groups, params, lengths=lengths, keys=keys)
    np.testing.assert_allclose([sql[i] for i in range(len(groups))], ref, rtol=1e-9, atol=1e-9)
    assert set(table["estimator"].to_pylist()) == {name}


def _big_batch(seed, groups=3000):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=groups)
    names = [f"p{g:05d}" for g, n in enumerate(sizes) for _ in range(n)]
    scores = rng.choice([0.0, 1.0, 0.5], size=len(names))
    scores[rng.random(len(names)) < 0.02] = np.nan
    return scores, names, rng.integers(1, 7, size=len(names)), rng.integers(0, 2**40, size=len(names))


@pytest.mark.parametrize("name", sorted(RESPONSE))
def test_sql_matches_numpy_over_many_row_groups(tmp_path, monkeypatch, name):
    """Files of many row groups (written elsewhere; segflow writes one) are aggregated by several DuckDB
    threads at once: every response must still get its own group's statistics, in grades order."""
    import storage.parquet

    monkeypatch.setattr(storage.parquet, "ROW_GROUP_ROWS", 512)
    scores, groups, lengths, keys = _big_batch(1)
    _write_batch(tmp_path, scores.tolist(), groups, lengths, keys)
    assert pq.ParquetFile(tmp_path / "grades.parquet").metadata.num_row_groups > 8
    table = compute_advantages(name, tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", DEFAULTS)
    ref = estimators.compute(name, scores, groups, DEFAULTS, lengths=lengths, keys=keys)
    np.testing.assert_allclose(table["advantage"].to_numpy(), ref, rtol=1e-9, atol=1e-9)
    grades = pq.read_table(tmp_path / "grades.parquet", columns=["prompt_id", "sample_index"])
    assert table.select(["prompt_id", "sample_index"]).equals(grades)


@pytest.mark.parametrize("name", sorted(RESPONSE))
def test_advantages_are_identical_on_every_call_and_in_grades_order(tmp_path, name):
    """The advantages file of a resumed run must equal an uninterrupted run's, byte for byte."""
    scores, groups, lengths, keys = _big_batch(2)
    _write_batch(tmp_path, scores.tolist(), groups, lengths, keys)
    calls = [
        compute_advantages(name, tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", DEFAULTS) for _ in range(3)
    ]
    assert all(c.equals(calls[0]) for c in calls[1:])
    grades = pq.read_table(tmp_path / "grades.parquet", columns=["prompt_id", "sample_index"])
    assert calls[0].select(["prompt_id", "sample_index"]).equals(grades)


def test_concurrent_computations_keep_their_views_apart(tmp_path):
    """Threads share one scratch DuckDB (storage/scratch_db.py); each call's `grades` view is its own."""
    from concurrent.futures import ThreadPoolExecutor

    batches = {}
    for seed in range(4):
        d = tmp_path / str(seed)
        d.mkdir()
        scores, groups, lengths, keys = _big_batch(seed, groups=300)
        _write_batch(d, scores.tolist(), groups, lengths, keys)
        batches[d] = estimators.grpo(scores, groups, eps=DEFAULTS["eps"])

    def run(d):
        table = compute_advantages("grpo", d / "rollouts.parquet", d / "grades.parquet", DEFAULTS)
        got = dict(zip(table["sample_index"].to_pylist(), table["advantage"].to_pylist()))
        return d, [got[i] for i in range(len(got))]

    with ThreadPoolExecutor(4) as pool:
        for d, got in pool.map(run, [d for d in batches for _ in range(5)]):
            np.testing.assert_allclose(got, batches[d], rtol=1e-9, atol=1e-9)


def test_kl_in_reward_shapes_the_score(tmp_path):
    scores, groups = [1.0, 0.0, 1.0, 0.0], ["a", "a", "b", "b"]
    _write_batch(tmp_path, scores, groups, [1] * 4, range(4))
    kl = [0.0, 2.0, 4.0, 0.0]
    write_parquet(
        [
            {"run_id": "r", "iteration": 1, "prompt_id": g, "sample_index": i, "ref_logprobs": [-1.0], "kl": k}
            for i, (g, k) in enumerate(zip(groups, kl))
        ],
        REF_LOGPROBS,
        tmp_path / "ref.parquet",
    )
    params = {**DEFAULTS, "kl_reward_coef": 0.5}
    table = compute_advantages(
        "dr_grpo", tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", params, kl=tmp_path / "ref.parquet"
    )
    got = [a for _, a in sorted(zip(table["sample_index"].to_pylist(), table["advantage"].to_pylist()))]
    shaped = np.array(scores) - 0.5 * np.array(kl)  # a: [1, -1] b: [-1, 0]
    np.testing.assert_allclose(got, estimators.dr_grpo(shaped, groups))
    np.testing.assert_allclose(got, [1.0, -1.0, -0.5, 0.5])


def test_unknown_estimator_lists_known(tmp_path):
    with pytest.raises(ValueError, match="known: .*grpo"):
        compute_advantages("ppo", tmp_path / "r", tmp_path / "g", {})


def test_every_registered_estimator_has_a_documented_sql_file():
    for name in [*RESPONSE, "spo_chain"]:
        header = "\n".join(sql_path(name).read_text().splitlines()[:16])
        for word in ("grain", "singleton", "all-equal", "NaN", "std"):
            assert word in header, f"adv_{name}.sql header does not state {word!r}"


def _decimal_opmd(scores: list[float], tau: float) -> list[float]:
    """r_i - tau * ln(mean_j exp(r_j / tau)) in 60-digit decimal arithmetic: exp(1 / 1e-4) = e^10000 is
    an ordinary number there, so this is the textbook formula with no max-shift."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 60
        t = Decimal(tau)
        mean = sum((Decimal(r) / t).exp() for r in scores) / len(scores)
        base = t * mean.ln()
        return [float(Decimal(r) - base) for r in scores]


TAUS = [1.0, 0.1, 0.01, 1e-3, 1e-4]
# Every group of 2 to 4 rewards from {-2, 0, 1} (as multisets), the all-equal ones included.
SMALL_TAU_GROUPS = sorted({tuple(sorted(g)) for k in (2, 3, 4) for g in np.ndindex(*[3] * k)})
SMALL_TAU_GROUPS = [[(-2.0, 0.0, 1.0)[i] for i in g] for g in SMALL_TAU_GROUPS]


@pytest.mark.parametrize("tau", TAUS)
def test_opmd_logavgexp_small_tau_is_finite_and_exact(tau):
    """Issue 28: ln(avg(exp(r / tau))) overflowed for small tau ([1, 0, 0, 1] at tau = 0.001 gave -inf everywhere,
    an all -2 group +inf). The stable form must match the decimal formula and give all-equal groups exactly 0."""
    for group in SMALL_TAU_GROUPS:
        got = estimators.opmd(group, ["g"] * len(group), "logavgexp", tau)
        assert np.isfinite(got).all(), (group, tau)
        if len(set(group)) == 1:
            assert got.tolist() == [0.0] * len(group), (group, tau)
        else:
            np.testing.assert_allclose(got, _decimal_opmd(group, tau), rtol=1e-12, atol=1e-12, err_msg=str(group))


def test_opmd_logavgexp_issue_example_at_tau_0_001():
    got = estimators.opmd([1.0, 0.0, 0.0, 1.0], ["a"] * 4, "logavgexp", 0.001)
    # baseline = 1 + 0.001 * ln((2 e^1000 + 2) / 4 / e^1000) = 1 + 0.001 * ln(1/2 + e^-1000 / 2) ~ 1 - 0.001 ln 2
    hi, lo = 0.001 * math.log(2), -1 + 0.001 * math.log(2)  # e^-1000 is far below double precision of 1/2
    np.testing.assert_allclose(got, [hi, lo, lo, hi], rtol=1e-12)
    np.testing.assert_allclose(got, _decimal_opmd([1.0, 0.0, 0.0, 1.0], 0.001), rtol=1e-12)
    assert estimators.opmd([-2.0] * 3, ["a"] * 3, "logavgexp", 0.001).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("tau", TAUS)
def test_opmd_logavgexp_small_tau_sql_equals_numpy(tmp_path, tau):
    groups = [f"p{i:02d}" for i, g in enumerate(SMALL_TAU_GROUPS) for _ in g]
    scores = [r for g in SMALL_TAU_GROUPS for r in g]
    _write_batch(tmp_path, scores, groups, [1] * len(scores), range(len(scores)))
    params = {**DEFAULTS, "opmd_baseline": "logavgexp", "opmd_tau": tau}
    table = compute_advantages("opmd", tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", params)
    sql = np.array(table["advantage"].to_pylist())  # in grades order
    ref = estimators.opmd(scores, groups, "logavgexp", tau)
    assert np.isfinite(sql).all()
    np.testing.assert_allclose(sql, ref, rtol=1e-12, atol=1e-12)
    equal = [len(set(g)) == 1 for g in SMALL_TAU_GROUPS for _ in g]
    assert sql[equal].tolist() == [0.0] * sum(equal)


def test_red_drop_tenths_count_the_middle_response_as_positive(tmp_path):
    """Issue 28: mean(0.1, 0.2, 0.3) = 0.20000000000000004 > 0.2, so a float comparison made 0.2 a negative,
    found 2 negatives against 1 positive and dropped the one with the smallest key (0.1 here). With the
    stated tolerance 0.2 is positive, nothing is dropped and A = r - 0.2."""
    scores, groups, keys = [0.1, 0.2, 0.3], ["g"] * 3, [1, 5, 9]
    out = estimators.rec(scores, groups, keys=keys, rec_drop="balance")
    np.testing.assert_allclose(out, [-0.1, 0.0, 0.1], atol=1e-15)
    _write_batch(tmp_path, scores, groups, [1] * 3, keys)
    params = {**DEFAULTS, "rec_drop": "balance"}
    table = compute_advantages("rec", tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", params)
    np.testing.assert_allclose(table["advantage"].to_pylist(), [-0.1, 0.0, 0.1], atol=1e-15)


def test_red_drop_still_drops_negatives_just_beyond_the_tolerance(tmp_path):
    # mean 1e-6: the two zeros are below it by 1e-6, far beyond 1e-9 * max(1, |mean|): 2 negatives, 1 positive,
    # so the negative with the smaller key (sample 1) is dropped and the kept pair {0, 3e-6} has mean 1.5e-6.
    scores, groups, keys = [0.0, 0.0, 3e-6], ["g"] * 3, [7, 2, 4]
    expect = [-1.5e-6, 0.0, 1.5e-6]
    np.testing.assert_allclose(estimators.rec(scores, groups, keys=keys, rec_drop="balance"), expect, atol=1e-18)
    _write_batch(tmp_path, scores, groups, [1] * 3, keys)
    table = compute_advantages(
        "rec", tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", {**DEFAULTS, "rec_drop": "balance"}
    )
    np.testing.assert_allclose(table["advantage"].to_pylist(), expect, atol=1e-18)


def _write_kl(tmp_path, rows):
    write_parquet(
        [
            {"run_id": "r", "iteration": 1, "prompt_id": g, "sample_index": i, "ref_logprobs": [-1.0], "kl": k}
            for g, i, k in rows
        ],
        REF_LOGPROBS,
        tmp_path / "ref.parquet",
    )


def test_kl_file_missing_a_response_is_an_error_naming_it(tmp_path):
    """Issue 28: a response absent from the KL file used to get no penalty, silently."""
    scores, groups = [1.0, 0.0, 1.0, 0.0], ["a", "a", "b", "b"]
    _write_batch(tmp_path, scores, groups, [1] * 4, range(4))
    _write_kl(tmp_path, [("a", 0, 0.1), ("a", 1, 0.2), ("b", 3, 0.4)])  # ("b", 2) is missing
    params = {**DEFAULTS, "kl_reward_coef": 0.5}
    with pytest.raises(ValueError) as e:
        compute_advantages(
            "grpo", tmp_path / "rollouts.parquet", tmp_path / "grades.parquet", params, kl=tmp_path / "ref.parquet"
        )
    assert str(e.value).startswith(
        f"{tmp_path / 'ref.parquet'}: response (prompt_id='b', sample_index=2) of run 'r' iteration 1 has no kl. "
        "A KL penalty in the reward needs exactly one kl per response"
    )


def test_kl_file_with_a_duplicated_or_null_response_is_an_error(tmp_path):
    scores, groups = [1.0, 0.0, 1.0, 0.0], ["a", "a", "b", "b"]
    _write_batch(tmp_path, scores, groups, [1] * 4, range(4))
    _write_kl(tmp_path, [("a", 0, 0.1), ("a", 0, 0.1), ("a", 1, None), ("b", 2, 0.3), ("b", 3, 0.4)])
    with pytest.raises(
        ValueError,
        match=r"\(prompt_id='a', sample_index=0\) of run 'r' iteration 1 has 2 kl rows; "
        r"response \(prompt_id='a', sample_index=1\) of run 'r' iteration 1 has no kl\.",
    ):
        compute_advantages(
            "grpo",
            tmp_path / "rollouts.parquet",
            tmp_path / "grades.parquet",
            {**DEFAULTS, "kl_reward_coef": 0.5},
            kl=tmp_path / "ref.parquet",
        )
