"""Every `segflow` command that talks to Prefect finds a running `segflow ui` (issue 31, item 4).

Prefect reads PREFECT_API_URL once, when it is imported; a command that imports it before
flows/cli_common.env_defaults has set the variable starts a temporary server instead (5-7 s) and its runs
never show up in the UI. Each command runs here in a fresh interpreter whose import hook records
PREFECT_API_URL at the moment `prefect` is first imported, then ends the process (nothing else needs to run).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs in the child: records the variable at the first `import prefect` to $SEGFLOW_TEST_RECORD and exits 0,
# or records "never" when the command ends without importing prefect.
CHILD = r"""
import atexit, importlib.abc, json, os, sys
record = os.environ["SEGFLOW_TEST_RECORD"]

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "prefect":
            with open(record, "w") as f:
                json.dump({"imported": True, "url": os.environ.get("PREFECT_API_URL")}, f)
            os._exit(0)
        return None

def never():
    if not os.path.exists(record):
        with open(record, "w") as f:
            json.dump({"imported": False}, f)

sys.meta_path.insert(0, Hook())
atexit.register(never)
sys.argv = ["segflow"] + json.loads(os.environ["SEGFLOW_TEST_ARGV"])
from flows.cli import app
try:
    app()
except SystemExit:
    pass
never()
"""


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # the stdlib names it
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A stand-in `segflow ui`: a loopback server answering /api/health, and its marker file."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    marker = tmp_path_factory.mktemp("ui") / "ui.json"
    marker.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    yield url, marker
    server.shutdown()


def _first_prefect_import(argv: list[str], marker: Path, tmp: Path) -> dict:
    record = tmp / "record.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(SEGFLOW_UI_MARKER=str(marker), SEGFLOW_TEST_RECORD=str(record), SEGFLOW_TEST_ARGV=json.dumps(argv))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=tmp,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert record.exists(), proc.stderr[-3000:]
    return json.loads(record.read_text())


def test_importing_the_cli_does_not_import_prefect():
    code = "import sys, flows.cli; print('prefect' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip() == "False", out.stderr


def _serve_file(tmp: Path) -> Path:
    path = tmp / "serve.yaml"
    path.write_text("deployments:\n  - name: nightly\n    flow: train\n    interval: 3600\n")
    return path


def _run_dir(tmp: Path) -> Path:
    """A directory `segflow compare` accepts as a run by name (its checks read config.yaml later)."""
    path = tmp / "runs" / "some-run"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("run: {}\n")
    return path


def _model_dir(tmp: Path) -> Path:
    """A directory `segflow eval`'s pre-flight check accepts as a model (it holds a config.json)."""
    path = tmp / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


# Commands that use Prefect: each must import it only after PREFECT_API_URL points at the running UI.
PREFECT_COMMANDS = {
    "run": lambda tmp: ["run", "--runs-dir", str(tmp / "runs")],
    "eval": lambda tmp: ["eval", "-c", str(_model_dir(tmp)), "--runs-dir", str(tmp / "runs"), "--limit", "2"],
    "compare": lambda tmp: ["compare", str(_run_dir(tmp)), "--runs-dir", str(tmp / "runs")],
    "serve": lambda tmp: ["serve", "--config", str(_serve_file(tmp)), "--dry-run"],
    "advantages": lambda tmp: ["advantages", "--run", "no-such-run", "--iteration", "1", "--runs-dir", str(tmp)],
}


@pytest.mark.parametrize("command", sorted(PREFECT_COMMANDS))
def test_command_imports_prefect_after_the_ui_url_is_set(command, ui, tmp_path):
    url, marker = ui
    seen = _first_prefect_import(PREFECT_COMMANDS[command](tmp_path), marker, tmp_path)
    assert seen == {"imported": True, "url": url}


# Commands that need no Prefect must not pay for importing it (and so cannot read the variable too early).
OTHER_COMMANDS = {
    "sql": lambda tmp: ["sql", "select 1", "--runs-dir", str(tmp)],
    "presets": lambda tmp: ["presets"],
    "report": lambda tmp: ["report", "no-such-run", "--runs-dir", str(tmp)],
}


@pytest.mark.parametrize("command", sorted(OTHER_COMMANDS))
def test_command_without_prefect_never_imports_it(command, ui, tmp_path):
    _, marker = ui
    assert _first_prefect_import(OTHER_COMMANDS[command](tmp_path), marker, tmp_path) == {"imported": False}
