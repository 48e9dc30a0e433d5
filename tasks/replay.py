"""Stage: replay_buffer. SPO-tree's replay buffer across iterations (spo.md §2.2, App. D).

The buffer's state after iteration k is a Parquet file (replay_buffer.parquet, schema REPLAY_BUFFER), an
output of this cached stage. Iteration k+1 reads it as an input, so a resumed run continues from exactly
the state the interrupted one reached, and rerunning a finished iteration reproduces it byte for byte.
Each iteration: add this iteration's kept edges, drop edges aged >= tree.buffer_age, take at most
tree.edges_per_question per question (and tree.edges_per_iteration overall) by a seeded random draw in
DuckDB (storage/sql/replay_take.sql). Taken edges go to train_edges.parquet and leave the buffer.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
from prefect import task

from configs.schema import Config
from storage.advantages import replay_take
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import (
    PROMPTS,
    REPLAY_BUFFER,
    TRAIN_EDGES,
    TREE_ADVANTAGES,
    TREE_NODES,
)
from tasks.common import STAGE, StageOutput
from tasks.train_samples import edge_samples, write_train_samples


def new_edges(nodes: pa.Table, advantages: pa.Table) -> list[dict]:
    """This iteration's kept edges: the node's own tokens and log-probs, and the response tokens before
    it (its ancestors' tokens; the prompt is prepended by the caller)."""
    by_id = {n: i for i, n in enumerate(nodes["node_id"].to_pylist())}
    parent = nodes["parent_id"].to_pylist()
    tokens = nodes["token_ids"].to_pylist()
    logprobs = nodes["sampling_logprobs"].to_pylist()

    def response_prefix(i: int) -> list[int]:
        chain = []
        while parent[i] is not None and parent[by_id[parent[i]]] is not None:
            i = by_id[parent[i]]
            chain.append(tokens[i])
        return [t for seg in reversed(chain) for t in seg]

    kept = advantages.filter(advantages["kept"])
    return [
        {
            "prompt_id": pid,
            "node_id": node_id,
            "depth": depth,
            "advantage": adv,
            "response_prefix": response_prefix(by_id[node_id]),
            "completion_token_ids": tokens[by_id[node_id]],
            "sampling_logprobs": logprobs[by_id[node_id]],
        }
        for node_id, pid, depth, adv in zip(
            kept["node_id"].to_pylist(),
            kept["prompt_id"].to_pylist(),
            kept["depth"].to_pylist(),
            kept["advantage"].to_pylist(),
        )
    ]


@task(name="replay_buffer", **STAGE)
def replay_buffer(
    cfg: Config,
    layout: RunLayout,
    previous: FileRef | None,
    nodes: FileRef,
    advantages: FileRef,
    train: FileRef,
    iteration: int,
    code_version: str,
) -> StageOutput:
    """`previous` is the buffer state after the previous iteration (None at the first)."""
    t = cfg.tree
    prompts = read_parquet(train, PROMPTS)
    prompt_ids = dict(zip(prompts["prompt_id"].to_pylist(), prompts["prompt_token_ids"].to_pylist()))
    nodes_t, adv_t = read_parquet(nodes, TREE_NODES), read_parquet(advantages, TREE_ADVANTAGES)
    version = nodes_t["policy_version"][0].as_py() if nodes_t.num_rows else iteration - 1
    fresh = new_edges(nodes_t, adv_t)
    rows = [
        {
            "run_id": layout.run_id,
            "added_iteration": iteration,
            "policy_version": version,
            "prompt_id": r["prompt_id"],
            "node_id": r["node_id"],
            "depth": r["depth"],
            "advantage": r["advantage"],
            "prefix_token_ids": prompt_ids[r["prompt_id"]] + r["response_prefix"],
            "completion_token_ids": r["completion_token_ids"],
            "sampling_logprobs": r["sampling_logprobs"],
        }
        for r in fresh
    ]
    pool = pa.Table.from_pylist(rows, schema=REPLAY_BUFFER)
    if previous is not None:
        pool = pa.concat_tables([read_parquet(previous, REPLAY_BUFFER), pool])
    taken, left = replay_take(
        pool,
        {
            "iteration": iteration,
            "max_age": t.buffer_age,
            "per_question": t.edges_per_question,
            "per_iteration": t.edges_per_iteration,
            "seed": cfg.run.seed,
            "normalize": cfg.spo.normalize,
            "rho": cfg.train.prob_mask_rho,
            "whiten_eps": cfg.spo.whiten_eps,
        },
    )
    state = write_parquet(left, REPLAY_BUFFER, layout.replay_buffer(iteration))
    ref = write_parquet(taken, TRAIN_EDGES, layout.train_edges(iteration))
    samples = write_train_samples(layout.train_samples(iteration), layout.run_id, iteration, edge_samples(ref.path))
    ages = Counter(taken["age"].to_pylist() + [iteration - a for a in left["added_iteration"].to_pylist()])
    n_train_tokens = sum(len(c) for c in taken["completion_token_ids"].to_pylist())
    metrics = write_metrics(
        layout.metrics(iteration, "replay"),
        layout.run_id,
        iteration,
        "replay",
        {
            "edges_added": len(rows),
            "edges_expired": pool.num_rows - taken.num_rows - left.num_rows,
            "edges_trained": taken.num_rows,
            "buffer_size": left.num_rows,
            "trained_edge_tokens": n_train_tokens,
            "questions_trained": len(set(taken["prompt_id"].to_pylist())),
            **{f"buffer_age_{a}": float(ages.get(a, 0)) for a in range(t.buffer_age)},
        },
    )
    return StageOutput(artifact=ref, metrics=metrics, state=state, side=samples)
