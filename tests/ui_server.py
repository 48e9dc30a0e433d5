"""Start-and-stop helpers for a `segflow ui` (Prefect server) that a test or benchmark runs on its own:
tests/test_ui_browser.py and bench/cached_rerun.py. Not product code, so they live here, not in flows/."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request


def wait_healthy(api_url: str, seconds: float = 300) -> bool:
    """Poll a Prefect server's /health until it answers 200 (True) or `seconds` pass (False)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(api_url + "/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(1)
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_ui(proc: subprocess.Popen) -> None:
    """Stop a `segflow ui` started with start_new_session=True: Ctrl-C its process group, SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
