"""`segflow` commands for evaluation and operations: eval, compare, report, ui, serve
(flows/cli.py adds them to `segflow`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from flows.cli_common import UI_MARKER, env_defaults, fail
from tasks.datasets.registry import EVAL_DATASET_USAGE, TASK_NAMES

# flows/cli.py adds these commands to `segflow`, after its own.
app = typer.Typer()


@app.command("eval")
def eval_(
    checkpoint: list[str] = typer.Option(
        ...,
        "--checkpoint",
        "-c",
        help="Model directory, run directory (its latest "
        "checkpoint) or hub id; repeat to compare (the first is the baseline).",
    ),
    dataset: list[str] = typer.Option(
        ["arith"],
        "--dataset",
        "-d",
        help=EVAL_DATASET_USAGE + " | a .jsonl file or directory with question/answer fields; repeatable.",
    ),
    samples: int = typer.Option(0, "--samples", "-k", help="k sampled answers per problem (avg@k, pass@k, maj@k)."),
    temperature: float = typer.Option(0.6),
    top_p: float = typer.Option(0.95, "--top-p"),
    budget: list[int] = typer.Option(
        [],
        "--budget",
        help="Context budget in tokens (total and new); repeatable. "
        "Default: the run's rollout.max_model_len for a run's checkpoint, else 4096 "
        "(capped at the model's max_position_embeddings).",
    ),
    seed: int = typer.Option(0),
    limit: int | None = typer.Option(None, help="First N problems of each dataset."),
    price_in: float = typer.Option(0.0, "--price-in", help="USD per million prompt tokens."),
    price_out: float = typer.Option(0.0, "--price-out", help="USD per million generated tokens."),
    jsonl_task: str = typer.Option(
        "math", "--jsonl-task", help="Grader for .jsonl datasets: " + " | ".join(TASK_NAMES) + "."
    ),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Evaluations go to <runs-dir>/evals/<eval_id>/."),
    shards: int = typer.Option(
        1,
        help="Ray engine actors sharing each cell's prompts (same answers as 1; not "
        "part of the eval id, so finished cells stay cached).",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="With --shards > 1: a Ray cluster ('auto', 'ray://head:10001'); default starts a local one.",
    ),
) -> None:
    """Evaluate checkpoints: greedy, avg@k, pass@k, maj@k with standard errors, cost-of-pass, paired comparisons."""
    from pydantic import ValidationError

    from flows.eval_spec import EvalSpec  # not flows.evaluate: that imports prefect, before env_defaults

    try:
        spec = EvalSpec(
            checkpoints=tuple(checkpoint),
            datasets=tuple(dataset),
            samples=samples,
            temperature=temperature,
            top_p=top_p,
            budgets=tuple(budget),
            seed=seed,
            limit=limit,
            price_in=price_in,
            price_out=price_out,
            jsonl_task=jsonl_task,
            shards=shards,
            ray_address=ray_address,
        )
    except ValidationError as e:
        err = e.errors()[0]
        fail(f"--{'-'.join(str(x) for x in err['loc']).replace('_', '-')}={err.get('input')!r}: {err['msg']}")
    from flows.preflight import checkpoint_problems, eval_dataset_problems

    # A missing or unloadable model or dataset fails in seconds, before Prefect starts.
    if problem := checkpoint_problems(spec.checkpoints) or eval_dataset_problems(spec):
        fail(problem)
    env_defaults(runs_dir)
    from flows.evaluate import comparison_markdown, evaluate

    try:
        summary = evaluate(spec, str(runs_dir))
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(str(e))
    print(comparison_markdown(summary))
    print(f'\n{runs_dir / "evals" / summary["eval_id"]}  (segflow sql "select * from eval_samples")')


@app.command("compare")
def compare_(
    names: list[str] = typer.Argument(..., help="Run ids / run directories, and eval ids / eval directories."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for the PNG plots (default <runs-dir>/compare/<the names, sorted>)."
    ),
) -> None:
    """Runs side by side (table + accuracy vs iteration, generated tokens and compute seconds), evaluations'
    paired comparisons; published as Prefect artifacts."""
    from flows.preflight import compare_problems

    if problem := compare_problems(list(names), runs_dir):  # a misspelt name fails before Prefect starts
        fail(problem)
    env_defaults(runs_dir)  # first: prefect reads PREFECT_API_URL once, when it is imported
    from flows.compare import compare
    from flows.evaluate import comparison_markdown
    from flows.run_plots import comparison_dir, format_table

    out_dir = out or comparison_dir(list(names), runs_dir)  # one folder per comparison: none overwrites another
    try:
        result = compare(list(names), str(runs_dir), str(out_dir))
    except ValueError as e:
        fail(str(e))
    if result["runs"]:
        print(format_table(result["runs"]))
        for row in result["runs"]:
            if row["status"] != "finished":
                print(f"{row['run_id']}: {row['status']}, not finished; its figures so far")
        print(f"plots: {out_dir}")
        for name, path in result["plots"].items():
            print(f"plot ({name}): {path}")
    for ev in result["evals"]:
        print(comparison_markdown(ev))


@app.command()
def report(
    run: str = typer.Argument(..., help="Run id (under --runs-dir) or run directory."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    out: Path | None = typer.Option(None, "--out", help="HTML file (default <run dir>/report.html)."),
    samples: int = typer.Option(5, help="Sample responses to show."),
) -> None:
    """Write a self-contained HTML report of a run: config, metrics over time, plots, sample responses."""
    from flows.html_report import write_report
    from flows.run_plots import load_run, partial_note

    try:
        info = load_run(run, runs_dir)
    except ValueError as e:
        fail(str(e))
    path = write_report(info, out or info.root / "report.html", samples=samples)
    if note := partial_note(info):
        print(f"{info.run_id}: {note}, not finished; the report shows its figures so far")
    print(path)


UI_START_TIMEOUT_S = 120.0  # a cold Prefect server (database migrations) takes tens of seconds on a loaded machine


def port_in_use(port: int) -> bool:
    """Whether 127.0.0.1:port is already bound (bind test, not connect: a server mid-start counts too)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def api_healthy(url: str) -> bool:
    """Whether the Prefect API at `url` answers GET /health."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_healthy(proc, url: str, timeout_s: float, healthy=None, sleep=None) -> str | None:
    """Poll until the server answers (None), it exits, or timeout_s passes; the latter two give the problem.
    healthy(url) defaults to api_healthy, looked up per call (tests replace it)."""
    import time

    healthy, sleep = healthy or api_healthy, sleep or time.sleep
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(url):
            return None
        if proc.poll() is not None:
            return f"the Prefect server exited with code {proc.returncode} before it was healthy (see its output above)"
        sleep(0.5)
    return f"the Prefect server at {url} was not healthy after {timeout_s:g} s"


@app.command()
def ui(port: int = typer.Option(4200, help="Port on 127.0.0.1.")) -> None:
    """Start the Prefect server and UI on 127.0.0.1; segflow commands run meanwhile report to it."""
    import signal
    import subprocess

    from storage.handles import atomic_write_text

    if port_in_use(port):  # else the server logs a bind error and the banner would claim a UI that is not ours
        fail(
            f"--port {port}: 127.0.0.1:{port} is already in use (a `segflow ui` already running?); "
            "stop it or pass --port N"
        )
    url = f"http://127.0.0.1:{port}/api"
    # The UI's own API URL must name this port, or the browser app calls the default port and shows an error.
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PREFECT_UI_API_URL": url},
    )
    wrote_marker = False
    try:
        problem = wait_healthy(proc, url, UI_START_TIMEOUT_S)
        if problem:
            proc.terminate()
            proc.wait()
            fail(problem)
        # The marker only once healthy: other commands that find it send their runs to this server.
        atomic_write_text(UI_MARKER, json.dumps({"url": url, "pid": proc.pid}))
        wrote_marker = True
        print(
            f"Prefect UI on http://127.0.0.1:{port} (API {url}); `segflow run` in another terminal reports there. "
            "Ctrl-C stops it."
        )
        proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
    finally:
        if wrote_marker:  # a server that never came up leaves another `segflow ui`'s marker alone
            UI_MARKER.unlink(missing_ok=True)


@app.command()
def serve(
    config: Path = typer.Option(
        ..., "--config", exists=True, dir_okay=False, help="YAML with a 'deployments:' list (see flows/deploy.py)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the deployments, then exit."),
) -> None:
    """Register scheduled deployments of train / evaluate_models and run them from this process."""
    env_defaults(Path("runs"))  # first: flows.deploy imports prefect, which reads PREFECT_API_URL only then
    from flows.deploy import deployments, read_serve_file

    try:
        entries = read_serve_file(config)
        runners = deployments(entries)
    except Exception as e:  # noqa: BLE001 - config, preset and schedule errors all name their entry
        fail(str(e))
    for e in entries:
        print(f"{e.flow}/{e.name}: {'cron ' + e.cron if e.cron else f'every {e.interval:g} s'} {e.parameters()}")
    if dry_run:
        return
    from prefect import serve as prefect_serve

    prefect_serve(*runners)
