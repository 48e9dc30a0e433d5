"""The embedded default end to end: wall time, RL lift over the SFT start (3 seeds), and rerun time.

    .venv/bin/python bench/default_run.py [--seeds 0 1 2] [--set key=value ...] [--section TITLE]

Each seed is a separate `segflow run --set run.seed=S` process in a fresh runs directory and a fresh
PREFECT_HOME (first-start costs included), then seed 0's command is run again: a completed run must
recompute nothing. Results go to BENCHMARKS.md.
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import spread, start_final, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEGFLOW = ROOT / ".venv" / "bin" / "segflow"


def run(args: list[str], env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = subprocess.run([str(SEGFLOW), "run", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"segflow run {' '.join(args)} failed:\n{res.stderr[-4000:]}")
    runs_dir = Path(args[args.index("--runs-dir") + 1])
    summary = max(runs_dir.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    evaluation = yaml.safe_load((summary.parent / "config.yaml").read_text())["eval"]
    return wall, {**json.loads(summary.read_text()), "_eval": evaluation}


def _avg_at_k(s: dict) -> tuple[float, float] | None:
    """(start, final) avg@k in points from a summary, or None when the run took no eval samples."""
    if "0" not in (s.get("eval_avg_at_k") or {}):
        return None
    start, final = start_final(s, "eval_avg_at_k")
    return 100 * start, 100 * final


def _lift_line(what: str, lifts: list[float], how: str) -> str:
    return (
        f"{what}: mean **{statistics.mean(lifts):+.1f}** points, std {spread(lifts):.1f} "
        f"(min {min(lifts):+.1f}, max {max(lifts):+.1f}); {how}."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument(
        "--section",
        default="Embedded default: `segflow run`",
        help="BENCHMARKS.md section; runs with --set are not the default, so name them apart.",
    )
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home")}
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    rows = []
    for seed in opts.seeds:
        args = ["--runs-dir", str(work / f"runs-{seed}"), "--set", f"run.seed={seed}"]
        for o in opts.overrides:
            args += ["--set", o]
        wall, s = run(args, env)
        rows.append((seed, wall, s))
        print(
            f"seed {seed}: {s['initial_eval_accuracy']:.3f} -> {s['final_eval_accuracy']:.3f} in {wall:.0f} s",
            flush=True,
        )
    rerun_args = ["--runs-dir", str(work / f"runs-{opts.seeds[0]}"), "--set", f"run.seed={opts.seeds[0]}"]
    for o in opts.overrides:
        rerun_args += ["--set", o]
    rerun_wall, rerun = run(rerun_args, env)
    write_section(opts.section, report(rows, opts.seeds[0], rerun_wall, rerun))


def report(rows: list[tuple[int, float, dict]], rerun_seed: int, rerun_wall: float, rerun: dict) -> str:
    """The BENCHMARKS section: one row per (seed, wall seconds, summary), the lifts, wall and rerun times."""
    lifts = [100 * (s["final_eval_accuracy"] - s["initial_eval_accuracy"]) for _, _, s in rows]
    sampled = [_avg_at_k(s) for _, _, s in rows]  # (start, final) avg@k, or None without eval.samples
    walls = [w for _, w, _ in rows]
    k_cols = " SFT avg@k | final avg@k | avg@k lift |" if all(sampled) else ""
    lines = [
        f"| seed | SFT accuracy | final accuracy | lift (points) |{k_cols} wall (s, process) | stage seconds |",
        "|---|---|---|---|" + ("---|---|---|" if k_cols else "") + "---|---|",
    ]
    for (seed, wall, s), lift, avg in zip(rows, lifts, sampled):
        stages = ", ".join(f"{k} {v:.0f}" for k, v in s["stage_seconds"].items())
        k_vals = f" {avg[0]:.1f} | {avg[1]:.1f} | {avg[1] - avg[0]:+.1f} |" if k_cols else ""
        lines.append(
            f"| {seed} | {100 * s['initial_eval_accuracy']:.1f} | {100 * s['final_eval_accuracy']:.1f} | "
            f"{lift:+.1f} |{k_vals} {wall:.0f} | {stages} |"
        )
    lines += ["", _lift_line("Lift over the SFT start", lifts, "held-out split, greedy decoding")]
    if k_cols:
        ev = rows[0][2]["_eval"]
        lines.append(
            _lift_line(
                "Sampled lift",
                [f - i for i, f in sampled],
                f"avg@{ev['samples']} = mean accuracy of {ev['samples']} samples per held-out problem "
                f"at T = {ev['temperature']} (the sampled policy RL trains; the SPO paper's GSM8K "
                "pass@1 is this statistic)",
            )
        )
    lines += [
        f"Wall time per run: max **{max(walls):.0f} s** (target ≤ 600 s), including Prefect start-up.",
        f"Rerun of a completed run (seed {rerun_seed}): **{rerun_wall:.1f} s** end to end (target ≤ 30 s); "
        f"stages executed {sum(rerun['stages_executed'].values())}, cached "
        f"{sum(rerun['stages_cached'].values())}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
