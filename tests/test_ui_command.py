"""`segflow ui`: a busy port fails at once with exit 2; the banner and marker come only once the server is healthy."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

import flows.cli_ops as cli_ops


class FakeProc:
    """A server process that exits with `code` after `polls_alive` polls (never, when None)."""

    def __init__(self, polls_alive: int | None, code: int = 1):
        self.polls_alive, self.code, self.returncode = polls_alive, code, None

    def poll(self):
        if self.polls_alive is not None:
            if self.polls_alive == 0:
                self.returncode = self.code
                return self.code
            self.polls_alive -= 1
        return None


def test_ui_on_a_busy_port_exits_2_naming_the_port(tmp_path, monkeypatch):
    marker = tmp_path / "ui.json"
    marker.write_text('{"url": "http://127.0.0.1:1/api", "pid": 1}')  # another UI's marker must survive
    monkeypatch.setattr(cli_ops, "UI_MARKER", marker)
    started = []
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: started.append(a))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli_ops.port_in_use(port)
        result = CliRunner().invoke(cli_ops.app, ["ui", "--port", str(port)])
    assert result.exit_code == 2
    assert f"127.0.0.1:{port} is already in use" in result.output
    assert "Prefect UI on" not in result.output
    assert started == [] and marker.exists()


def test_wait_healthy_returns_none_once_healthy():
    answers = iter([False, False, True])
    sleeps = []
    assert cli_ops.wait_healthy(FakeProc(None), "u", 60, healthy=lambda url: next(answers), sleep=sleeps.append) is None
    assert len(sleeps) == 2


def test_wait_healthy_reports_a_server_that_exits_before_healthy():
    problem = cli_ops.wait_healthy(FakeProc(1, code=3), "u", 60, healthy=lambda url: False, sleep=lambda s: None)
    assert problem == "the Prefect server exited with code 3 before it was healthy (see its output above)"


def test_wait_healthy_times_out():
    problem = cli_ops.wait_healthy(
        FakeProc(None), "http://x/api", 0.01, healthy=lambda url: False, sleep=lambda s: None
    )
    assert problem == "the Prefect server at http://x/api was not healthy after 0.01 s"


def test_ui_exits_2_without_banner_when_the_server_dies(tmp_path, monkeypatch):
    marker = tmp_path / "ui.json"
    monkeypatch.setattr(cli_ops, "UI_MARKER", marker)
    proc = FakeProc(0, code=1)
    proc.terminate = lambda: None
    proc.wait = lambda: 1
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: proc)
    monkeypatch.setattr(cli_ops, "api_healthy", lambda url: False)
    monkeypatch.setattr(cli_ops, "port_in_use", lambda port: False)
    result = CliRunner().invoke(cli_ops.app, ["ui", "--port", "4999"])
    assert result.exit_code == 2
    assert "exited with code 1" in result.output and "Prefect UI on" not in result.output
    assert not marker.exists()


def test_ui_prints_banner_after_health_and_writes_marker(tmp_path, monkeypatch):
    marker = tmp_path / "ui.json"
    monkeypatch.setattr(cli_ops, "UI_MARKER", marker)
    seen = {}
    proc = FakeProc(None)
    proc.pid = 4321
    proc.wait = lambda: seen.setdefault("marker_during_wait", marker.read_text())
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: proc)
    monkeypatch.setattr(cli_ops, "api_healthy", lambda url: True)
    monkeypatch.setattr(cli_ops, "port_in_use", lambda port: False)
    result = CliRunner().invoke(cli_ops.app, ["ui", "--port", "4999"])
    assert result.exit_code == 0
    assert "Prefect UI on http://127.0.0.1:4999" in result.output
    assert '"pid": 4321' in seen["marker_during_wait"] and not marker.exists()  # removed when the server stops
