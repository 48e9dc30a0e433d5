"""The Prefect UI in a real (headless) browser: `segflow ui` serves it, `segflow compare` publishes plots as
image artifacts, and the artifact page renders the picture. Skipped where no Chromium is installed
(.ci/run installs Debian's chromium)."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ui_server import free_port, stop_ui, wait_healthy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
def test_compare_plots_render_in_the_prefect_ui(tmp_path):
    from tests.test_run_reports import SUMMARY_A, make_run

    runs = tmp_path / "runs"
    make_run(runs, SUMMARY_A, "run: {}\n")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "home"),
        "SEGFLOW_UI_MARKER": str(tmp_path / "ui.json"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PREFECT_API_URL", None)
    ui = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ui", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api"
        assert wait_healthy(url, 180), "segflow ui: the Prefect server did not come up"
        # `segflow ui` writes its marker just after the server first answers /health: wait for it too.
        marker = tmp_path / "ui.json"
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert json.loads(marker.read_text())["url"] == url
        # No PREFECT_API_URL: compare finds the running server through the marker file.
        res = subprocess.run(
            [sys.executable, "-m", "flows.cli", "compare", "run_a", "--runs-dir", str(runs)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        req = urllib.request.Request(
            url + "/artifacts/filter", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            artifacts = json.loads(r.read())
        image = next(a for a in artifacts if a["type"] == "image" and a["key"].endswith("-iteration"))
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chrome'}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                f"http://127.0.0.1:{port}/artifacts/artifact/{image['id']}",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout
        assert 'src="data:image/png;base64,' in dom and "Something went wrong" not in dom
    finally:
        stop_ui(ui)
