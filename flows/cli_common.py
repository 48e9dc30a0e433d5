"""Helpers every `segflow` command module shares: the error exit, process-wide environment defaults, the
`segflow ui` marker, `--set` overrides and run lookup. Imported by flows/cli.py, cli_ops.py and cli_views.py,
and importing none of them, so the command modules form no import circle."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer

# Written by `segflow ui` ({"url", "pid"}) so other segflow commands find the running server.
UI_MARKER = Path(os.environ.get("SEGFLOW_UI_MARKER", Path.home() / ".segflow-ui.json"))


def live_ui() -> str | None:
    """The API URL of a running `segflow ui` server, if one is up (its pid alive and /api/health answers)."""
    import urllib.request

    try:
        ui = json.loads(UI_MARKER.read_text())
        os.kill(int(ui["pid"]), 0)
        with urllib.request.urlopen(ui["url"] + "/health", timeout=1) as r:  # noqa: S310 - our own loopback URL
            return ui["url"] if r.status == 200 else None
    except (OSError, ValueError, KeyError):
        return None


def env_defaults(runs_dir: Path) -> None:
    """Process-wide settings that must be in place before prefect / vllm are imported."""
    if "PREFECT_API_URL" not in os.environ and (url := live_ui()):
        os.environ["PREFECT_API_URL"] = url  # runs show up in the `segflow ui` server
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(runs_dir.resolve() / ".prefect-results"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # The ephemeral server's telemetry heartbeat phones home (no network on most training boxes) and,
    # on a loaded machine, logs a "database is locked" traceback from its SQLite write mid-run.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' "Loading weights" / "Writing model shards" tqdm bars (and the hub's) follow this flag, read
    # at import: every checkpoint load would print one, and into a log as carriage-return updates.
    # segflow's own progress (tasks/progress.py, SEGFLOW_PROGRESS) reports the stages instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from tasks.engines.vllm_engine import vllm_env_defaults

    vllm_env_defaults()
    from flows.prefect_server import guard_ephemeral_server

    guard_ephemeral_server()  # a killed segflow takes its temporary Prefect server with it


def console(**kwargs):
    """A rich Console for tables. Off a terminal rich assumes 80 columns and cuts wide tables in a log; there
    the width is COLUMNS, else 200."""
    from rich.console import Console

    if not sys.stdout.isatty():
        kwargs.setdefault("width", int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 200)
    return Console(**kwargs)


def fail(msg: str) -> NoReturn:
    """The CLI's one way out on bad input: `error: msg` in red on stderr, exit code 2."""
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def apply_sets(values: dict, items: list[str]) -> dict:
    """Flat `key=value` overrides onto `values` (a section's defaults); unknown keys fail with the options."""
    from configs.loader import parse_value

    out = dict(values)
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or k not in out:
            fail(f"--set {item!r}: expected one of {', '.join(sorted(out))}=value")
        out[k] = parse_value(v)
    return out


def run_dir(run: str, runs_dir: Path) -> Path:
    """A run given by its directory or by its id under --runs-dir."""
    for cand in (Path(run), runs_dir / run):
        if (cand / "config.yaml").exists():
            return cand
    fail(f"no run {run!r}: neither {run} nor {runs_dir / run} holds a config.yaml")
