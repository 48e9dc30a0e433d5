"""The SPO-chain segments view (tasks/segment_view.py): text, marks, rows and which responses are drawn."""

from __future__ import annotations

import math

from tasks.segment_view import highlighted, pick, segment_lines, segments_markdown

TEXT = "3+4=7,7-2=5"
DECODE = lambda ids: "".join(TEXT[i] for i in ids)  # noqa: E731 - one character per token id


def _seg(index, start, end, cutpoints, v_start, v_end, advantage):
    raw = 0.0 if math.isnan(v_start) else v_end - v_start
    return {
        "index": index,
        "start": start,
        "end": end,
        "cutpoints": cutpoints,
        "num_cutpoints": len(cutpoints),
        "v_start": v_start,
        "v_end": v_end,
        "raw": raw,
        "advantage": advantage,
    }


def _view(prompt="q-1", sample=0, status="ok", score=1.0, segments=None):
    segs = (
        segments
        if segments is not None
        else [
            _seg(0, 0, 3, [], 0.5, 0.25, -0.4),
            _seg(1, 3, 9, [3, 6], 0.25, 0.75, 0.9),
            _seg(2, 9, 11, [9], 0.75, 1.0, 0.5),
        ]
    )
    return {
        "prompt_id": prompt,
        "sample_index": sample,
        "token_ids": list(range(11)),
        "score": score,
        "status": status,
        "segments": segs,
    }


def test_cutpoints_are_marked_and_segments_separated():
    assert highlighted(_view(), DECODE) == "3+4 ‖ ⟦=⟧7,⟦7⟧-2 ‖ ⟦=⟧5"
    marked = highlighted(_view(), DECODE, cut=lambda t: f"<{t}>", sep="|", plain=str.upper)
    assert marked == "3+4|<=>7,<7>-2|<=>5"
    # Files written before the cutpoints column: segments only.
    no_cuts = _view(segments=[{**s, "cutpoints": []} for s in _view()["segments"]])
    assert highlighted(no_cuts, DECODE) == "3+4 ‖ =7,7-2 ‖ =5"


def test_rows_give_spans_values_and_both_advantages():
    lines = segment_lines(_view(sample=3), DECODE)
    assert lines[0] == "q-1 #3  reward 1.00 (ok), 11 tokens, 3 segments"
    assert lines[2].split() == ["0", "0-2", "0", "0.50", "->", "0.25", "-0.25", "-0.40"]
    assert lines[3].split() == ["1", "3-8", "2", "0.25", "->", "0.75", "+0.50", "+0.90"]
    assert lines[-1] == "  3+4 ‖ ⟦=⟧7,⟦7⟧-2 ‖ ⟦=⟧5"
    unknown = _view(segments=[_seg(0, 0, 11, [], float("nan"), 1.0, float("nan"))])
    assert segment_lines(unknown)[2].split() == ["0", "0-10", "0", "n/a", "->", "1.00", "+0.00", "n/a"]
    assert len(segment_lines(_view())) == 5  # without a decoder, no text line


def test_pick_mixes_correct_and_wrong_from_distinct_prompts_with_several_segments():
    one_segment = [_seg(0, 0, 11, [], 0.5, 1.0, 0.5)]
    views = [
        _view("a", 0, "ok"),
        _view("a", 1, "wrong", 0.0),
        _view("b", 0, "ok"),
        _view("c", 0, "wrong", 0.0),
        _view("d", 0, "ok", segments=one_segment),
    ]
    chosen = [(v["prompt_id"], v["sample_index"]) for v in pick(views, 3)]
    assert chosen == [("a", 0), ("c", 0), ("b", 0)]  # ok, wrong, ok; one per prompt; d has a single segment
    assert [(v["prompt_id"], v["sample_index"]) for v in pick(views, 4)][-1] == ("a", 1)  # then repeats prompts
    assert pick([views[-1]], 2) == [views[-1]]  # only single-segment responses: still drawn
    md = segments_markdown(views, 7, 2, DECODE)
    assert md.startswith("## SPO-chain segments, iteration 7") and md.count("```") == 4 and "⟦=⟧" in md
