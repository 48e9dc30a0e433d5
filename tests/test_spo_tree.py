"""SPO-tree: golden trees built by hand (values, advantages, kept edges), budget rules, SQL == numpy, and the
replay buffer's ageing, caps and resume."""

import hashlib
import math
import random

import numpy as np
import pyarrow as pa
import pytest

from storage.advantages import compute_tree_advantages, replay_take
from storage.parquet import write_parquet
from storage.schemas import REPLAY_BUFFER, TREE_NODES
from tasks.algos.spo_tree import (
    child_budget,
    edge_advantages,
    expands,
    kept_edges,
    node_values,
    replay_select,
)

NAN = math.nan


def tree(spec: dict[str, float | None]) -> tuple[list[str], list[int], list[float]]:
    """{"r": None, "r/0": 1.0, "r/1": None, "r/1/0": 0.0, ...} -> (ids, parent indices, scores).

    Ids are paths; a value is a leaf's score, None an interior node (or NaN for an ungraded leaf)."""
    ids = list(spec)
    index = {n: i for i, n in enumerate(ids)}
    parent = [index[n.rsplit("/", 1)[0]] if "/" in n else -1 for n in ids]
    score = [NAN if v is None else v for v in spec.values()]
    return ids, parent, score


def by_id(ids, values) -> dict[str, float]:
    return {n: float(v) for n, v in zip(ids, values)}


# Uniform 2-2: a has leaves 1, 0; b has leaves 1, 1.
UNIFORM = {"r": None, "r/0": None, "r/1": None, "r/0/0": 1.0, "r/0/1": 0.0, "r/1/0": 1.0, "r/1/1": 1.0}
# An early leaf at depth 1 (score 1) beside a subtree with leaves 0, 0, 1.
EARLY = {"r": None, "r/0": 1.0, "r/1": None, "r/1/0": 0.0, "r/1/1": 0.0, "r/1/2": 1.0}


def test_uniform_tree_values_advantages_and_dropped_zero_edges():
    ids, parent, score = tree(UNIFORM)
    for mode in ("leaves", "children"):  # the same when every branch reaches the last level
        v = by_id(ids, node_values(parent, score, mode))
        assert v == {"r": 0.75, "r/0": 0.5, "r/1": 1.0, "r/0/0": 1.0, "r/0/1": 0.0, "r/1/0": 1.0, "r/1/1": 1.0}
    values = node_values(parent, score)
    adv = by_id(ids, edge_advantages(parent, values))
    assert math.isnan(adv.pop("r"))
    assert adv == {"r/0": -0.25, "r/1": 0.25, "r/0/0": 0.5, "r/0/1": -0.5, "r/1/0": 0.0, "r/1/1": 0.0}
    keep = dict(zip(ids, kept_edges(parent, edge_advantages(parent, values))))
    assert [n for n, k in keep.items() if k] == ["r/0", "r/1", "r/0/0", "r/0/1"]
    assert all(dict(zip(ids, kept_edges(parent, edge_advantages(parent, values), drop_zero=False)))[n] for n in ids[1:])


def test_early_leaf_leaf_mean_versus_the_references_mean_of_children():
    ids, parent, score = tree(EARLY)
    leaves = by_id(ids, node_values(parent, score, "leaves"))
    assert leaves["r"] == pytest.approx(0.5) and leaves["r/1"] == pytest.approx(1 / 3)
    children = by_id(ids, node_values(parent, score, "children"))
    assert children["r"] == pytest.approx(2 / 3)  # the early leaf weighs as much as the whole subtree
    a = by_id(ids, edge_advantages(parent, node_values(parent, score, "leaves")))
    assert a["r/0"] == pytest.approx(0.5) and a["r/1"] == pytest.approx(-1 / 6)
    assert a["r/1/2"] == pytest.approx(2 / 3) and a["r/1/0"] == pytest.approx(-1 / 3)
    a = by_id(ids, edge_advantages(parent, node_values(parent, score, "children")))
    assert a["r/0"] == pytest.approx(1 / 3) and a["r/1"] == pytest.approx(-1 / 3)
    # Sibling-std normalisation: siblings r/0, r/1 have values 1 and 1/3, population std 1/3.
    a = by_id(ids, edge_advantages(parent, node_values(parent, score, "leaves"), sibling_std=True, eps=0.0))
    assert a["r/0"] == pytest.approx(0.5 / (1 / 3)) and a["r/1"] == pytest.approx((-1 / 6) / (1 / 3))


def test_truncated_and_ungraded_leaves():
    # A truncated leaf carries the penalty (here -1) as its score; an ungraded (NaN) leaf is left out.
    ids, parent, score = tree({"r": None, "r/0": -1.0, "r/1": None, "r/1/0": 1.0, "r/1/1": NAN})
    v = by_id(ids, node_values(parent, score))
    assert v["r/1"] == 1.0 and v["r"] == 0.0 and math.isnan(v["r/1/1"])
    keep = dict(zip(ids, kept_edges(parent, edge_advantages(parent, node_values(parent, score)))))
    assert keep == {"r": False, "r/0": True, "r/1": True, "r/1/0": False, "r/1/1": False}


def test_single_child_chain_has_no_signal():
    ids, parent, score = tree({"r": None, "r/0": None, "r/0/0": None, "r/0/0/0": 1.0})
    for mode in ("leaves", "children"):
        values = node_values(parent, score, mode)
        assert list(values) == [1.0, 1.0, 1.0, 1.0]
        assert not kept_edges(parent, edge_advantages(parent, values)).any()


def test_budgets_and_which_children_expand():
    # Interior levels: M tokens, capped by the response budget and the context; the last level: the rest.
    assert child_budget(0, 3, 8, response_room=48, context_room=100) == 8
    assert child_budget(2, 3, 8, response_room=32, context_room=100) == 32
    assert child_budget(0, 3, 8, response_room=5, context_room=100) == 5
    assert child_budget(1, 3, 8, response_room=40, context_room=3) == 3
    # A full interior segment with room left expands; an early stop, the last level, or a budget cut is a leaf.
    assert expands(0, 3, "length", 8, 8, 8, response_room_after=40, context_room_after=50)
    assert not expands(0, 3, "stop", 5, 8, 8, 43, 50)
    assert not expands(2, 3, "length", 32, 32, 8, 0, 50)
    assert not expands(0, 3, "length", 5, 5, 8, 0, 50)  # cut by the response budget: a truncated leaf
    assert not expands(0, 3, "length", 3, 3, 8, 40, 0)  # cut by the context
    assert not expands(1, 3, "length", 8, 8, 8, 0, 50)  # no response budget left after a full segment


def random_forest(rng: random.Random, questions: int) -> dict[str, float | None]:
    spec: dict[str, float | None] = {}

    def grow(node: str, depth: int) -> None:
        kids = rng.randint(1, 3)
        spec[node] = None
        for j in range(kids):
            child = f"{node}/{j}"
            if depth == 2 or rng.random() < 0.3:  # last level, or an early leaf
                spec[child] = rng.choice([0.0, 1.0, 1.0, -1.0, NAN])
            else:
                grow(child, depth + 1)

    for q in range(questions):
        grow(f"q{q}", 0)
    return spec


def nodes_table(spec: dict[str, float | None]) -> pa.Table:
    ids, parent, _ = tree(spec)
    rows = [
        {
            "run_id": "r",
            "iteration": 1,
            "policy_version": 0,
            "prompt_id": n.split("/")[0],
            "node_id": n,
            "parent_id": ids[p] if p >= 0 else None,
            "depth": n.count("/"),
            "child_index": int(n.rsplit("/", 1)[1]) if "/" in n else -1,
            "token_start": 0,
            "token_end": 1,
            "token_ids": [1],
            "sampling_logprobs": [-0.5],
            "seed": 0,
            "finish_reason": None if p < 0 else "stop",
            "is_leaf": v is not None,
            "score": NAN if v is None else v,
            "status": None if v is None else "ok",
        }
        for n, p, v in zip(ids, parent, spec.values())
    ]
    return pa.Table.from_pylist(rows, schema=TREE_NODES)


@pytest.mark.parametrize("mode", ["leaves", "children"])
@pytest.mark.parametrize("sibling_std", [False, True])
def test_sql_equals_numpy_on_random_trees(tmp_path, mode, sibling_std):
    rng = random.Random(7)
    spec = random_forest(rng, 12)
    path = tmp_path / "nodes.parquet"
    write_parquet(nodes_table(spec), TREE_NODES, path)
    got = compute_tree_advantages(
        "spo_tree", path, {"value_mode": mode, "sibling_std": sibling_std, "eps": 1e-8, "drop_zero": True}
    )
    ids, parent, score = tree(spec)
    values = node_values(parent, score, mode)
    adv = edge_advantages(parent, values, sibling_std=sibling_std, eps=1e-8)
    keep = kept_edges(parent, adv)
    sql = {r["node_id"]: r for r in got.to_pylist()}
    assert set(sql) == set(ids)
    for n, v, a, k in zip(ids, values, adv, keep):
        r = sql[n]
        assert (math.isnan(v) and math.isnan(r["value"])) or r["value"] == pytest.approx(v, abs=1e-12), n
        if math.isfinite(a):
            assert r["advantage"] == pytest.approx(a, rel=1e-9, abs=1e-12), n
        else:
            assert r["advantage"] is None or not math.isfinite(r["advantage"]), n
        assert r["kept"] == bool(k), n
    assert sum(keep) > 0 and sum(~keep) > 0  # the random trees exercise both outcomes


def three_equal_subtrees(leaves: list[float]) -> dict[str, float | None]:
    """A root with 3 children, each over the same leaf rewards: every child's value equals the root's."""
    spec: dict[str, float | None] = {"r": None}
    for c in range(3):
        spec[f"r/{c}"] = None
        spec.update({f"r/{c}/{j}": v for j, v in enumerate(leaves)})
    return spec


@pytest.mark.parametrize("mode, leaves", [("children", [1.0, 0.0, 0.0]), ("leaves", [0.1, 0.2, 0.4])])
def test_sibling_std_equal_subtrees_keep_no_root_edges(tmp_path, mode, leaves):
    """Issue 28: V(child) - V(root) is 0 up to rounding (SQL's weighted mean gives 5.6e-17 / 2.8e-17); divided
    by a sibling std of 0 + eps it used to become ~5e-9 and pass the |A| > 1e-9 test, so all 3 edges were
    kept. Zero is decided on the difference, before the division: A = 0 exactly, and the edge is dropped."""
    spec = three_equal_subtrees(leaves)
    path = tmp_path / "nodes.parquet"
    write_parquet(nodes_table(spec), TREE_NODES, path)
    params = {"value_mode": mode, "sibling_std": True, "eps": 1e-8, "drop_zero": True}
    sql = {r["node_id"]: r for r in compute_tree_advantages("spo_tree", path, params).to_pylist()}
    root_edges = ["r/0", "r/1", "r/2"]
    assert any(sql[n]["value"] != sql[n]["parent_value"] for n in root_edges)  # the case rounds in SQL
    assert [(sql[n]["advantage"], sql[n]["kept"]) for n in root_edges] == [(0.0, False)] * 3
    ids, parent, score = tree(spec)
    adv = by_id(ids, edge_advantages(parent, node_values(parent, score, mode), sibling_std=True, eps=1e-8))
    keep = dict(zip(ids, kept_edges(parent, list(adv.values()))))
    assert [(adv[n], keep[n]) for n in root_edges] == [(0.0, False)] * 3
    # The leaf edges below carry signal and are kept in both: r/0/0 - r/0 = 1 - 1/3 (children) or 0.1 - 0.7/3.
    assert sql["r/0/0"]["kept"] and keep["r/0/0"]
    assert sql["r/0/0"]["advantage"] == pytest.approx(adv["r/0/0"], rel=1e-12) != 0.0


def test_near_zero_difference_is_zero_before_the_sibling_std_division():
    # numpy twin given values that differ by one rounding step: the siblings' std is 0, so dividing first
    # would give 5.6e-17 / 1e-8 = 5.6e-9, above the 1e-9 zero threshold.
    v = 1 / 3
    values = [v, v + 5.551115123125783e-17, v + 5.551115123125783e-17, v]
    adv = edge_advantages([-1, 0, 0, 0], values, sibling_std=True, eps=1e-8)
    assert adv[1:].tolist() == [0.0, 0.0, 0.0]
    assert not kept_edges([-1, 0, 0, 0], adv).any()
    assert kept_edges([-1, 0, 0, 0], adv, drop_zero=False)[1:].all()
    # A real difference just above the threshold still counts, divided by the std as before.
    adv = edge_advantages([-1, 0, 0], [0.0, 2e-9, -2e-9], sibling_std=True, eps=0.0)
    assert adv[1:].tolist() == [1.0, -1.0]


def priority(seed: int, iteration: int, added: int, node: str) -> str:
    return hashlib.md5(f"{seed}/{iteration}/{added}/{node}".encode()).hexdigest()


def edges(added: int, questions: int, per_question: int) -> list[dict]:
    return [
        {
            "run_id": "r",
            "added_iteration": added,
            "policy_version": added - 1,
            "prompt_id": f"q{q}",
            "node_id": f"q{q}/{added}/{j}",
            "depth": 1,
            "advantage": (-1) ** j * (j + 1) / 10,
            "prefix_token_ids": [1, 2],
            "completion_token_ids": [3, 4, 5],
            "sampling_logprobs": [-0.01, -2.0, -0.5],
        }
        for q in range(questions)
        for j in range(per_question)
    ]


def take(buffer: pa.Table, fresh: list[dict], iteration: int, **kw) -> tuple[pa.Table, pa.Table]:
    pool = pa.concat_tables([buffer, pa.Table.from_pylist(fresh, schema=REPLAY_BUFFER)])
    params = {
        "iteration": iteration,
        "max_age": 3,
        "per_question": 4,
        "per_iteration": None,
        "seed": 0,
        "normalize": "none",
        "rho": None,
        "whiten_eps": 1e-8,
        **kw,
    }
    return replay_take(pool, params)


def test_replay_buffer_ageing_and_caps_over_iterations():
    buffer = REPLAY_BUFFER.empty_table()
    trained, sizes, seen = [], [], set()
    for it in range(1, 7):
        fresh = edges(it, questions=3, per_question=10) if it <= 2 else []
        pool = pa.concat_tables([buffer, pa.Table.from_pylist(fresh, schema=REPLAY_BUFFER)])
        taken, buffer = take(buffer, fresh, it)
        # numpy twin, same priorities
        live, chosen = replay_select(
            pool["added_iteration"].to_pylist(),
            pool["prompt_id"].to_pylist(),
            [priority(0, it, a, n) for a, n in zip(pool["added_iteration"].to_pylist(), pool["node_id"].to_pylist())],
            it,
            max_age=3,
            per_question=4,
            per_iteration=None,
        )
        expect = {n for n, c in zip(pool["node_id"].to_pylist(), chosen) if c}
        assert set(taken["node_id"].to_pylist()) == expect
        assert set(buffer["node_id"].to_pylist()) == {
            n for n, lv, c in zip(pool["node_id"].to_pylist(), live, chosen) if lv and not c
        }
        per_q = {}
        for q in taken["prompt_id"].to_pylist():
            per_q[q] = per_q.get(q, 0) + 1
        assert all(c <= 4 for c in per_q.values())
        assert all(it - a < 3 for a in taken["added_iteration"].to_pylist())  # nothing aged >= 3 trains
        assert taken["age"].to_pylist() == [it - a for a in taken["added_iteration"].to_pylist()]
        assert not seen & set(taken["node_id"].to_pylist())  # no edge trains twice
        seen |= set(taken["node_id"].to_pylist())
        trained.append(taken.num_rows)
        sizes.append(buffer.num_rows)
    # Iterations 1-3: 4 per question from plenty; 4: iteration-1 edges (age 3) are gone, so each question
    # offers only what is left of iteration 2's 10; 5: everything has aged out and the buffer is empty.
    assert trained[:3] == [12, 12, 12] and 0 < trained[3] <= 12 and trained[4:] == [0, 0]
    assert sizes[4] == sizes[5] == 0


def test_replay_per_iteration_cap_keeps_the_rest_and_batch_whitening():
    fresh = edges(1, questions=4, per_question=6)
    taken, left = take(REPLAY_BUFFER.empty_table(), fresh, 1, per_iteration=5)
    assert taken.num_rows == 5 and left.num_rows == 24 - 5
    assert not set(taken["node_id"].to_pylist()) & set(left["node_id"].to_pylist())
    # 'batch': train advantages are whitened over trained tokens (mask p < rho: 2 of 3 tokens per edge here).
    taken, _ = take(REPLAY_BUFFER.empty_table(), fresh, 1, normalize="batch", rho=0.9)
    a = np.array(taken["train_advantage"].to_pylist())
    assert abs(a.mean()) < 1e-9 and a.std() == pytest.approx(1.0, abs=1e-6)
    raw = np.array(taken["advantage"].to_pylist())
    assert np.allclose(a, (raw - raw.mean()) / np.sqrt(raw.var() + 1e-8))


def test_new_edges_carry_the_root_to_parent_tokens():
    from tasks.replay import new_edges

    spec = {"q": None, "q/0": None, "q/0/0": None, "q/0/0/0": 1.0, "q/1": 0.0}
    tokens = {"q": [], "q/0": [1, 2], "q/0/0": [3], "q/0/0/0": [4, 5], "q/1": [6]}
    nodes = nodes_table(spec)
    nodes = nodes.set_column(
        nodes.schema.get_field_index("token_ids"),
        "token_ids",
        pa.array([tokens[n] for n in nodes["node_id"].to_pylist()], pa.list_(pa.int32())),
    )
    adv = pa.table(
        {
            "node_id": list(spec),
            "prompt_id": ["q"] * 5,
            "depth": [0, 1, 2, 3, 1],
            "advantage": [None, 0.5, 0.5, 0.5, -0.5],
            "kept": [False, True, True, True, True],
        }
    )
    edges = {e["node_id"]: e for e in new_edges(nodes, adv)}
    assert set(edges) == {"q/0", "q/0/0", "q/0/0/0", "q/1"}
    assert edges["q/0"]["response_prefix"] == [] and edges["q/0"]["completion_token_ids"] == [1, 2]
    assert edges["q/0/0"]["response_prefix"] == [1, 2]
    assert edges["q/0/0/0"]["response_prefix"] == [1, 2, 3] and edges["q/0/0/0"]["completion_token_ids"] == [4, 5]
    assert edges["q/1"]["response_prefix"] == [] and edges["q/1"]["advantage"] == -0.5
