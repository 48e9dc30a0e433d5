"""SPO-tree, drawn: node values, edge advantages, leaf grades (the flow's markdown artifact and `segflow tree`).

q-17  V=0.42 (216 leaves)
├── /0  +0.08  V=0.50  "3 + 4 = 7"  (36 leaves)
│   ├── /0/0  -0.50  V=0.00  ...
"""

from __future__ import annotations

from collections.abc import Callable

from storage.handles import FileRef
from storage.parquet import read_parquet
from storage.schemas import TREE_ADVANTAGES, TREE_NODES


def read_tree(nodes: FileRef | str, advantages: FileRef | str) -> list[dict]:
    """One dict per node: the nodes table's columns + value, advantage, kept, n_leaves."""
    n = read_parquet(nodes, TREE_NODES).to_pylist()
    a = {r["node_id"]: r for r in read_parquet(advantages, TREE_ADVANTAGES).to_pylist()}
    return [{**r, **{k: a[r["node_id"]][k] for k in ("value", "advantage", "kept", "n_leaves")}} for r in n]


def fmt_value(x: float | None, signed: bool = False) -> str:
    """Two decimals (signed for advantages); "n/a" for a value the run did not estimate."""
    if x is None or x != x:  # None or NaN
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def tree_lines(
    rows: list[dict], question: str, decode: Callable[[list[int]], str] | None = None, max_chars: int = 40
) -> list[str]:
    """Box-drawing lines of one question's tree. Kept edges are marked `*`; leaves show score and status."""
    tree = [r for r in rows if r["prompt_id"] == question]
    if not tree:
        raise KeyError(
            f"question {question!r} has no tree here; questions: "
            f"{', '.join(sorted({r['prompt_id'] for r in rows})[:10])} ..."
        )
    kids: dict[str | None, list[dict]] = {}
    for r in tree:
        kids.setdefault(r["parent_id"], []).append(r)
    for v in kids.values():
        v.sort(key=lambda r: r["child_index"])
    root = kids[None][0]
    lines = [f"{question}  V={fmt_value(root['value'])} ({root['n_leaves']} leaves)"]

    def label(r: dict) -> str:
        text = ""
        if decode is not None:
            t = decode(r["token_ids"]).replace("\n", "\\n")
            text = f'  "{t[:max_chars]}{"..." if len(t) > max_chars else ""}"'
        leaf = f"  leaf {fmt_value(r['score'])} {r['status']}" if r["is_leaf"] else f"  ({r['n_leaves']} leaves)"
        mark = "*" if r["kept"] else " "
        return (
            f"{r['node_id'][len(question) :]}  {mark}A={fmt_value(r['advantage'], True)}  V={fmt_value(r['value'])}  "
            f"{len(r['token_ids'])} tok{text}{leaf}"
        )

    def walk(node_id: str, indent: str) -> None:
        children = kids.get(node_id, [])
        for i, c in enumerate(children):
            last = i == len(children) - 1
            lines.append(f"{indent}{'└── ' if last else '├── '}{label(c)}")
            walk(c["node_id"], indent + ("    " if last else "│   "))

    walk(root["node_id"], "")
    return lines


def tree_markdown(
    rows: list[dict], iteration: int, questions: int, decode: Callable[[list[int]], str] | None = None
) -> str:
    """Markdown for the first `questions` trees of an iteration (a code block per tree)."""
    chosen = sorted({r["prompt_id"] for r in rows})[:questions]
    parts = [
        f"## SPO-tree, iteration {iteration}",
        "",
        "`A` = V(node) - V(parent), `*` = kept edge (trained), `V` = node value.",
    ]
    for q in chosen:
        parts += ["", "```", *tree_lines(rows, q, decode), "```"]
    return "\n".join(parts)
