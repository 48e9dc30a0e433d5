"""Stage: tree_rollouts. SPO-tree's rollouts (spo.md §1.2, §2.2): one tree per question, grown level by level.

Every level is one batch of prefix continuations on the live engine across all questions, by token ids
(the reference decodes and re-tokenises each level: spo.md §8 item 2). A child that stops early is a
leaf and is graded on its whole response (its ancestors' tokens + its own). A child cut by the response
or context budget is a truncated leaf and scores reward.truncated without being graded (the reference
grades it: §8 item 6; tree.grade_truncated=true does too). With rollout.top_p < 1 and
spo.top_p_probs=recompute, every node's sampling_logprobs are the generating policy's at the sampling
temperature without top-p (a teacher-forced pass), the reference's pi_old, instead of the sampler's
nucleus-renormalised ones. Writes tree_nodes.parquet, roots included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prefect import task

from configs.schema import Config
from storage.handles import FileRef
from storage.layout import RunLayout
from storage.metrics import write_metrics
from storage.parquet import read_parquet, write_parquet
from storage.schemas import PROMPTS, TREE_NODES
from tasks.algos.metrics import grade_metrics
from tasks.algos.seeding import derive_seed, iteration_prompts
from tasks.algos.spo_tree import child_budget, expands
from tasks.common import STAGE, StageOutput
from tasks.datasets.graders import grade_all, scheme_of
from tasks.engines.live import continue_prefixes, get_engine
from tasks.models import engine_dtype
from tasks.teacher_forcing import policy_logprobs, recomputes_top_p


@dataclass
class Node:
    node_id: str
    parent_id: str | None
    prompt_index: int
    depth: int
    child_index: int
    response: list[int]  # the ancestors' tokens + this node's own (the response so far)
    token_ids: list[int] = field(default_factory=list)  # this node's own tokens
    logprobs: list[float] = field(default_factory=list)
    seed: int = 0
    finish_reason: str | None = None
    is_leaf: bool = False


def grow(engine, prompts: list[list[int]], prompt_ids: list[str], cfg: Config, seed_key: tuple) -> list[Node]:
    """Every node of one tree per prompt, roots first, in level order."""
    t, ro = cfg.tree, cfg.rollout
    levels = len(t.branching)
    nodes = [Node(pid, None, i, 0, -1, []) for i, pid in enumerate(prompt_ids)]
    frontier = list(nodes)
    for level, width in enumerate(t.branching):
        if not frontier:
            break
        budgets = [
            child_budget(
                level,
                levels,
                t.segment_tokens,
                ro.max_tokens - len(n.response),
                ro.max_model_len - len(prompts[n.prompt_index]) - len(n.response),
            )
            for n in frontier
        ]
        outs = continue_prefixes(
            engine,
            [prompts[n.prompt_index] + n.response for n in frontier],
            width,
            seed_key=seed_key,
            max_tokens=budgets,
            temperature=ro.temperature,
            top_p=ro.top_p,
            stop=ro.stop,
            max_model_len=ro.max_model_len,
            prefix_keys=[n.node_id for n in frontier],
        )
        nxt = []
        for parent, budget, children in zip(frontier, budgets, outs):
            for j, c in enumerate(children):
                response = parent.response + c.token_ids
                child = Node(
                    f"{parent.node_id}/{j}",
                    parent.node_id,
                    parent.prompt_index,
                    level + 1,
                    j,
                    response,
                    c.token_ids,
                    c.logprobs,
                    derive_seed(*seed_key, parent.node_id, j),
                    c.finish_reason,
                )
                context_left = ro.max_model_len - len(prompts[parent.prompt_index]) - len(response)
                child.is_leaf = not expands(
                    level,
                    levels,
                    c.finish_reason,
                    len(c.token_ids),
                    budget,
                    t.segment_tokens,
                    ro.max_tokens - len(response),
                    context_left,
                )
                nodes.append(child)
                if not child.is_leaf:
                    nxt.append(child)
        frontier = nxt
    return nodes


def grading_finish_reasons(finish_reasons: list[str | None], grade_truncated: bool) -> list[str | None]:
    """The finish reasons the grader sees: with tree.grade_truncated a leaf cut by a budget ('length', which
    the grader scores reward.truncated) is graded on its text as if it had stopped, as the reference does."""
    return ["stop" if grade_truncated and f == "length" else f for f in finish_reasons]


def recompute_logprobs(cfg: Config, policy: str, prompts: list[list[int]], nodes: list[Node]) -> None:
    """Replace every non-root node's log-probs by the generating policy's (tasks/teacher_forcing.policy_logprobs):
    its tokens after the prompt and its ancestors' tokens."""
    kids = [n for n in nodes if n.parent_id is not None]
    lps = policy_logprobs(
        cfg,
        policy,
        [prompts[n.prompt_index] + n.response[: len(n.response) - len(n.token_ids)] for n in kids],
        [n.token_ids for n in kids],
    )
    for n, lp in zip(kids, lps):
        n.logprobs = lp


@task(name="tree_rollouts", **STAGE)
def tree_rollouts(
    cfg: Config,
    layout: RunLayout,
    policy: FileRef,
    policy_version: int,
    train: FileRef,
    iteration: int,
    code_version: str,
) -> StageOutput:
    from tasks.tokens import load_tokenizer

    table = read_parquet(train, PROMPTS)
    chosen = iteration_prompts(len(table), cfg.rollout.prompts_per_iteration, iteration, cfg.run.seed)
    all_ids, all_pids = table["prompt_token_ids"].to_pylist(), table["prompt_id"].to_pylist()
    refs = table["reference"].to_pylist()
    prompts, pids = [all_ids[i] for i in chosen], [all_pids[i] for i in chosen]
    engine, timings = get_engine(policy.path, cfg.rollout, engine_dtype(cfg), cfg.run.seed)
    t0 = time.perf_counter()
    nodes = grow(engine, prompts, pids, cfg, (layout.run_id, iteration, "tree"))
    gen_seconds = time.perf_counter() - t0
    if recomputes_top_p(cfg):
        recompute_logprobs(cfg, policy.path, prompts, nodes)

    leaves = [n for n in nodes if n.is_leaf]
    tok = load_tokenizer(policy.path)
    # A leaf cut by a budget reaches the grader with finish 'length', which scores reward.truncated.
    grades = grade_all(
        cfg.data.task,
        [tok.decode(n.response, skip_special_tokens=True) for n in leaves],
        [refs[chosen[n.prompt_index]] for n in leaves],
        grading_finish_reasons([n.finish_reason for n in leaves], cfg.tree.grade_truncated),
        scheme_of(cfg.reward),
    )
    grade_of = {n.node_id: g for n, g in zip(leaves, grades)}
    rows = []
    for n in nodes:
        g = grade_of.get(n.node_id)
        rows.append(
            {
                "run_id": layout.run_id,
                "iteration": iteration,
                "policy_version": policy_version,
                "prompt_id": pids[n.prompt_index],
                "node_id": n.node_id,
                "parent_id": n.parent_id,
                "depth": n.depth,
                "child_index": n.child_index,
                "token_start": len(n.response) - len(n.token_ids),
                "token_end": len(n.response),
                "token_ids": n.token_ids,
                "sampling_logprobs": n.logprobs,
                "seed": n.seed,
                "finish_reason": n.finish_reason,
                "is_leaf": n.is_leaf,
                "score": g.score if g else float("nan"),
                "status": g.status if g else None,
            }
        )
    ref = write_parquet(rows, TREE_NODES, layout.tree_nodes(iteration))
    levels = len(cfg.tree.branching)
    n_tok = sum(len(n.token_ids) for n in nodes)
    m = grade_metrics([g.score for g in grades], [g.status for g in grades])
    metrics = write_metrics(
        layout.metrics(iteration, "tree"),
        layout.run_id,
        iteration,
        "tree",
        {
            **timings,
            **m,
            "generation_seconds": gen_seconds,
            "generated_tokens": n_tok,
            "tokens_per_second": n_tok / max(gen_seconds, 1e-9),
            "trees": len(prompts),
            "nodes_per_tree": (len(nodes) - len(prompts)) / max(1, len(prompts)),
            "leaves_per_tree": len(leaves) / max(1, len(prompts)),
            "early_leaves_per_tree": sum(n.depth < levels and n.finish_reason != "length" for n in leaves)
            / max(1, len(prompts)),
            "truncated_leaves_per_tree": sum(n.finish_reason == "length" for n in leaves) / max(1, len(prompts)),
            "mean_leaf_response_tokens": sum(len(n.response) for n in leaves) / max(1, len(leaves)),
        },
    )
    return StageOutput(artifact=ref, metrics=metrics)
