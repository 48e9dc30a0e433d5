"""Helpers every `segflow` command module shares: the error exit, process-wide environment defaults, the
`segflow ui` marker, `--set` overrides and run lookup. Imported by flows/cli.py, cli_ops.py and cli_views.py,
and importing none of them, so the command modules form no import circle."""

from __future__ import annotations

import json
import logging
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
    telemetry_off()
    quiet_benign_prefect_messages()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' "Loading weights" / "Writing model shards" tqdm bars (and the hub's) follow this flag, read
    # at import: every checkpoint load would print one, and into a log as carriage-return updates.
    # segflow's own progress (tasks/progress.py, SEGFLOW_PROGRESS) reports the stages instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from tasks.engines.vllm_engine import vllm_env_defaults

    vllm_env_defaults()
    from flows.prefect_server import guard_ephemeral_server

    guard_ephemeral_server()  # a killed segflow takes its temporary Prefect server with it


def telemetry_off() -> None:
    """Prefect's telemetry off, unless the user set these variables; before Prefect is imported, which reads them.

    - PREFECT_SERVER_ANALYTICS_ENABLED=false: the server's heartbeat phones home (no network on most training
      boxes) and, on a loaded machine, logs a "database is locked" traceback from its SQLite write mid-run.
    - DO_NOT_TRACK=1: the SDK's own telemetry. Importing Prefect in a terminal for the first time prints its
      banner ("Prefect collects anonymous usage data to improve the product. To opt out: ...", three lines on
      stderr) and starts a client that sends usage events; this variable is what turns both off."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


# Prefect log lines known to be benign, by logger name and start of the message (the rest varies: a port);
# hidden unless SEGFLOW_VERBOSE=1 (`segflow run --verbose`), like the engine's (tasks/engines/vllm_engine.py).
# Each command that finds no `segflow ui` starts a throwaway server and says so in two lines with a docs link
# ("Starting temporary server on http://127.0.0.1:8602 / See https://docs.prefect.io/..."), and again when it
# stops: nothing to act on, on every command.
BENIGN_PREFECT_MESSAGES: dict[str, tuple[str, ...]] = {
    "prefect": ("Starting temporary server on http://", "Stopping temporary server on http://"),
}


class DropMessageStarts(logging.Filter):
    """Drops records whose formatted message starts with one of `starts`."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_benign_prefect_messages() -> None:
    """A DropMessageStarts filter on each logger of BENIGN_PREFECT_MESSAGES, once; none with SEGFLOW_VERBOSE=1.
    A logger's filters outlive Prefect's logging set-up (dictConfig adds handlers, never removes filters)."""
    if os.environ.get("SEGFLOW_VERBOSE") == "1":
        return
    for name, starts in BENIGN_PREFECT_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessageStarts) for f in logger.filters):
            logger.addFilter(DropMessageStarts(starts))


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
