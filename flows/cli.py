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
    from flows.prefect_server import guard_ephemeral_server

    guard_ephemeral_server()  # a killed segflow takes its temporary Prefect server with it


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
    from storage.disk import RunsDirNotWritable, check_writable, reported_disk_full
    from storage.run_lock import RunLockedError, run_lock

    try:  # a read-only or foreign runs directory fails here, not as a traceback from the first write
        check_writable(runs_dir)
    except RunsDirNotWritable as e:
        _fail(str(e))
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
    except OSError as e:  # a full disk says where, what and what to do; finished stages stay cached
        if (full := reported_disk_full(e, runs_dir)) is None:
            raise
        _fail(str(full))
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
    timeout: float = typer.Option(60.0, "--timeout", min=0, help="Seconds the query may run; 0 = no limit."),
) -> None:
    """Query every run's artifacts with DuckDB: one read-only statement (SELECT, PIVOT, EXPLAIN of those)."""
    import duckdb

    from storage.catalog import QueryTimeout
    from storage.catalog import query as run_query

    if fmt not in ("table", "csv", "json"):
        _fail(f"--format {fmt!r}: expected table, csv or json")
    skipped: list[str] = []
    error = None
    try:
        cols, rows = run_query(runs_dir, query, timeout=timeout, skipped=skipped)
    except QueryTimeout as e:
        error = (f"the query ran longer than --timeout {e.seconds:g} s and was stopped; narrow it (a where "
                 "clause, a limit) or raise --timeout (0 = no limit)")
    except (duckdb.Error, ValueError) as e:  # a SQL error, a statement that would write, several statements
        error = str(e).splitlines()[0]
    for why in skipped:  # unreadable files are left out of every view rather than failing the query
        typer.secho(f"warning: skipped {why}", fg="yellow", err=True)
    if error:
        _fail(error)
    if skipped:  # on stderr, so that csv/json stay parseable; the table says it under itself too
        typer.secho(f"warning: the result leaves out the {len(skipped)} unreadable file(s) named above",
                    fg="yellow", err=True)
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
        if skipped:
            print(f"({len(skipped)} unreadable file(s) left out of this result: see the warnings)")


@app.command()
def advantages(
    run: Optional[str] = typer.Option(None, "--run", help="Run directory (or id under --runs-dir): recompute an "
                                      "iteration from the run's own files and saved config."),
    iteration: Optional[int] = typer.Option(None, "--iteration", "-k", help="With --run: the iteration (1, 2, ...)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where --run looks for a run id."),
    estimator: Optional[str] = typer.Option(None, help="Sets advantage.estimator (storage/sql/adv_<name>.sql); "
                                            "required without --run."),
    preset: str = typer.Option("default", help="Without --run: the preset whose config the files are computed under."),
    rollouts: Optional[Path] = typer.Option(None, exists=True, dir_okay=False),
    grades: Optional[Path] = typer.Option(None, exists=True, dir_okay=False),
    segments: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                            help="segments.parquet, for spo_chain (instead of rollouts + grades)."),
    nodes: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                         help="tree_nodes.parquet, for spo_tree (instead of rollouts + grades)."),
    kl: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                      help="ref_logprobs.parquet, read when the KL penalty is in the reward."),
    kl_coef: Optional[float] = typer.Option(None, help="Short for --set train.kl_coef=B --set train.kl_placement=reward."),
    out: Optional[Path] = typer.Option(None, help="Parquet to write. With --run the default is "
                                       "./<artifact>-<run id>-<k>.parquet; never inside the run."),
    set_: List[str] = typer.Option([], "--set", help="Config override, e.g. --set spo.rho=0.5; a key without a "
                                   "section is the estimator's (advantage, spo or tree): --set eps=1e-8."),
) -> None:
    """Recompute advantages with the flow's own stage code (tasks/advantage.advantage_table).

    With --run and --iteration: that iteration's files, under the run's saved config plus --set. Without:
    the given files, under --preset's config plus --estimator and --set.
    """
    from configs.loader import ConfigError
    from storage.parquet import write_parquet
    from tasks.advantage import advantage_table

    given = {k: v for k, v in dict(rollouts=rollouts, grades=grades, kl=kl, segments=segments, nodes=nodes).items()
             if v is not None}
    overrides = ([f"advantage.estimator={estimator}"] if estimator else []) + \
        ([f"train.kl_coef={kl_coef}", "train.kl_placement=reward"] if kl_coef is not None else [])
    stored = None
    try:
        if run is not None:
            if given:
                _fail(f"--run reads the run's own files: drop {', '.join('--' + k for k in given)}")
            if iteration is None:
                _fail("--run needs --iteration K")
            cfg, files, stored = _from_run(run, runs_dir, iteration, estimator, overrides, set_)
            root = stored.parents[2]  # <run>/iterations/<k>/<file>
            out = out or Path(f"{stored.stem}-{root.name}-{iteration:04d}.parquet")
            if out.resolve().is_relative_to(root):
                _fail(f"--out {out}: inside the run directory {root}; only its flow writes there")
        else:
            if estimator is None:
                _fail("give --run RUN --iteration K, or --estimator NAME with its input files")
            if out is None:
                _fail("--out PATH: where to write the advantages")
            cfg, files = _from_files(estimator, preset, given, overrides, set_)
    except ConfigError as e:
        _fail(str(e))
    import duckdb

    try:
        table = advantage_table(cfg, files)
    except (ValueError, duckdb.Error) as e:  # a bad or mismatched input file (the config is valid by now)
        _fail(str(e))
    ref = write_parquet(table, table.schema, out)
    kept = f" ({sum(table['kept'].to_pylist())} kept edges)" if "kept" in table.column_names else ""
    print(f"wrote {table.num_rows} rows{kept} to {ref.path} (sha256 {ref.sha256[:12]})")
    if stored is not None:
        print(_versus(ref, table, stored))


def _from_run(run: str, runs_dir: Path, iteration: int, estimator: Optional[str], overrides: List[str],
              sets: List[str]):
    """A run's iteration: (its saved config + overrides + sets, the files its stage read, the file it wrote)."""
    from configs.loader import load_run_config
    from flows.cli_views import _run_dir
    from storage.layout import RunLayout
    from tasks.advantage import artifact_of, run_inputs

    root = _run_dir(run, runs_dir).resolve()
    layout = RunLayout(runs_dir=str(root.parent), run_id=root.name)
    est = estimator or load_run_config(layout.config).advantage.estimator
    cfg = load_run_config(layout.config, overrides + [_section_key(s, est) for s in sets])
    files = run_inputs(cfg, layout, iteration)
    absent = [str(p) for p in vars(files).values() if p is not None and not p.exists()]
    if absent:
        _fail(f"{', '.join(absent)}: no such file (iteration {iteration} of run {root.name} never wrote it)")
    return cfg, files, artifact_of(cfg, layout, iteration)[0]


def _from_files(estimator: str, preset: str, given: dict, overrides: List[str], sets: List[str]):
    """Loose files: (preset's config + overrides + sets, the files), exactly those the estimator reads."""
    from configs.loader import resolve
    from tasks.advantage import FILES, AdvantageInputs, needed_files

    cfg = resolve(preset, None, overrides + [_section_key(s, estimator) for s in sets])
    need = needed_files(cfg)
    if set(need) != set(given):
        extra = [f"--{k}" for k in given if k not in need]
        _fail(f"--estimator {estimator} (with this config) reads "
              + ", ".join(f"--{n} PATH ({FILES[n][1]})" for n in need) + (f"; not {', '.join(extra)}" if extra else ""))
    return cfg, AdvantageInputs(**given)


def _section_key(item: str, estimator: str) -> str:
    """`eps=1e-8` -> `advantage.eps=1e-8`: a --set key without a section names one of the estimator's
    section (spo for spo_chain, tree for spo_tree, advantage otherwise); a dotted key is left as is."""
    from configs.schema import SEGMENT_ESTIMATORS, TREE_ESTIMATORS

    key, sep, _ = item.partition("=")
    if not sep or "." in key:
        return item
    section = "spo" if estimator in SEGMENT_ESTIMATORS else "tree" if estimator in TREE_ESTIMATORS else "advantage"
    return f"{section}.{item}"


def _versus(written, table, stored: Path) -> str:
    """How a recomputed table (written to the FileRef `written`) compares with the run's own file."""
    import numpy as np

    from storage.handles import digest
    from storage.parquet import read_parquet

    if not stored.exists():
        return f"(the run has no {stored} to compare with)"
    if digest(stored) == written.sha256:
        return f"identical to the run's {stored}"
    theirs = read_parquet(stored, table.schema)
    if theirs.num_rows != table.num_rows:
        return f"differs from the run's {stored}: {table.num_rows} rows here, {theirs.num_rows} there"
    # NaN (and a null advantage, a root's) equals itself here: only real changes count.
    values = {c: [t[c].to_numpy() for t in (table, theirs)] for c in table.column_names}
    changed = {c: ~((a == b) | (a != a) & (b != b)) if a.dtype.kind == "f" else a != b
               for c, (a, b) in values.items()}
    cols = [c for c, d in changed.items() if d.any()]
    msg = f"differs from the run's {stored} in {', '.join(cols)}"
    if "advantage" in cols:
        a, b = values["advantage"]
        d = changed["advantage"]
        msg += f": {int(d.sum())} of {len(a)} advantages, max |diff| {np.nanmax(np.abs(a - b)[d]):.3g}"
    return msg


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
    for n, line in _utf8_lines(input):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((row["response"], str(row["reference"]), str(row.get("finish_reason", "stop"))))
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


def _utf8_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 file (for `segflow grade`), split on "\n" only: a JSON
    string may hold a raw U+2028, U+2029 or U+0085, which str.splitlines() would cut. A line that is not
    UTF-8 fails with its number and byte offset, and so does a NUL byte (valid UTF-8, but what UTF-16
    without a BOM looks like)."""
    try:
        data = path.read_bytes()
    except OSError as e:  # permissions, a directory: say which file instead of a traceback
        _fail(f"{path}: cannot read ({e.strerror or e})")
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            utf16 = raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\0" in raw
            hint = "the file looks UTF-16: save it as UTF-8" if utf16 else "the file must be UTF-8"
            _fail(f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}) ({hint}): {raw[:80]!r}")
        if (nul := raw.find(b"\0")) >= 0:
            _fail(f"{path}:{n}: NUL byte at offset {nul} (the file looks UTF-16: save it as UTF-8): {raw[:80]!r}")
        out.append((n, text.removeprefix("\ufeff")))  # a UTF-8 BOM is not data
    return out


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
    except OSError as e:  # a full disk in any command (grade --out, advantages --out, eval): one line, exit 2
        from storage.disk import DiskFullError

        if not isinstance(e, DiskFullError):
            code[0] = 1
            raise
        code[0] = 2
        typer.secho(f"error: {e}", fg="red", err=True)
        raise SystemExit(2) from None
    except BaseException:
        code[0] = 1
        raise


if __name__ == "__main__":
    # Run the entry point of the importable module (flows.cli), whose app cli_ops registered its commands on.
    from flows.cli import main as registered_main

    registered_main()
