"""Start-and-stop helpers for a `segflow ui` (Prefect server) that a test or benchmark runs on its own
(tests/test_ui_browser.py, bench/cached_rerun.py), and a headless Chromium that reads or photographs its pages.
Not product code, so they live here, not in flows/."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # .ci/run installs Debian's chromium
# Tall enough that the runs list's first rows are on screen: the UI renders list rows only once visible.
WINDOW = "1400,1000"


def wait_healthy(api_url: str, seconds: float = 300) -> bool:
    """Poll a Prefect server's /health (the CLI's own probe, flows/cli_ops.api_healthy) until it answers
    (True) or `seconds` pass (False)."""
    from flows.cli_ops import api_healthy

    deadline = time.time() + seconds
    while time.time() < deadline:
        if api_healthy(api_url):
            return True
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


def start_ui(port: int, env: dict) -> subprocess.Popen:
    """`segflow ui --port port` in its own process group (stop it with stop_ui), output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ui", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with a throwaway profile, no network of its own; 60 s of virtual time lets the UI's
    API calls and rendering finish before the page is read (virtual time runs ahead when the page is idle)."""
    assert CHROMIUM, "no chromium on this machine"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW}",
        "--virtual-time-budget=60000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


def page_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (Chromium's --dump-dom)."""
    return _chromium(profile, "--dump-dom", url).stdout


def page_text(url: str, profile: Path) -> str:
    """The words on the page, in document order, tags dropped and whitespace collapsed to single spaces."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", page_dom(url, profile), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text))).strip()


def screenshot(url: str, profile: Path, out: Path) -> None:
    """A PNG of the page's first WINDOW of pixels, written to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    res = _chromium(profile, f"--screenshot={out}", url)
    assert out.is_file() and out.stat().st_size > 0, res.stderr[-2000:]
