"""A killed segflow takes its temporary Prefect API server with it (issue 27, item 7; flows/prefect_server.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.prefect_server import _alive, start_watchdog

ROOT = Path(__file__).resolve().parent.parent


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _ignores_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(ignored & (1 << (signal.SIGTERM - 1)))


def _parent(script: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """Start a parent process running `script`, which prints its child's pid; return (parent, child pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env
    )
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"parent printed {line!r} (exit {proc.poll()})"
    return proc, int(line)


# A parent that starts a stand-in server (a sleeping process) and its watchdog, then waits to be killed.
STAND_IN = """
    import subprocess, sys, time
    from flows.prefect_server import start_watchdog
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    {watch}
    print(server.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("watched", [True, False])
def test_server_dies_with_its_sigkilled_parent_only_when_watched(watched):
    parent, server = _parent(STAND_IN.format(watch="start_watchdog(server.pid)" if watched else "pass"))
    try:
        parent.kill()
        parent.wait()
        # Watched: SIGTERM at once. Unwatched (the control): still alive after the same wait.
        assert _gone_within(server, 3.0) == watched
    finally:
        _kill(server)


def test_watchdog_exits_when_the_server_exits_first():
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dog = start_watchdog(server.pid)
    try:
        time.sleep(0.5)  # the watchdog is waiting on both pids
        assert dog.poll() is None
        server.kill()
        server.wait()
        assert dog.wait(timeout=5) == 0
    finally:
        _kill(server.pid)
        _kill(dog.pid)


def test_watchdog_escalates_to_sigkill_when_sigterm_is_ignored():
    stubborn = '"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"'
    parent, server = _parent(
        STAND_IN.format(watch="start_watchdog(server.pid)").replace('"import time; time.sleep(600)"', stubborn)
    )
    try:
        deadline = time.monotonic() + 30
        while not _ignores_sigterm(server):  # the stand-in is still starting up
            assert time.monotonic() < deadline
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        assert not _gone_within(server, 3.0)  # SIGTERM ignored: still there inside the grace period
        assert _gone_within(server, 6.0)  # then SIGKILL
    finally:
        _kill(server)


@pytest.mark.slow
def test_sigkilled_process_leaves_no_prefect_server(tmp_path):
    """The real thing: an ephemeral server started the way Prefect starts it, after segflow's guard."""
    script = """
        import time
        from flows.prefect_server import guard_ephemeral_server
        guard_ephemeral_server()
        from prefect.server.api.server import SubprocessASGIServer
        server = SubprocessASGIServer()
        server.start()
        print(server.server_process.pid, flush=True)
        time.sleep(600)
    """
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    parent, server = _parent(script, env)
    try:
        assert "prefect.server.api.server:create_app" in Path(f"/proc/{server}/cmdline").read_bytes().decode()
        parent.kill()
        parent.wait()
        assert _gone_within(server, 10.0)  # SIGTERM, or SIGKILL after the 5 s grace
    finally:
        _kill(server)


def test_patch_wraps_the_server_start_and_drops_only_the_stop_notice(monkeypatch):
    import logging
    import types

    import flows.prefect_server as ps

    started = []

    class FakeServer:
        def _run_uvicorn_command(self):
            return types.SimpleNamespace(pid=4242)

    logger = logging.getLogger("segflow.test.fake_prefect")
    fake = types.SimpleNamespace(SubprocessASGIServer=FakeServer, subprocess_server_logger=logger)
    monkeypatch.setattr(ps, "start_watchdog", started.append)
    ps._patch(fake)
    ps._patch(fake)  # idempotent: one watchdog per server, one filter
    assert FakeServer()._run_uvicorn_command().pid == 4242 and started == [4242]

    def kept(msg):
        return logger.filter(logging.LogRecord(logger.name, logging.INFO, __file__, 1, msg, None, None))

    assert not kept("Stopping temporary server on http://127.0.0.1:8001")
    assert kept("Starting temporary server on http://127.0.0.1:8001")
    assert len(logger.filters) == 1


def test_guard_patches_prefect_only_when_its_server_module_is_imported():
    script = """
        import sys
        from flows.prefect_server import guard_ephemeral_server
        guard_ephemeral_server()
        guard_ephemeral_server()
        import prefect
        assert "prefect.server.api.server" not in sys.modules  # importing prefect costs no server import
        from prefect.server.api.server import SubprocessASGIServer
        print(int(getattr(SubprocessASGIServer._run_uvicorn_command, "_segflow_watched", False)), flush=True)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr[-2000:]
