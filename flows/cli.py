"""`segflow` command line: run, sql, advantages, grade, presets (tree, segments: cli_views; eval, compare, report, ui,
serve: cli_ops)."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=False, help="RL post-training for LLM reasoning, as Prefect flows.")


# Written by `segflow ui` ({"url", "pid"}) so other segflow commands find the running server.
UI_MARKER = Path(os.environ.get("SEGFLOW_UI_MARKER", Path.home() / ".segflow-ui.json"))


def _live_ui() -> str | None:
    """The API URL of a running `segflow ui` server, if one is up (its pid alive and /api/health answers)."""
    import urllib.request

    try:
        ui = json.loads(UI_MARKER.read_text())
        os.kill(int(ui["pid"]), 0)
        with urllib.request.urlopen(ui["url"] + "/health", timeout=1) as r:  # noqa: S310 - our own loopback URL
            return ui["url"] if r.status == 200 else None
    except (OSError, ValueError, KeyError):
        return None


def _env_defaults(runs_dir: Path) -> None:
    """Process-wide settings that must be in place before prefect / vllm are imported."""
    if "PREFECT_API_URL" not in os.environ and (url := _live_ui()):
        os.environ["PREFECT_API_URL"] = url  # runs show up in the `segflow ui` server
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(runs_dir.resolve() / ".prefect-results"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # The ephemeral server's telemetry heartbeat phones home (no network on most training boxes) and,
    # on a loaded machine, logs a "database is locked" traceback from its SQLite write mid-run.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def _apply_sets(values: dict, items: List[str]) -> dict:
    """Flat `key=value` overrides onto `values` (a section's defaults); unknown keys fail with the options."""
    from configs.loader import parse_value

    out = dict(values)
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or k not in out:
            _fail(f"--set {item!r}: expected one of {', '.join(sorted(out))}=value")
        out[k] = parse_value(v)
    return out


@app.callback(invoke_without_command=True)
def default_command(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:  # bare `segflow` runs the embedded default
        ctx.invoke(run)


@app.command()
def run(
    preset: str = typer.Option("default", help="Preset name in configs/presets/."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with config deltas."),
    set_: List[str] = typer.Option([], "--set", help="Override, e.g. --set train.lr=1e-5 (repeatable)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where runs are written."),
) -> None:
    """Run (or resume) the rl_train flow. The same command always resumes the same run."""
    from configs.loader import ConfigError, resolve

    try:
        cfg = resolve(preset, config, set_)
    except ConfigError as e:
        _fail(str(e))
    from configs.loader import run_id
    from storage.run_lock import RunLockedError, run_lock

    try:  # fail at once, before Prefect starts, when another process is writing this run
        with run_lock(runs_dir / run_id(cfg)):
            pass
    except RunLockedError as e:
        _fail(str(e))
    _env_defaults(runs_dir)
    from flows.rl_train import rl_train

    try:
        summary = rl_train(cfg, str(runs_dir))
    except (RunLockedError, ValueError, FileNotFoundError) as e:  # bad input: the message names file/row/key
        _fail(f"{e}\n(the run's log above has the traceback; fix the input and rerun the same command to resume)")
    _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"run {s['run_id']}")
    avg = s.get("eval_avg_at_k", {})
    t.add_column("held-out accuracy after")
    t.add_column("greedy", justify="right")
    t.add_column("avg@k, sampled", justify="right")
    for k, v in s["eval_accuracy"].items():
        t.add_row("warm start / start model" if k == "0" else f"iteration {k}", f"{v:.3f}",
                  f"{avg[k]:.3f}" if k in avg else "")
    st = Table(title="seconds per stage")
    st.add_column("stage")
    st.add_column("wall, this invocation", justify="right")
    st.add_column("measured work, whole run", justify="right")
    for k, v in s["stage_seconds"].items():
        work = s.get("compute_seconds", {}).get(k)
        st.add_row(k, f"{v:.1f}", "" if work is None else f"{work:.1f}")
    console = Console()
    console.print(t, st)
    console.print(f"initial {s['initial_eval_accuracy']:.3f} -> final {s['final_eval_accuracy']:.3f}, "
                  f"wall {s['wall_seconds']:.0f} s; stages executed {sum(s['stages_executed'].values())}, "
                  f"cached {sum(s['stages_cached'].values())}")


@app.command()
def sql(
    query: str = typer.Argument(..., help="SQL over views runs, prompts, rollouts, grades, advantages, metrics, eval_results, eval_samples, health, ... (README, Artifacts)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    fmt: str = typer.Option("table", "--format", help="table | csv | json (a list of row objects)."),
) -> None:
    """Query every run's artifacts with DuckDB."""
    import duckdb

    from storage.catalog import query as run_query

    if fmt not in ("table", "csv", "json"):
        _fail(f"--format {fmt!r}: expected table, csv or json")
    try:
        cols, rows = run_query(runs_dir, query)
    except (duckdb.Error, ValueError) as e:  # a SQL error, or a statement that would write
        _fail(str(e).splitlines()[0])
    if fmt == "json":
        print(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table()
        for c in cols:
            t.add_column(c)
        for r in rows:
            t.add_row(*("" if v is None else str(v) for v in r))
        Console().print(t)


@app.command()
def advantages(
    estimator: str = typer.Option(..., help="Estimator name (storage/sql/adv_<name>.sql)."),
    rollouts: Optional[Path] = typer.Option(None, exists=True, dir_okay=False),
    grades: Optional[Path] = typer.Option(None, exists=True, dir_okay=False),
    out: Path = typer.Option(..., help="Advantages Parquet to write."),
    segments: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                            help="segments.parquet, for spo_chain (instead of rollouts + grades)."),
    nodes: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                         help="tree_nodes.parquet, for spo_tree (instead of rollouts + grades)."),
    set_: List[str] = typer.Option([], "--set", help="Advantage parameter, e.g. --set eps=1e-8 (see `advantage` in docs/config.md)."),
    kl: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="ref_logprobs.parquet: subtract kl_coef * kl from each score."),
    kl_coef: float = typer.Option(0.0, help="KL-in-reward coefficient used with --kl."),
) -> None:
    """Recompute advantages for existing rollouts with any estimator, using the flow's SQL."""
    from pydantic import ValidationError

    from configs.schema import AdvantageSection, SPOSection
    from storage.advantages import (
        SEGMENT_ESTIMATORS,
        TREE_ESTIMATORS,
        compute_advantages,
        compute_segment_advantages,
        compute_tree_advantages,
    )
    from storage.parquet import write_parquet
    from storage.schemas import ADVANTAGES, SEGMENT_ADVANTAGES

    if estimator in TREE_ESTIMATORS:  # SPO-tree: --nodes, and keys of the tree section
        from configs.schema import TreeSection
        from storage.schemas import TREE_ADVANTAGES
        from tasks.advantage import tree_sql_params

        if nodes is None:
            _fail(f"--estimator {estimator} needs --nodes PATH (tree_nodes.parquet of a run)")
        values = _apply_sets({k: getattr(TreeSection(), k) for k in ("value", "sibling_std", "eps", "drop_zero")}, set_)
        try:
            table = compute_tree_advantages(nodes, tree_sql_params(TreeSection(**values)))
        except Exception as e:  # noqa: BLE001 - a bad value surfaces as a validation or DuckDB error
            _fail(f"{estimator}: {e}")
        ref = write_parquet(table, TREE_ADVANTAGES, out)
        print(f"wrote {table.num_rows} rows ({sum(table['kept'].to_pylist())} kept edges) to {ref.path} "
              f"(sha256 {ref.sha256[:12]})")
        return
    if estimator in SEGMENT_ESTIMATORS:  # SPO-chain: --segments, and keys of the spo section
        if segments is None:
            _fail(f"--estimator {estimator} needs --segments PATH (segments.parquet of a run)")
        params = _apply_sets({"normalize": SPOSection().normalize, "masked": True,
                              "whiten_eps": SPOSection().whiten_eps}, set_)
        try:
            table = compute_segment_advantages(estimator, segments, params)
        except Exception as e:  # noqa: BLE001 - a bad parameter value surfaces as a DuckDB error
            _fail(f"{estimator}: {e}")
        ref = write_parquet(table, SEGMENT_ADVANTAGES, out)
        print(f"wrote {table.num_rows} rows to {ref.path} (sha256 {ref.sha256[:12]})")
        return
    if rollouts is None or grades is None:
        _fail(f"--estimator {estimator} needs --rollouts PATH and --grades PATH")

    params = AdvantageSection().model_dump()
    params.pop("estimator")
    params = _apply_sets(params, set_)
    try:
        params = AdvantageSection(estimator="grpo", **params).model_dump()  # validates types and ranges
    except ValidationError as e:
        err = e.errors()[0]
        _fail(f"--set {'.'.join(str(x) for x in err['loc'])}={err.get('input')!r}: {err['msg']}")
    import duckdb

    try:
        table = compute_advantages(estimator, rollouts, grades, {**params, "kl_reward_coef": kl_coef}, kl=kl)
    except (ValueError, duckdb.Error) as e:  # a bad estimator name, or an unreadable or mismatched file
        _fail(str(e))
    ref = write_parquet(table, ADVANTAGES, out)
    print(f"wrote {table.num_rows} rows to {ref.path} (sha256 {ref.sha256[:12]})")


@app.command()
def grade(
    task: str = typer.Option(..., help="arith | gsm8k | math"),
    input: Path = typer.Option(..., exists=True, dir_okay=False, help='JSONL lines {"response": ..., "reference": ...}'),
    out: Optional[Path] = typer.Option(None, help="Write JSONL here instead of stdout."),
    set_: List[str] = typer.Option([], "--set", help="Reward scheme, e.g. --set truncated=-1 (see RewardSection)."),
) -> None:
    """Grade responses with the pipeline's graders. Optional per-line "finish_reason" ("length" = truncated)."""
    from configs.schema import RewardSection
    from storage.handles import atomic_write_text
    from tasks.graders import grade_all, scheme_of

    reward = _apply_sets(RewardSection().model_dump(), set_)
    rows = []
    for n, line in enumerate(input.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((str(row["response"]), str(row["reference"]), str(row.get("finish_reason", "stop"))))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            _fail(f"{input}:{n}: expected a JSON object with 'response' and 'reference' ({e})")
    try:
        grades = grade_all(task, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                           scheme_of(RewardSection(**reward)))
    except ValueError as e:
        _fail(str(e))
    text = "".join(json.dumps({"score": None if g.score != g.score else g.score, "status": g.status, "extracted": g.extracted}) + "\n"
                   for g in grades)
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)


@app.command()
def presets() -> None:
    """List the available presets."""
    from configs.loader import available_presets

    for p in available_presets():
        print(p)


# tree and segments live in flows/cli_views.py; eval, compare, report, ui and serve in flows/cli_ops.py.
# Importing them registers their commands on `app`.
from flows import cli_ops, cli_views  # noqa: E402, F401

def main() -> None:
    """The `segflow` console script: the app, then a quick exit.

    Interpreter teardown after a command (freeing every module of prefect, pydantic, pandas) takes ~0.8 s
    on these machines, a sixth of a fully cached rerun. The handler registered here, first, runs last:
    after Python has joined its threads and run every other exit handler (Prefect's log and event
    drains among them), it flushes stdio and ends the process with the command's exit code.
    """
    import atexit

    code = [0]

    def _exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code[0])

    atexit.register(_exit_now)
    try:
        app()
    except SystemExit as e:
        code[0] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    except BaseException:
        code[0] = 1
        raise


if __name__ == "__main__":
    # Run the entry point of the importable module (flows.cli), whose app cli_ops registered its commands on.
    from flows.cli import main as registered_main

    registered_main()
