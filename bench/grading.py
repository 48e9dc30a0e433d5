"""Grader correctness and throughput on real data: reference solutions graded against their answers.

    .venv/bin/python bench/grading.py [--data ../shared/data]

GSM8K test: every worked solution (`... #### N`) must grade `ok` against N.
MATH-500: every reference `solution` must grade `ok` against `answer` (target >= 99%), through the
same extraction + math-verify worker pool the pipeline uses. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_section  # noqa: E402

from tasks.algos.grading import RewardScheme, reference_from_solution  # noqa: E402
from tasks.datasets.graders import grade_all  # noqa: E402


def load(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    data = Path(ap.parse_args().data)
    lines = ["| dataset | items | ok | statuses | seconds | items/s |", "|---|---|---|---|---|---|"]
    failures = []
    for name, task, file, resp_key, ref_of in [
        (
            "GSM8K test",
            "gsm8k",
            data / "gsm8k" / "test.jsonl",
            "answer",
            lambda r: reference_from_solution(r["answer"]),
        ),
        ("MATH-500", "math", data / "math500" / "test.jsonl", "solution", lambda r: r["answer"]),
    ]:
        rows = load(file)
        responses, refs = [r[resp_key] for r in rows], [ref_of(r) for r in rows]
        t0 = time.perf_counter()
        grades = grade_all(task, responses, refs, ["stop"] * len(rows), RewardScheme())
        dt = time.perf_counter() - t0
        counts = Counter(g.status for g in grades)
        ok = counts["ok"] / len(rows)
        failures += [
            (name, r.get("unique_id", i), g.status, g.extracted, ref)
            for i, (r, g, ref) in enumerate(zip(rows, grades, refs))
            if g.status != "ok"
        ]
        lines.append(
            f"| {name} | {len(rows)} | **{100 * ok:.1f}%** | {dict(counts)} | {dt:.1f} | {len(rows) / dt:.0f} |"
        )
    lines += [
        "",
        "Targets: GSM8K 100% ok, MATH-500 ≥ 99% ok. MATH runs math-verify in a 2-process pool with a "
        "10 s per-item timeout; its time includes the pool start.",
    ]
    if failures:
        lines += ["", "Items not graded ok (dataset, id, status, extracted, reference):", ""]
        lines += [f"- {n}, `{i}`, {s}, `{e}` vs `{ref}`" for n, i, s, e, ref in failures[:20]]
    write_section("Grading: reference solutions", "\n".join(lines))


if __name__ == "__main__":
    main()
