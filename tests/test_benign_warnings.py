"""Known-benign vLLM warnings are hidden by default and shown with SEGFLOW_VERBOSE=1 (`segflow run --verbose`)."""

from __future__ import annotations

import logging
import re

import pytest

from tasks.engines import vllm_engine

LAYERWISE = "vllm.model_executor.model_loader.reload.layerwise"


@pytest.fixture
def layerwise_logger():
    logger = logging.getLogger(LAYERWISE)
    saved = list(logger.filters)
    for f in saved:
        logger.removeFilter(f)
    yield logger
    for f in list(logger.filters):
        logger.removeFilter(f)
    for f in saved:
        logger.addFilter(f)


def _logged(logger, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LAYERWISE):
        # As vLLM logs it (layerwise.py): the layer's class name as an argument.
        logger.warning("%s: Failed to load weights", "RotaryEmbedding")
        logger.warning("%s: Failed to load weights", "QKVParallelLinear")  # a real failure: must show
    return [r.getMessage() for r in caplog.records if r.name == LAYERWISE]


def test_rotary_embedding_reload_warning_is_dropped_and_others_kept(layerwise_logger, caplog, monkeypatch):
    monkeypatch.delenv("SEGFLOW_VERBOSE", raising=False)
    vllm_engine.quiet_benign_vllm_warnings()
    vllm_engine.quiet_benign_vllm_warnings()  # once per engine start: one filter, not one per start
    assert sum(isinstance(f, vllm_engine.DropMessages) for f in layerwise_logger.filters) == 1
    assert _logged(layerwise_logger, caplog) == ["QKVParallelLinear: Failed to load weights"]


def test_verbose_shows_the_rotary_embedding_warning(layerwise_logger, caplog, monkeypatch):
    monkeypatch.setenv("SEGFLOW_VERBOSE", "1")
    vllm_engine.quiet_benign_vllm_warnings()
    assert _logged(layerwise_logger, caplog) == [
        "RotaryEmbedding: Failed to load weights",
        "QKVParallelLinear: Failed to load weights",
    ]


def test_segflow_run_verbose_sets_segflow_verbose(monkeypatch):
    import os

    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("SEGFLOW_VERBOSE", "0")  # restored (removed) after the test
    result = CliRunner().invoke(app, ["run", "--preset", "no_such_preset", "--verbose"])
    assert result.exit_code == 2  # the preset fails, after --verbose took effect and before any engine
    assert os.environ["SEGFLOW_VERBOSE"] == "1"


def test_engine_start_deprecations_ignored_unless_verbose(monkeypatch):
    import warnings

    def raised() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vllm_engine.quiet_benign_vllm_warnings()
            warnings.warn(
                "`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning, stacklevel=1
            )
            warnings.warn("`torch.jit.script_method` is deprecated. Please switch", DeprecationWarning, stacklevel=1)
            warnings.warn(
                "`torch.distributed.reduce_op` is deprecated", DeprecationWarning, stacklevel=1
            )  # other category
        return [f"{w.category.__name__}: {w.message}" for w in caught]

    monkeypatch.delenv("SEGFLOW_VERBOSE", raising=False)
    assert raised() == ["DeprecationWarning: `torch.distributed.reduce_op` is deprecated"]
    monkeypatch.setenv("SEGFLOW_VERBOSE", "1")
    assert len(raised()) == 3


# Prefect: its telemetry banner (off with its telemetry, flows/cli_common.telemetry_off) and the temporary-server
# notice (hidden unless SEGFLOW_VERBOSE=1, flows/cli_common.BENIGN_PREFECT_MESSAGES).
TELEMETRY_BANNER = "Prefect collects anonymous usage data"
SERVER_NOTICE = "Starting temporary server on http://127.0.0.1:8602"

# Imports Prefect for the first time in a fresh PREFECT_HOME, on a terminal (where Prefect shows its banner),
# after segflow's defaults when argv[1] == "segflow", then logs what the temporary server logs at start.
_PREFECT_START = f"""
import sys
from pathlib import Path
if sys.argv[1] == "segflow":
    from flows.cli_common import env_defaults
    env_defaults(Path(sys.argv[2]))
from prefect import flow  # as the flows import it: Prefect sets up its logging here
from prefect.server.api.server import subprocess_server_logger
subprocess_server_logger.info("{SERVER_NOTICE}\\nSee https://docs.prefect.io/v3/concepts/server#how-to-guides")
subprocess_server_logger.info("a message that stays")
"""


def _prefect_start_on_a_terminal(tmp_path, mode: str, **env_extra: str) -> str:
    """What the terminal shows (stdout and stderr) when _PREFECT_START runs in `mode` ("bare" or "segflow")."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    from prefect._internal.analytics.ci_detection import CI_ENV_VARS

    root = Path(__file__).resolve().parents[1]
    drop = {"DO_NOT_TRACK", "SEGFLOW_VERBOSE", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", *CI_ENV_VARS}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    home = tmp_path / f"home-{mode}-{len(list(tmp_path.iterdir()))}"  # a first import every time
    env.update(PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="INFO", PYTHONPATH=str(root), **env_extra)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _PREFECT_START, mode, str(tmp_path / "runs")],
        cwd=root,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    out = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;]*m", "", out.decode(errors="replace"))  # without the terminal's colours


def test_prefect_start_on_a_terminal_shows_telemetry_banner_and_server_notice_without_segflow(tmp_path):
    """The case segflow's defaults change: Prefect alone prints both (so the next tests can fail)."""
    shown = _prefect_start_on_a_terminal(tmp_path, "bare")
    assert TELEMETRY_BANNER in shown and SERVER_NOTICE in shown and "a message that stays" in shown


def test_segflow_hides_prefect_telemetry_banner_and_server_notice(tmp_path):
    shown = _prefect_start_on_a_terminal(tmp_path, "segflow")
    assert TELEMETRY_BANNER not in shown and SERVER_NOTICE not in shown, shown
    assert "https://docs.prefect.io" not in shown  # the notice's second line goes with it
    assert "a message that stays" in shown


def test_segflow_verbose_shows_the_server_notice_but_keeps_telemetry_off(tmp_path):
    shown = _prefect_start_on_a_terminal(tmp_path, "segflow", SEGFLOW_VERBOSE="1")
    assert SERVER_NOTICE in shown and "a message that stays" in shown
    assert TELEMETRY_BANNER not in shown  # --verbose is about messages, not about sending usage data


def test_do_not_track_set_by_the_user_is_kept(monkeypatch):
    from flows.cli_common import telemetry_off

    monkeypatch.setenv("DO_NOT_TRACK", "0")
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    telemetry_off()
    import os

    assert os.environ["DO_NOT_TRACK"] == "0" and os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_server_notice_filter_is_added_once_and_drops_only_the_notice(monkeypatch, caplog):
    from flows import cli_common

    monkeypatch.delenv("SEGFLOW_VERBOSE", raising=False)
    logger = logging.getLogger("prefect")
    saved = list(logger.filters)
    try:
        cli_common.quiet_benign_prefect_messages()
        cli_common.quiet_benign_prefect_messages()
        assert sum(isinstance(f, cli_common.DropMessageStarts) for f in logger.filters) == 1
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="prefect"):
            logger.info("Starting temporary server on http://127.0.0.1:9\nSee https://docs.prefect.io")
            logger.info("Stopping temporary server on http://127.0.0.1:9")
            logger.info("Starting temporary work: kept")  # not the notice: shows
        assert [r.getMessage() for r in caplog.records if r.name == "prefect"] == ["Starting temporary work: kept"]
    finally:
        logger.filters[:] = saved


def test_every_command_turns_prefect_telemetry_off_first(monkeypatch):
    """The CLI's callback runs before each command, `segflow ui` (which starts a Prefect server) included."""
    import os

    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.delenv("DO_NOT_TRACK", raising=False)  # restored after the test
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    result = CliRunner().invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    assert os.environ["DO_NOT_TRACK"] == "1" and os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
