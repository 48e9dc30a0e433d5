"""Chaos benchmark: SIGKILL `segflow run` again and again, rerun the same command, compare with an uninterrupted run.

    .venv/bin/python bench/chaos.py [--kills 24] [--seed 0] [--work DIR] [--iterations 8]

A small embedded-default run (8 iterations, evaluation every 2) is first run uninterrupted. Then the same
command runs in a second runs directory and is killed over and over, each time rerun, until it finishes.
Kills alternate between fault-injection points (storage/faults.py: inside a Parquet write before its
rename, inside a checkpoint save before its rename, inside the engine's in-place weight load, at the start of
a named stage) and SIGKILLs of the whole process group at a random moment. At the end every artifact is
compared with the uninterrupted run's: Parquet content (metrics without their timing values, the runs table
without its creation time), checkpoint weights (allclose), and the final summary's accuracies. No temporary
file may be left. After every kill of the segflow process alone (the fault points; an OOM kill does the
same), the temporary Prefect API servers of that attempt still running SERVER_WAIT seconds later are
counted (flows/prefect_server.py stops them with their parent): expected 0. Results go to BENCHMARKS.md;
a run with --iterations other than 8 is a reduced one and writes its own section.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from report import write_section  # noqa: E402

SEGFLOW = ROOT / ".venv" / "bin" / "segflow"
CONFIG = [
    "data.arith.n_train=400",
    "data.arith.n_test=64",
    "warm_start.steps=80",
    "run.iterations=8",
    "rollout.prompts_per_iteration=8",
    "rollout.samples_per_prompt=4",
    "train.mini_batch_size=32",
    "train.micro_batch_size=16",
    "eval.every=2",
]
STAGES = ["generate_rollouts", "grade", "compute_advantages", "train_policy", "evaluate"]
TIMING = ("_seconds", "_per_second")  # measured times differ between any two runs
SERVER_WAIT = 10.0  # seconds a dead run's Prefect server gets to go (its watchdog: SIGTERM, SIGKILL after 5 s)
SERVER_APP = b"prefect.server.api.server:create_app"
DEFAULT_ITERATIONS = 8


def config(iterations: int) -> list[str]:
    if iterations == DEFAULT_ITERATIONS:
        return CONFIG
    return [c for c in CONFIG if not c.startswith(("run.iterations=", "eval.every="))] + [
        f"run.iterations={iterations}",
        f"eval.every={min(2, iterations)}",
    ]


def launch(runs: Path, env: dict, crash_at: str | None, iterations: int) -> subprocess.Popen:
    args = [str(SEGFLOW), "run", "--runs-dir", str(runs)] + [a for c in config(iterations) for a in ("--set", c)]
    e = {**env, **({"SEGFLOW_CRASH_AT": crash_at} if crash_at else {})}
    return subprocess.Popen(
        args, cwd=ROOT, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def plan(n: int, rng: random.Random) -> list[str]:
    """Kill specs: fault points with an occurrence number (so each kill lets some work finish), and times."""
    kinds = [
        lambda: f"parquet_write:{rng.randint(3, 7)}",
        lambda: "checkpoint_save:1",
        lambda: "weight_load:1",
        lambda: f"stage:{rng.choice(STAGES)}:{rng.randint(2, 3)}",
        lambda: f"time:{rng.uniform(8, 45):.1f}",
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]


def prefect_servers(pgid: int) -> list[int]:
    """Live (not zombie) temporary Prefect API servers in process group `pgid`: a run's own, since each
    attempt starts in a new session and the server inherits its group."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) == pgid and stat[0] != "Z" and SERVER_APP in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except (OSError, IndexError, ValueError):  # exited while we looked
            continue
    return found


def servers_left(pgid: int) -> int:
    """How many of the group's Prefect servers are still alive SERVER_WAIT seconds from now (0 sooner)."""
    deadline = time.monotonic() + SERVER_WAIT
    while (left := len(prefect_servers(pgid))) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def run_with_kill(runs: Path, env: dict, spec: str | None, iterations: int) -> tuple[str, float, int | None]:
    """One attempt (`spec` None: no kill). Returns (outcome, seconds, servers): outcome killed | finished |
    failed; servers, after a kill of the segflow process alone, its Prefect servers alive SERVER_WAIT s later."""
    t0 = time.perf_counter()
    timed = spec is not None and spec.startswith("time:")
    proc = launch(runs, env, None if timed else spec, iterations)
    if timed:
        try:
            proc.wait(timeout=float(spec.split(":")[1]))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    dt = time.perf_counter() - t0
    killed = proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
    servers = servers_left(proc.pid) if killed and not timed else None  # a group kill took the server too
    try:  # the dead run's children (its temporary Prefect API server, which holds our stderr pipe) die too
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, err = proc.communicate()
    if proc.returncode == 0:
        return "finished", dt, servers
    if killed:
        return "killed", dt, servers
    print(err[-3000:], file=sys.stderr)
    return "failed", dt, servers


def parquet_equal(a: Path, b: Path) -> str | None:
    """None when equal (timings and creation times excluded), else what differs."""
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if a.name.startswith("metrics-"):
        va, vb = (
            {n: v for n, v in zip(t["name"].to_pylist(), t["value"].to_pylist()) if not n.endswith(TIMING)}
            for t in (ta, tb)
        )
        return None if va == vb else f"metrics differ: {sorted(set(va.items()) ^ set(vb.items()))[:4]}"
    if a.name == "run.parquet":
        ta, tb = ta.drop(["created_at"]), tb.drop(["created_at"])
    return None if ta.equals(tb) else f"{ta.num_rows} vs {tb.num_rows} rows, content differs"


def weights_close(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def compare(ref: Path, chaos: Path) -> dict:
    out = {
        "parquet_files": 0,
        "parquet_different": [],
        "checkpoints": 0,
        "checkpoints_different": [],
        "temporaries_left": [],
    }
    for f in sorted(ref.rglob("*.parquet")):
        g = chaos / f.relative_to(ref)
        out["parquet_files"] += 1
        why = "missing" if not g.exists() else parquet_equal(f, g)
        if why:
            out["parquet_different"].append(f"{f.relative_to(ref)}: {why}")
    for f in sorted(ref.rglob("model.safetensors")):
        g = chaos / f.relative_to(ref)
        out["checkpoints"] += 1
        if not g.exists() or not weights_close(f, g):
            out["checkpoints_different"].append(str(f.relative_to(ref).parent))
    out["temporaries_left"] = [str(p.relative_to(chaos)) for p in chaos.rglob("*") if p.name.endswith((".tmp", ".old"))]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, chaos))
    out["summary_equal"] = all(
        sa[k] == sb[k] for k in ("eval_accuracy", "initial_eval_accuracy", "final_eval_accuracy", "generated_tokens")
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help="run.iterations (eval.every 2); other than 8 is a reduced run with its own section",
    )
    opts = ap.parse_args()
    work = opts.work or Path(tempfile.mkdtemp(prefix="segflow-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    env.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    env.pop("SEGFLOW_CRASH_AT", None)

    t0 = time.perf_counter()
    outcome, _, _ = run_with_kill(work / "ref", env, None, opts.iterations)
    if outcome != "finished":
        sys.exit("the uninterrupted reference run failed")
    ref_seconds = time.perf_counter() - t0
    rng = random.Random(opts.seed)
    log, finished = [], False
    for spec in plan(opts.kills, rng):
        outcome, dt, servers = run_with_kill(work / "chaos", env, spec, opts.iterations)
        log.append((spec, outcome, dt, servers))
        left = "" if servers is None else f", {servers} Prefect server(s) left"
        print(f"{spec}: {outcome} after {dt:.0f} s{left}", flush=True)
        if outcome == "failed":
            break
        if outcome == "finished":
            finished = True
            break
    while not finished and (not log or log[-1][1] != "failed"):
        outcome, dt, servers = run_with_kill(work / "chaos", env, None, opts.iterations)  # the final resume
        log.append(("(resume to the end)", outcome, dt, servers))
        finished = outcome == "finished"
        if outcome == "failed":
            break
    run_id = next(p.name for p in (work / "ref").iterdir() if (p / "summary.json").exists())
    result = compare(work / "ref" / run_id, work / "chaos" / run_id) if finished else {}
    killed = sum(1 for _, o, _, _ in log if o == "killed")
    tried = sum(1 for s, _, _, _ in log if s != "(resume to the end)")
    counted = [n for _, _, _, n in log if n is not None]
    survived = (
        killed
        if finished
        and result
        and not result["parquet_different"]
        and not result["checkpoints_different"]
        and result["summary_equal"]
        and not result["temporaries_left"]
        else 0
    )
    lines = ["| # | kill | outcome | seconds | Prefect servers left |", "|---|---|---|---|---|"]
    lines += [f"| {i} | `{s}` | {o} | {dt:.0f} | {'' if n is None else n} |" for i, (s, o, dt, n) in enumerate(log, 1)]
    lines += [
        "",
        f"Kills survived / kills tried: **{survived} / {tried}** ({killed} attempts died by SIGKILL; "
        f"a kill spec whose point was not reached let the attempt finish). Reference run {ref_seconds:.0f} s.",
    ]
    lines += [
        f"Temporary Prefect API servers still alive {SERVER_WAIT:.0f} s after a SIGKILL of the segflow process "
        f"alone: **{sum(counted)}** after {len(counted)} such kills (a `time:` kill SIGKILLs the whole process "
        "group, server included, so it is not counted)."
    ]
    if result:
        lines += [
            f"Compared with the uninterrupted run: {result['parquet_files']} Parquet files, "
            f"{len(result['parquet_different'])} different; {result['checkpoints']} checkpoints, "
            f"{len(result['checkpoints_different'])} not allclose (atol 1e-6); final summary accuracies and "
            f"generated tokens equal: {result['summary_equal']}; temporaries left: {len(result['temporaries_left'])}."
        ]
        lines += [f"- {d}" for d in result["parquet_different"][:10] + result["checkpoints_different"][:10]]
    title = "Chaos: crash anywhere, resume, identical results"
    if opts.iterations != DEFAULT_ITERATIONS:
        title += f" (reduced: {opts.iterations} iterations)"
        lines.insert(0, f"A reduced run: `run.iterations={opts.iterations}` instead of {DEFAULT_ITERATIONS}.\n")
    write_section(title, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
