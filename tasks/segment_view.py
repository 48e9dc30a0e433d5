"""SPO-chain segments, drawn: responses cut into segments with cutpoints, values and advantages
(the flow's markdown artifact and `segflow segments`).

    q-0017 #3  reward 1.00 (ok), 25 tokens, 3 segments
      seg  tokens  cut  V start -> end   A raw   A trained
      0    0-4     0    0.44 -> 0.25     -0.19   -0.41
      1    5-14    2    0.25 -> 0.75     +0.50   +1.02
      2    15-24   1    0.75 -> 1.00     +0.25   +0.48
      3 + 4 ⟦=⟧ 7 ‖ ⟦,⟧ 7 - 2 ⟦=⟧ 5 ‖ ...

Cutpoints (p < spo.rho) are the tokens in ⟦ ⟧ and segments are separated by ‖. With the probability
mask on at the same rho (the presets), the cutpoints are exactly the tokens that train.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from storage.layout import RunLayout
from storage.parquet import read_parquet
from storage.schemas import GRADES, ROLLOUTS
from tasks.algos.spo_chain import segment_advantages
from tasks.tree_view import fmt_value


def read_segment_views(layout: RunLayout, iteration: int) -> list[dict]:
    """One dict per response of `iteration`, in (prompt_id, sample_index) order: prompt_id, sample_index,
    token_ids, score, status and `segments`, each with index, start, end, cutpoints, v_start, v_end,
    raw (V(end) - V(start), 0 where a value is unknown) and advantage (as trained, after normalisation)."""
    paths = [
        layout.rollouts(iteration),
        layout.grades(iteration),
        layout.segments(iteration),
        layout.segment_advantages(iteration),
    ]
    missing = [p.name for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"iteration {iteration} of {layout.run_id} has no {', '.join(missing)}")
    rollouts = read_parquet(paths[0], ROLLOUTS).to_pylist()
    grades = {(g["prompt_id"], g["sample_index"]): g for g in read_parquet(paths[1], GRADES).to_pylist()}
    # No schema check: files from before the `cutpoints` and `prefix_id` columns still draw. Rows with a
    # prefix_id are trained Monte Carlo continuations (spo.mc_train), not segments of a response.
    segs = [s for s in read_parquet(paths[2]).to_pylist() if s.get("prefix_id") is None]
    adv = {
        (a["prompt_id"], a["sample_index"], a["segment_index"]): a["advantage"]
        for a in read_parquet(paths[3]).to_pylist()
        if a.get("prefix_id") is None
    }
    raw = segment_advantages(
        np.array([s["v_start"] for s in segs], dtype=float), np.array([s["v_end"] for s in segs], dtype=float)
    )
    by_response: dict[tuple[str, int], list[dict]] = {}
    for s, a in zip(segs, raw):
        key = (s["prompt_id"], s["sample_index"])
        by_response.setdefault(key, []).append(
            {
                "index": s["segment_index"],
                "start": s["start_token"],
                "end": s["end_token"],
                "cutpoints": list(s.get("cutpoints") or []),
                "num_cutpoints": s["num_cutpoints"],
                "v_start": s["v_start"],
                "v_end": s["v_end"],
                "raw": float(a),
                "advantage": adv.get((*key, s["segment_index"]), float("nan")),
            }
        )
    out = []
    for r in rollouts:
        key = (r["prompt_id"], r["sample_index"])
        g = grades.get(key, {})
        out.append(
            {
                "prompt_id": key[0],
                "sample_index": key[1],
                "token_ids": r["completion_token_ids"],
                "score": g.get("score", float("nan")),
                "status": g.get("status", "?"),
                "segments": sorted(by_response.get(key, []), key=lambda x: x["index"]),
            }
        )
    return sorted(out, key=lambda v: (v["prompt_id"], v["sample_index"]))


def pick(views: list[dict], n: int) -> list[dict]:
    """`n` responses worth drawing: several segments, correct and wrong ones alternating, one per prompt
    while there are enough prompts. Deterministic (the views' order)."""
    pool = [v for v in views if len(v["segments"]) > 1] or views
    chosen: list[dict] = []
    prompts: set[str] = set()
    for distinct in (True, False):
        queues = [[v for v in pool if v["status"] == "ok"], [v for v in pool if v["status"] != "ok"]]
        turn = len(chosen)
        while len(chosen) < n and any(queues):
            queue = queues[turn % 2] or queues[(turn + 1) % 2]
            v = queue.pop(0)
            if any(v is c for c in chosen) or (distinct and v["prompt_id"] in prompts):
                continue
            chosen.append(v)
            prompts.add(v["prompt_id"])
            turn += 1
    return chosen


def highlighted(
    view: dict,
    decode: Callable[[list[int]], str],
    cut: Callable[[str], str] = lambda t: f"⟦{t}⟧",
    sep: str = " ‖ ",
    plain: Callable[[str], str] = lambda t: t,
) -> str:
    """The response's text, segment by segment (joined by `sep`), cutpoint tokens wrapped by `cut` and the
    rest by `plain`. Runs of non-cutpoint tokens are decoded together, so multi-token characters survive."""
    ids = view["token_ids"]
    parts = []
    for s in view["segments"]:
        marks = [c for c in s["cutpoints"] if s["start"] <= c < s["end"]]
        text, at = "", s["start"]
        for c in marks:
            if c > at:
                text += plain(decode(ids[at:c]))
            text += cut(decode([ids[c]]))
            at = c + 1
        if at < s["end"]:
            text += plain(decode(ids[at : s["end"]]))
        parts.append(text)
    return sep.join(parts)


def segment_lines(view: dict, decode: Callable[[list[int]], str] | None = None, **marks) -> list[str]:
    """Header, a row per segment, and (with `decode`) the highlighted text; `marks` go to `highlighted`."""
    segs = view["segments"]
    lines = [
        f"{view['prompt_id']} #{view['sample_index']}  reward {fmt_value(view['score'])} ({view['status']}), "
        f"{len(view['token_ids'])} tokens, {len(segs)} segment{'s' * (len(segs) != 1)}",
        "  seg  tokens   cut  V start -> end   A raw   A trained",
    ]
    for s in segs:
        span = f"{s['start']}-{s['end'] - 1}" if s["end"] > s["start"] else "-"
        lines.append(
            f"  {s['index']:<4} {span:<8} {s['num_cutpoints']:<4} {fmt_value(s['v_start']):>7} -> "
            f"{fmt_value(s['v_end']):<7} {fmt_value(s['raw'], True):>6}  {fmt_value(s['advantage'], True):>8}"
        )
    if decode is not None and segs:
        lines.append("  " + highlighted(view, lambda ids: decode(ids).replace("\n", "\\n"), **marks))
    return lines


def segments_markdown(
    views: list[dict], iteration: int, n: int, decode: Callable[[list[int]], str] | None = None
) -> str:
    """Markdown for `n` picked responses of an iteration (a code block each)."""
    parts = [
        f"## SPO-chain segments, iteration {iteration}",
        "",
        "Segments are separated by ‖, cutpoints (p < spo.rho) are in ⟦ ⟧. `A raw` = V(end) - V(start); "
        "`A trained` after spo.normalize. V of the prompt is its group's mean reward, V of the last "
        "position the response's own.",
    ]
    for v in pick(views, n):
        parts += ["", "```", *segment_lines(v, decode), "```"]
    return "\n".join(parts)
