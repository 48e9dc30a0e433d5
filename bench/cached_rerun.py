"""A fully cached rerun of a completed run, against a running `prefect server` (`segflow ui`).

    .venv/bin/python bench/cached_rerun.py [--reruns 5] [--set key=value ...]

Starts `segflow ui` on a free port with a fresh PREFECT_HOME, runs the embedded default once (small
settings unless --set overrides them), then reruns the same command --reruns times. Each rerun must
execute no stage (the script fails otherwise); runs are --pause seconds apart. Reported: the whole command's wall time
(interpreter
start, imports, flow run registered with the server, every stage's cache lookup, summary) and the flow's
own wall time from summary.json. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from report import write_section  # noqa: E402

from configs.loader import resolve, run_id  # noqa: E402
from tests.ui_server import free_port, stop_ui, wait_healthy  # noqa: E402

SEGFLOW = ROOT / ".venv" / "bin" / "segflow"
SMALL = [
    "data.arith.n_train=500",
    "warm_start.steps=100",
    "run.iterations=3",
    "rollout.prompts_per_iteration=16",
    "eval.every=1",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reruns", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument(
        "--pause",
        type=float,
        default=5.0,
        help="Seconds between runs: the server finishes ingesting the last run's events and logs.",
    )
    opts = ap.parse_args()
    overrides = SMALL + opts.overrides
    work = Path(tempfile.mkdtemp(prefix="segflow-rerun-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(work / "home"), "SEGFLOW_UI_MARKER": str(work / "ui.json")}
    server = subprocess.Popen(
        [str(SEGFLOW), "ui", "--port", str(port)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_healthy(url):
            sys.exit(f"prefect server at {url} did not become healthy")
        env["PREFECT_API_URL"] = url
        cmd = [str(SEGFLOW), "run", "--runs-dir", str(work / "runs")] + [a for o in overrides for a in ("--set", o)]
        summary_file = work / "runs" / run_id(resolve("default", overrides=overrides)) / "summary.json"

        def run() -> tuple[float, dict]:
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
            return wall, json.loads(summary_file.read_text())

        first_wall, first = run()
        walls, flows = [], []
        for _ in range(opts.reruns):
            time.sleep(opts.pause)
            wall, s = run()
            if s["stages_executed"]:
                sys.exit(f"a rerun executed stages: {s['stages_executed']}")
            walls.append(wall)
            flows.append(s["wall_seconds"])
            print(f"cached rerun: command {wall:.2f} s, flow {s['wall_seconds']:.2f} s")
    finally:
        stop_ui(server)
    stages = sum(first["stages_executed"].values())
    lines = [
        "| | wall (s) |",
        "|---|---|",
        f"| first run ({stages} stages executed) | {first_wall:.1f} |",
        f"| cached rerun, whole `segflow run` command (median of {opts.reruns}) | **{statistics.median(walls):.2f}** |",
        f"| cached rerun, inside the flow (median) | {statistics.median(flows):.2f} |",
        f"| cached rerun, whole command (min / max) | {min(walls):.2f} / {max(walls):.2f} |",
        "",
        f"Settings: `{' '.join(overrides)}` ({stages} stage runs, all cache hits on rerun; checked). "
        "Server: `segflow ui` (prefect server, SQLite) on 127.0.0.1, `PREFECT_API_URL` pointing at it; "
        f"{opts.pause:.0f} s "
        "between runs. "
        "Target (issue 9): a fully cached rerun <= 5 s.",
    ]
    write_section("Fully cached rerun against a running Prefect server", "\n".join(lines))


if __name__ == "__main__":
    main()
