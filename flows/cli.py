"""`segflow` command line: run, sql, advantages, grade, presets (tree, segments: cli_views; eval, compare, report, ui,
serve: cli_ops)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import typer

from flows import cli_ops, cli_views
from flows.cli_common import apply_sets, console, env_defaults, fail, run_dir, telemetry_off
from tasks.datasets.registry import TASK_NAMES, spec_of_task

app = typer.Typer(
    add_completion=False, no_args_is_help=False, help="RL post-training for LLM reasoning, as Prefect flows."
)


@app.callback(invoke_without_command=True)
def default_command(ctx: typer.Context) -> None:
    telemetry_off()  # every command, `segflow ui`'s server included; before anything imports Prefect
    if ctx.invoked_subcommand is None:  # bare `segflow` runs the embedded default
        ctx.invoke(run)


@app.command()
def run(
    preset: str = typer.Option("default", help="Preset name in configs/presets/."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with config deltas."),
    set_: list[str] = typer.Option([], "--set", help="Override, e.g. --set train.lr=1e-5 (repeatable)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where runs are written."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Also show third-party messages known to be benign (vLLM's, Prefect's server notice)."
    ),
) -> None:
    """Run (or resume) the rl_train flow. The same command always resumes the same run."""
    if verbose:  # read by env_defaults (Prefect's) and the engine at start (vLLM's), here and in its Ray actors
        os.environ["SEGFLOW_VERBOSE"] = "1"
    from configs.loader import ConfigError, resolve

    try:
        cfg = resolve(preset, config, set_)
    except ConfigError as e:
        fail(str(e))
    from flows.preflight import run_problems

    if problem := run_problems(cfg):  # a missing model or dataset, a bad data row: seconds, before Prefect
        fail(problem)
    from configs.loader import run_id
    from storage.disk import RunsDirNotWritable, check_writable, reported_disk_full
    from storage.run_lock import RunLockedError, run_lock

    try:  # a read-only or foreign runs directory fails here, not as a traceback from the first write
        check_writable(runs_dir)
    except RunsDirNotWritable as e:
        fail(str(e))
    try:  # fail at once, before Prefect starts, when another process is writing this run
        with run_lock(runs_dir / run_id(cfg)):
            pass
    except RunLockedError as e:
        fail(str(e))
    try:
        env_defaults(runs_dir)
        from flows.notify import quiet_interrupt_crashes
        from flows.rl_train import rl_train

        quiet_interrupt_crashes()
        summary = rl_train(cfg, str(runs_dir))
    except KeyboardInterrupt:  # Ctrl-C cancels: finished stages stay cached and the flow's hook sends nothing
        typer.secho("interrupted; rerun the same command to resume", fg="yellow", err=True)
        raise typer.Exit(130) from None  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
    except (RunLockedError, ValueError, FileNotFoundError) as e:  # bad input: the message names file/row/key
        fail(f"{e}\n(the run's log above has the traceback; fix the input and rerun the same command to resume)")
    except OSError as e:  # a full disk says where, what and what to do; finished stages stay cached
        if (full := reported_disk_full(e, runs_dir)) is None:
            raise
        fail(str(full))
    _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.table import Table

    t = Table(title=f"run {s['run_id']}")
    avg = s.get("eval_avg_at_k", {})
    t.add_column("held-out accuracy after")
    t.add_column("greedy", justify="right")
    t.add_column("avg@k, sampled", justify="right")
    for k, v in s["eval_accuracy"].items():
        t.add_row(
            "warm start / start model" if k == "0" else f"iteration {k}",
            f"{v:.3f}",
            f"{avg[k]:.3f}" if k in avg else "",
        )
    st = Table(title="seconds per stage")
    st.add_column("stage")
    st.add_column("wall, this invocation", justify="right")
    st.add_column("measured work, whole run", justify="right")
    for k, v in s["stage_seconds"].items():
        work = s.get("compute_seconds", {}).get(k)
        st.add_row(k, f"{v:.1f}", "" if work is None else f"{work:.1f}")
    out = console()  # off a terminal: wide enough that a log keeps whole rows
    out.print(t, st)
    out.print(
        f"initial {s['initial_eval_accuracy']:.3f} -> final {s['final_eval_accuracy']:.3f}, "
        f"wall {s['wall_seconds']:.0f} s; stages executed {sum(s['stages_executed'].values())}, "
        f"cached {sum(s['stages_cached'].values())}"
    )


@app.command()
def sql(
    query: str = typer.Argument(
        ...,
        help=(
            "SQL over views runs, prompts, rollouts, grades, advantages, metrics, eval_results, eval_samples, "
            "health, metric_names (docs/metrics.md), ... (README, Artifacts)."
        ),
    ),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    fmt: str = typer.Option("table", "--format", help="table | csv | json (a list of row objects)."),
    timeout: float = typer.Option(60.0, "--timeout", min=0, help="Seconds the query may run; 0 = no limit."),
) -> None:
    """Query every run's artifacts with DuckDB: one read-only statement (SELECT, PIVOT, EXPLAIN of those)."""
    import duckdb

    from storage.catalog import QueryTimeout
    from storage.catalog import query as run_query

    if fmt not in ("table", "csv", "json"):
        fail(f"--format {fmt!r}: expected table, csv or json")
    skipped: list[str] = []
    error = None
    try:
        cols, rows = run_query(runs_dir, query, timeout=timeout, skipped=skipped)
    except QueryTimeout as e:
        error = (
            f"the query ran longer than --timeout {e.seconds:g} s and was stopped; narrow it (a where "
            "clause, a limit) or raise --timeout (0 = no limit)"
        )
    except (duckdb.Error, ValueError) as e:  # a SQL error, a statement that would write, several statements
        error = str(e).splitlines()[0]
    for why in skipped:  # unreadable files are left out of every view rather than failing the query
        typer.secho(f"warning: skipped {why}", fg="yellow", err=True)
    if error:
        fail(error)
    if not _has_runs(runs_dir):  # the query ran, over empty views: a wrong --runs-dir is the usual cause
        typer.secho(
            f"warning: no runs found under {runs_dir.resolve()}: every view is empty (--runs-dir names "
            "the directory `segflow run` wrote to)",
            fg="yellow",
            err=True,
        )
    if skipped:  # on stderr, so that csv/json stay parseable; the table says it under itself too
        typer.secho(
            f"warning: the result leaves out the {len(skipped)} unreadable file(s) named above", fg="yellow", err=True
        )
    if fmt == "json":
        print(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        from rich.table import Table

        t = Table()
        for c in cols:
            t.add_column(c)
        for r in rows:
            t.add_row(*("" if v is None else str(v) for v in r))
        console().print(t)
        if skipped:
            print(f"({len(skipped)} unreadable file(s) left out of this result: see the warnings)")


def _has_runs(runs_dir: Path) -> bool:
    """Does `runs_dir` hold anything a view reads (a run's config.yaml, or any artifact of any view)?"""
    from storage.layout import TABLE_GLOBS

    patterns = ("*/config.yaml", *TABLE_GLOBS.values())
    return any(next(runs_dir.glob(p), None) is not None for p in patterns)


@app.command()
def advantages(
    run: str | None = typer.Option(
        None,
        "--run",
        help="Run directory (or id under --runs-dir): recompute an "
        "iteration from the run's own files and saved config.",
    ),
    iteration: int | None = typer.Option(None, "--iteration", "-k", help="With --run: the iteration (1, 2, ...)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where --run looks for a run id."),
    estimator: str | None = typer.Option(
        None, help="Sets advantage.estimator (storage/sql/adv_<name>.sql); required without --run."
    ),
    preset: str = typer.Option("default", help="Without --run: the preset whose config the files are computed under."),
    rollouts: Path | None = typer.Option(None, exists=True, dir_okay=False),
    grades: Path | None = typer.Option(None, exists=True, dir_okay=False),
    segments: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="segments.parquet, for spo_chain (instead of rollouts + grades)."
    ),
    nodes: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="tree_nodes.parquet, for spo_tree (instead of rollouts + grades)."
    ),
    kl: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="ref_logprobs.parquet, read when the KL penalty is in the reward."
    ),
    kl_coef: float | None = typer.Option(None, help="Short for --set train.kl_coef=B --set train.kl_placement=reward."),
    out: Path | None = typer.Option(
        None,
        help="Parquet to write. With --run the default is ./<artifact>-<run id>-<k>.parquet; never inside the run.",
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Config override, e.g. --set spo.rho=0.5; a key without a "
        "section is the estimator's (advantage, spo or tree): --set eps=1e-8.",
    ),
) -> None:
    """Recompute advantages with the flow's own stage code (tasks/advantage.advantage_table).

    With --run and --iteration: that iteration's files, under the run's saved config plus --set. Without:
    the given files, under --preset's config plus --estimator and --set.
    """
    from configs.loader import ConfigError
    from storage.parquet import write_parquet

    env_defaults(runs_dir)  # tasks.advantage imports prefect, which reads PREFECT_API_URL only at import
    from tasks.advantage import advantage_table

    given = {
        k: v
        for k, v in dict(rollouts=rollouts, grades=grades, kl=kl, segments=segments, nodes=nodes).items()
        if v is not None
    }
    overrides = ([f"advantage.estimator={estimator}"] if estimator else []) + (
        [f"train.kl_coef={kl_coef}", "train.kl_placement=reward"] if kl_coef is not None else []
    )
    stored = None
    try:
        if run is not None:
            if given:
                fail(f"--run reads the run's own files: drop {', '.join('--' + k for k in given)}")
            if iteration is None:
                fail("--run needs --iteration K")
            cfg, files, stored = _from_run(run, runs_dir, iteration, estimator, overrides, set_)
            root = stored.parents[2]  # <run>/iterations/<k>/<file>
            out = out or Path(f"{stored.stem}-{root.name}-{iteration:04d}.parquet")
            if out.resolve().is_relative_to(root):
                fail(f"--out {out}: inside the run directory {root}; only its flow writes there")
        else:
            if estimator is None:
                fail("give --run RUN --iteration K, or --estimator NAME with its input files")
            if out is None:
                fail("--out PATH: where to write the advantages")
            cfg, files = _from_files(estimator, preset, given, overrides, set_)
    except ConfigError as e:
        fail(str(e))
    import duckdb

    try:
        table = advantage_table(cfg, files)
    except (ValueError, duckdb.Error) as e:  # a bad or mismatched input file (the config is valid by now)
        fail(str(e))
    ref = write_parquet(table, table.schema, out)
    kept = f" ({sum(table['kept'].to_pylist())} kept edges)" if "kept" in table.column_names else ""
    print(f"wrote {table.num_rows} rows{kept} to {ref.path} (sha256 {ref.sha256[:12]})")
    if stored is not None:
        print(_versus(ref, table, stored))


def _from_run(run: str, runs_dir: Path, iteration: int, estimator: str | None, overrides: list[str], sets: list[str]):
    """A run's iteration: (its saved config + overrides + sets, the files its stage read, the file it wrote)."""
    from configs.loader import load_run_config
    from storage.layout import RunLayout
    from tasks.advantage import artifact_of, run_inputs

    root = run_dir(run, runs_dir).resolve()
    layout = RunLayout(runs_dir=str(root.parent), run_id=root.name)
    est = estimator or load_run_config(layout.config).advantage.estimator
    cfg = load_run_config(layout.config, overrides + [_section_key(s, est) for s in sets])
    files = run_inputs(cfg, layout, iteration)
    absent = [str(p) for p in vars(files).values() if p is not None and not p.exists()]
    if absent:
        fail(f"{', '.join(absent)}: no such file (iteration {iteration} of run {root.name} never wrote it)")
    return cfg, files, artifact_of(cfg, layout, iteration)[0]


def _from_files(estimator: str, preset: str, given: dict, overrides: list[str], sets: list[str]):
    """Loose files: (preset's config + overrides + sets, the files), exactly those the estimator reads."""
    from configs.loader import resolve
    from tasks.advantage import FILES, AdvantageInputs, needed_files

    cfg = resolve(preset, None, overrides + [_section_key(s, estimator) for s in sets])
    need = needed_files(cfg)
    if set(need) != set(given):
        extra = [f"--{k}" for k in given if k not in need]
        fail(
            f"--estimator {estimator} (with this config) reads "
            + ", ".join(f"--{n} PATH ({FILES[n][1]})" for n in need)
            + (f"; not {', '.join(extra)}" if extra else "")
        )
    return cfg, AdvantageInputs(**given)


def _section_key(item: str, estimator: str) -> str:
    """`eps=1e-8` -> `advantage.eps=1e-8`: a --set key without a section names one of the estimator's
    section (its registry entry's: spo for spo_chain, tree for spo_tree, advantage otherwise); a dotted key
    is left as is."""
    from tasks.algos.registry import REGISTRY

    key, sep, _ = item.partition("=")
    if not sep or "." in key:
        return item
    spec = REGISTRY.get(estimator)  # an unknown name is left to the config loader, which names the known ones
    return f"{spec.section if spec else 'advantage'}.{item}"


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
    changed = {c: ~((a == b) | (a != a) & (b != b)) if a.dtype.kind == "f" else a != b for c, (a, b) in values.items()}
    cols = [c for c, d in changed.items() if d.any()]
    msg = f"differs from the run's {stored} in {', '.join(cols)}"
    if "advantage" in cols:
        a, b = values["advantage"]
        d = changed["advantage"]
        msg += f": {int(d.sum())} of {len(a)} advantages, max |diff| {np.nanmax(np.abs(a - b)[d]):.3g}"
    return msg


@app.command()
def grade(
    task: str = typer.Option(..., help=" | ".join(TASK_NAMES)),
    input: Path = typer.Option(
        ..., exists=True, dir_okay=False, help='JSONL lines {"response": ..., "reference": ...}'
    ),
    out: Path | None = typer.Option(None, help="Write JSONL here instead of stdout."),
    set_: list[str] = typer.Option([], "--set", help="Reward scheme, e.g. --set truncated=-1 (see RewardSection)."),
) -> None:
    """Grade responses with the pipeline's graders. Optional per-line "finish_reason" ("length" = truncated)."""
    from configs.schema import RewardSection
    from storage.handles import atomic_write_text
    from tasks.datasets.graders import grade_all, scheme_of

    try:
        spec_of_task(task)
    except ValueError as e:
        fail(f"--task: {e}")
    reward = apply_sets(RewardSection().model_dump(), set_)
    rows = []
    for n, line in _utf8_lines(input):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((row["response"], str(row["reference"]), str(row.get("finish_reason", "stop"))))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            fail(f"{input}:{n}: expected a JSON object with 'response' and 'reference' ({e})")
    try:
        grades = grade_all(
            task, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], scheme_of(RewardSection(**reward))
        )
    except ValueError as e:
        fail(str(e))
    text = "".join(
        json.dumps({"score": None if g.score != g.score else g.score, "status": g.status, "extracted": g.extracted})
        + "\n"
        for g in grades
    )
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
        fail(f"{path}: cannot read ({e.strerror or e})")
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            utf16 = raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\0" in raw
            hint = "the file looks UTF-16: save it as UTF-8" if utf16 else "the file must be UTF-8"
            fail(f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}) ({hint}): {raw[:80]!r}")
        if (nul := raw.find(b"\0")) >= 0:
            fail(f"{path}:{n}: NUL byte at offset {nul} (the file looks UTF-16: save it as UTF-8): {raw[:80]!r}")
        out.append((n, text.removeprefix("\ufeff")))  # a UTF-8 BOM is not data
    return out


@app.command()
def presets() -> None:
    """List the available presets: name, advantage estimator, model, and the first line of its description."""
    from configs.loader import ConfigError, available_presets, preset_summary, resolve

    rows = []
    for p in available_presets():
        try:
            cfg = resolve(p)
            est, model = cfg.advantage.estimator, cfg.model.name_or_path
        except ConfigError:  # an overlay that only validates on top of another preset still gets its line
            est = model = "-"
        rows.append((p, est, model, preset_summary(p)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])


# eval, compare, report, ui and serve live in flows/cli_ops.py, tree and segments in flows/cli_views.py, each
# on a Typer app of its own; `segflow` lists them after this module's commands, in this order.
app.registered_commands += cli_ops.app.registered_commands + cli_views.app.registered_commands


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
    main()
