"""The Prefect UI in a real (headless) browser, served by `segflow ui`: the runs list names each flow run
after its segflow run id (`<run_id>`, `<run_id>#2` for a rerun) with its preset/estimator/task/model tags,
a run page names task runs by iteration (`generate_rollouts[it=1]`), and `segflow compare` plots render as
image artifacts. Skipped where no Chromium is installed (.ci/run installs Debian's chromium).

SEGFLOW_SCREENSHOTS=1 also photographs the runs list and a run page into docs/img/ (README shows them);
without it the test writes nothing outside its temporary directory."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.ui_server import CHROMIUM, ROOT, free_port, page_dom, page_text, screenshot, start_ui, stop_ui, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")]

# A run small enough to finish in about a minute on a loaded 2-core machine: 2 SFT steps, one RL iteration.
TINY_RUN = [
    "data.arith.n_train=64",
    "data.arith.n_test=8",
    "warm_start.steps=2",
    "warm_start.batch_size=8",
    "run.iterations=1",
    "rollout.prompts_per_iteration=2",
    "rollout.samples_per_prompt=2",
    "rollout.max_tokens=8",
    "eval.max_tokens=8",
    "train.mini_batch_size=4",
    "train.micro_batch_size=4",
]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A `segflow ui` on a free port, with its own Prefect home and marker: (the API URL, the environment under
    which segflow commands find it through the marker file, without PREFECT_API_URL)."""
    tmp = tmp_path_factory.mktemp("ui")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "home"),
        "SEGFLOW_UI_MARKER": str(tmp / "ui.json"),
        "PYTHONPATH": str(ROOT),
        "PREFECT_LOGGING_LEVEL": "INFO",  # Prefect's default (tests/conftest.py lowers it): run pages show logs
    }
    env.pop("PREFECT_API_URL", None)
    proc = start_ui(port, env)
    try:
        url = f"http://127.0.0.1:{port}/api"
        assert wait_healthy(url, 180), "segflow ui: the Prefect server did not come up"
        # `segflow ui` writes its marker just after the server first answers /health: wait for it too.
        marker = tmp / "ui.json"
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert json.loads(marker.read_text())["url"] == url
        yield url, env
    finally:
        stop_ui(proc)


def _segflow(args: list[str], env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _api_post(url: str, body: dict) -> list[dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _text_showing(url: str, profile, needle: str, tries: int = 3) -> str:
    """The page's text once it shows `needle`; a loaded machine sometimes reads the page before its list loaded."""
    text = ""
    for i in range(tries):
        text = page_text(url, profile / str(i))
        if needle in text:
            break
    return text


def test_runs_list_shows_run_id_and_tags_and_run_page_names_task_runs_by_iteration(ui, tmp_path):
    from configs.loader import resolve, run_id

    api, env = ui
    base = api.removesuffix("/api")
    rid = run_id(resolve("default", None, TINY_RUN))
    args = ["run", "--runs-dir", str(tmp_path / "runs")] + [a for s in TINY_RUN for a in ("--set", s)]
    _segflow(args, env)
    _segflow(args, env)  # the same command again: every stage cached, the second flow run of the same run

    tags = "estimator:grpo model:tiny preset:default task:arith"  # sorted, as label_flow_run sets them
    flow_runs = {r["name"]: r for r in _api_post(api + "/flow_runs/filter", {})}
    assert set(flow_runs) == {rid, f"{rid}#2"}
    assert all(r["tags"] == tags.split() for r in flow_runs.values())

    # The runs list: one row per flow run, "<flow> <flow run name> <tags>".
    runs_list = _text_showing(f"{base}/runs", tmp_path / "chrome-list", f"rl_train {rid}#2")
    assert f"rl_train {rid}#2 {tags}" in runs_list, runs_list[-1500:]
    assert f"rl_train {rid} {tags}" in runs_list, runs_list[-1500:]

    # The first flow run's page: its name and tags on top, the task runs (in the log list) named by iteration.
    run_page_url = f"{base}/runs/flow-run/{flow_runs[rid]['id']}"
    page = _text_showing(run_page_url, tmp_path / "chrome-run", "[it=")
    assert f"{rid} {tags}" in page, page[:1500]
    named = set(re.findall(r"\b([a-z_]+\[it=\d+\])", page))
    assert {"evaluate[it=0]", "generate_rollouts[it=1]", "train_policy[it=1]", "evaluate[it=1]"} <= named, named
    assert f"Beginning flow run '{rid}' for flow 'rl_train'" in page, page[:1500]  # named from its first log line

    if os.environ.get("SEGFLOW_SCREENSHOTS") == "1":  # README's pictures; normal runs leave tracked files alone
        screenshot(f"{base}/runs", tmp_path / "shot-list", ROOT / "docs" / "img" / "ui_runs_list.png")
        screenshot(run_page_url, tmp_path / "shot-run", ROOT / "docs" / "img" / "ui_run_page.png")


def test_compare_plots_render_in_the_prefect_ui(ui, tmp_path):
    from tests.test_run_reports import SUMMARY_A, make_run

    api, env = ui
    runs = tmp_path / "runs"
    make_run(runs, SUMMARY_A, "run: {}\n")
    # No PREFECT_API_URL: compare finds the running server through the marker file.
    _segflow(["compare", "run_a", "--runs-dir", str(runs)], env)
    artifacts = _api_post(api + "/artifacts/filter", {})
    image = next(a for a in artifacts if a["type"] == "image" and re.fullmatch(r"compare-.*-iteration", a["key"]))
    dom = page_dom(f"{api.removesuffix('/api')}/artifacts/artifact/{image['id']}", tmp_path / "chrome")
    assert 'src="data:image/png;base64,' in dom and "Something went wrong" not in dom
