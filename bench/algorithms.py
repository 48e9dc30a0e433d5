"""Algorithm presets on the embedded default, 3 seeds, equal iterations: held-out accuracy.

    .venv/bin/python bench/algorithms.py [--presets grpo rloo spo_chain:train.prob_mask_rho=null ...]
        [--seeds 0 1 2] [--set key=value ...] [--section TITLE] [--plot docs/img/NAME.png]
        [--baseline-runs DIR --baseline-presets grpo spo_chain] [--metric greedy|avg_at_k]

Each (preset, seed) is one `segflow run --preset P --set run.seed=S` process; all share one runs
directory and PREFECT_HOME. A preset may carry its own overrides after a colon (comma-separated).
Every preset runs the same iterations; --set changes settings for all of them. The GRPO family samples
prompts x samples per iteration, SPO-chain adds Monte Carlo tokens and SPO-tree grows trees, so the plot
shows accuracy against iterations and against total generated tokens. Results go to BENCHMARKS.md.

--baseline-runs adds finished runs of other presets from an earlier invocation (same settings) to the table
and the plot instead of running them again, matched by preset and seed from their config.yaml. They are
marked with their code version, and their SFT accuracy per seed must equal this invocation's (the same
start), or the script refuses to compare.

--metric avg_at_k reports avg@k (the runs need eval.samples > 0, e.g. --set eval.samples=8) instead of greedy
accuracy: the mean accuracy of k samples per held-out problem, the statistic RL at the rollout temperature moves.
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
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from report import spread, start_final, write_section  # noqa: E402

from configs.loader import resolve, run_id  # noqa: E402

SEGFLOW = ROOT / ".venv" / "bin" / "segflow"
# Summary series per metric: greedy accuracy, or avg@k (k samples per problem at eval.temperature).
METRICS = {"greedy": "eval_accuracy", "avg_at_k": "eval_avg_at_k"}
PRESETS = ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "rec_oneside_nois", "opmd", "asymre"]


def run(spec: str, seed: int, runs_dir: Path, overrides: list[str], env: dict) -> tuple[float, dict]:
    preset, _, own = spec.partition(":")
    overrides = overrides + [o for o in own.split(",") if o]
    args = ["run", "--preset", preset, "--runs-dir", str(runs_dir)]
    for o in [*overrides, f"run.seed={seed}"]:
        args += ["--set", o]
    t0 = time.perf_counter()
    res = subprocess.run([str(SEGFLOW), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"segflow {' '.join(args)} failed:\n{res.stderr[-4000:]}")
    rid = run_id(resolve(preset, overrides=[*overrides, f"run.seed={seed}"]))
    return wall, json.loads((runs_dir / rid / "summary.json").read_text())


def lifts(rows: list[dict], key: str) -> list[float]:
    """Points gained on summary series `key` from the SFT start to the last evaluation, one per run."""
    return [100 * (b - a) for a, b in (start_final(r, key) for r in rows)]


def accuracy_at_tokens(run: dict, key: str, budget: float) -> float:
    """Summary series `key` of one run at `budget` generated tokens (rollouts + Monte Carlo), linear between
    evaluations. The budget must lie within the run's evaluated range."""
    pts = [(run["generated_tokens_at_eval"][str(i)], run[key][str(i)]) for i in sorted(int(k) for k in run[key])]
    for (t0, a0), (t1, a1) in zip(pts, pts[1:]):
        if t0 <= budget <= t1:
            return a1 if t1 == t0 else a0 + (a1 - a0) * (budget - t0) / (t1 - t0)
    raise ValueError(f"budget {budget:.0f} tokens outside the run's evaluations {pts}")


def fmt(values: list[float]) -> str:
    """Mean ± std over seeds; a single seed has no spread to show."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {spread(values):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--presets",
        nargs="*",
        default=PRESETS,
        help="Presets to run; none (with --baseline-runs) only renders the table from earlier runs.",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--work", type=Path, default=None, help="Runs directory (default: a new temp dir).")
    ap.add_argument("--section", default="Algorithms on the embedded default")
    ap.add_argument("--plot", type=Path, default=None, help="PNG: accuracy vs iterations and vs generated tokens.")
    ap.add_argument("--baseline-runs", type=Path, default=None, help="Runs directory of an earlier invocation.")
    ap.add_argument("--baseline-presets", nargs="*", default=[], help="Presets to take from --baseline-runs.")
    ap.add_argument(
        "--metric",
        choices=sorted(METRICS),
        default="greedy",
        help="avg_at_k needs eval.samples > 0: mean accuracy of k samples per held-out problem.",
    )
    opts = ap.parse_args()
    if opts.metric == "avg_at_k":  # fail before hours of runs, not after
        for spec in opts.presets:
            preset, _, own = spec.partition(":")
            if resolve(preset, overrides=[*opts.overrides, *filter(None, own.split(","))]).eval.samples == 0:
                ap.error(f"--metric avg_at_k: preset {spec} runs with eval.samples=0; add --set eval.samples=8")
    work = opts.work or Path(tempfile.mkdtemp(prefix="segflow-algos-"))
    work.mkdir(parents=True, exist_ok=True)  # Prefect's ephemeral server cannot create a PREFECT_HOME's parents
    # A loaded 2-core machine can take longer than Prefect's default 20 s to start the ephemeral API.
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    results: dict[str, list[dict]] = {preset: [] for preset in opts.presets}
    # Seed-major: a stopped invocation leaves every preset paired on the seeds it finished, and the same
    # command with the same --work reruns those from Prefect's cache in seconds.
    for seed in opts.seeds:
        for preset in opts.presets:
            wall, s = run(preset, seed, work / "runs", opts.overrides, env)
            results[preset].append(s)
            print(
                f"{preset} seed {seed}: {s['initial_eval_accuracy']:.3f} -> {s['final_eval_accuracy']:.3f} "
                f"({wall:.0f} s)",
                flush=True,
            )

    baseline = load_baselines(opts.baseline_runs, opts.baseline_presets, opts.seeds) if opts.baseline_runs else {}
    results = {**baseline, **results}
    if not results:
        ap.error("nothing to compare: give --presets, or --baseline-runs with --baseline-presets")
    first, *others = results.items()
    for preset, rows in others:  # every preset must start from the same SFT weights per seed
        start = [r["initial_eval_accuracy"] for r in rows]
        if start != [r["initial_eval_accuracy"] for r in first[1]]:
            sys.exit(f"{preset}: SFT accuracies per seed {start} differ from {first[0]}'s: not the same start")
    key = METRICS[opts.metric]
    missing = [p for p, rows in results.items() if any(not r.get(key) for r in rows)]
    if missing:
        sys.exit(f"--metric {opts.metric}: runs of {missing} have no {key} (set eval.samples > 0)")
    # The other metric's lift as a side column when every run has it (eval.samples > 0 gives both).
    other = next(m for m in METRICS if m != opts.metric)
    side = other if all(r.get(METRICS[other]) for rows in results.values() for r in rows) else None
    side_head = f" {other} lift |" if side else ""
    # Equal generated tokens: every run at the smallest total any run generated (the cheapest preset's budget).
    budget = min(start_final(r, "generated_tokens_at_eval")[1] for rows in results.values() for r in rows)
    lines = [
        f"| preset | estimator | SFT accuracy | final accuracy | lift (points) | per seed (final) | "
        f"at {budget / 1e6:.2f}M generated tokens |{side_head} compute s/run |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if side else ""),
    ]
    for preset, rows in results.items():
        init, final = zip(*(start_final(r, key) for r in rows))
        init, final = [100 * v for v in init], [100 * v for v in final]
        tag = f" (earlier run, code {rows[0]['code_version']})" if preset in baseline else ""
        side_cell = f" {fmt(lifts(rows, METRICS[side]))} |" if side else ""
        lines.append(
            f"| `{preset}`{tag} | {rows[0]['estimator']} | {fmt(init)} | **{fmt(final)}** | "
            f"{fmt(lifts(rows, key))} | {', '.join(f'{v:.1f}' for v in final)} | "
            f"{fmt([100 * accuracy_at_tokens(r, key, budget) for r in rows])} |{side_cell} "
            f"{statistics.mean(sum(r['compute_seconds'].values()) for r in rows):.0f} |"
        )
    settings = ", ".join(opts.overrides) if opts.overrides else "the embedded default's"
    label = (
        "greedy" if opts.metric == "greedy" else "avg@k (mean of eval.samples answers per problem at eval.temperature)"
    )
    lines += [
        "",
        f"Held-out accuracy (%), {label}, mean ± std over seeds {opts.seeds}; same SFT start per seed and "
        f"the same number of iterations for every preset ({settings} settings). Presets that sample differently "
        "per iteration (SPO-chain's Monte Carlo continuations, SPO-tree's trees) are compared at equal "
        f"generated tokens (rollouts + Monte Carlo) in the column at {budget / 1e6:.2f}M, the smallest total of "
        "any run (linear between evaluations), and in the right-hand plot.",
    ]
    if opts.plot:
        plot(results, opts.plot, key, label.split(" (")[0])
        lines.append(f"\n![accuracy vs iterations and generated tokens]({opts.plot.as_posix()})")
    write_section(opts.section, "\n".join(lines))


def load_baselines(runs: Path, presets: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    """{preset: [summary per seed]} of finished runs under `runs`, by config.yaml's run.preset and run.seed."""
    import yaml

    found: dict[tuple[str, int], dict] = {}
    for f in runs.glob("*/summary.json"):
        cfg = yaml.safe_load((f.parent / "config.yaml").read_text())
        key = (cfg["run"]["preset"], cfg["run"]["seed"])
        if key[0] in presets and key[1] in seeds:
            summary = json.loads(f.read_text())
            found[key] = {**summary, "_seed": key[1]}
    missing = [(p, s) for p in presets for s in seeds if (p, s) not in found]
    if missing:
        sys.exit(f"--baseline-runs {runs}: no finished run for {missing}")
    return {p: [found[(p, s)] for s in seeds] for p in presets}


def plot(results: dict[str, list[dict]], path: Path, key: str, label: str) -> None:
    """Mean held-out accuracy over seeds against iterations and against generated tokens (rollouts + MC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for preset, rows in results.items():
        its = sorted(int(k) for k in rows[0][key])
        acc = [100 * statistics.mean(r[key][str(i)] for r in rows) for i in its]
        tok = [statistics.mean(r.get("generated_tokens_at_eval", {}).get(str(i), 0.0) for r in rows) for i in its]
        ax1.plot(its, acc, marker="o", label=preset)
        ax2.plot([t / 1e6 for t in tok], acc, marker="o", label=preset)
    ax1.set(xlabel="RL iteration", ylabel=f"held-out accuracy, {label} (%)")
    ax2.set(xlabel="generated tokens, rollouts + Monte Carlo (millions)", ylabel=f"held-out accuracy, {label} (%)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(ROOT / path if not path.is_absolute() else path, dpi=110)


if __name__ == "__main__":
    main()
