"""Engine overhead per iteration, from a finished run's own artifacts.

    .venv/bin/python bench/engine_overhead.py --runs-dir DIR [DIR ...]

Use runs that executed (a fully cached rerun rewrites summary.json with its own, tiny stage times).

overhead = (wall time of the generate_rollouts stage - time inside engine.generate) / generation time,
summed over iterations 1..N. The stage wall time comes from summary.json (measured by the flow
around each stage call, Prefect task overhead included); generation time and weight-load time from
the `metrics` view. Engine start is excluded when the engine was started by evaluate(0) before
iteration 1 (the embedded default). Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_section  # noqa: E402

from storage.catalog import query  # noqa: E402
from storage.metric_names import flat  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs-dir", required=True, nargs="+")
    lines = [
        "| run | iterations | rollout stage wall (s) | generation (s) | weight loads (s) | overhead |",
        "|---|---|---|---|---|---|",
    ]
    files = [(Path(d), f) for d in ap.parse_args().runs_dir for f in sorted(Path(d).glob("*/summary.json"))]
    for runs_dir, summary_file in files:
        s = json.loads(summary_file.read_text())
        _, rows = query(
            runs_dir,
            "select name, sum(value) from metrics where run_id = '" + s["run_id"] + "' and "
            "stage = 'rollout' and name in ('perf/generation_seconds', 'perf/weight_load_seconds', "
            "'perf/engine_start_seconds') group by 1",
        )
        m = {flat(name): value for name, value in rows}
        wall = s["stage_seconds"]["generate_rollouts"] - m.get("engine_start_seconds", 0.0)
        gen = m["generation_seconds"]
        lines.append(
            f"| {s['run_id']} | {s['iterations_completed']} | {wall:.1f} | {gen:.1f} | "
            f"{m.get('weight_load_seconds', 0.0):.2f} | **{100 * (wall - gen) / gen:.1f}%** |"
        )
    lines += [
        "",
        "Target: ≤ 10% of generation time per iteration after the first. Overhead = weight reload, "
        "prompt reads, Parquet writes, Prefect task bookkeeping.",
    ]
    write_section("Engine overhead per iteration", "\n".join(lines))


if __name__ == "__main__":
    main()
