"""tasks/progress.py: bars in a terminal, throttled plain lines in logs, nothing when off; vLLM's own bar off."""

from __future__ import annotations

import re
import sys

import pytest

from tasks import progress as P


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def lines_stage(total, every=30.0, clock=None):
    out: list[str] = []
    clock = clock or FakeClock()
    p = P.StageProgress("train iteration 3", total, mode_="lines", write=out.append, now=clock, every=every)
    return p, out, clock


def test_lines_mode_reports_stage_step_metric_throughput_and_eta():
    p, out, clock = lines_stage(100)
    assert out == ["[progress] train iteration 3: started, 100 steps"]
    for _ in range(10):  # 10 steps of 0.1 s: the tenth of the stage is reached at step 10
        clock.t += 0.1
        p.advance(1, loss=0.5)
    # 10 steps in 1.0 s: 10 step/s; 90 left at that rate: 9 s.
    assert out[1] == "[progress] train iteration 3: step 10/100 (10%) loss 0.5 | 10 step/s | elapsed 0:01 | ETA 0:09"
    assert "\r" not in "".join(out)


def test_lines_mode_throttles_by_steps_and_ends_with_a_done_line():
    p, out, clock = lines_stage(100)
    for _ in range(100):
        clock.t += 0.1
        p.advance(1)
    p.finish(loss=0.25)
    p.finish()  # a second finish (the context manager's) writes nothing more
    # start + one line per 10 steps (step 100's is the done line) + done
    assert len(out) == 1 + 9 + 1
    assert [re.search(r"step (\d+)/100", x).group(1) for x in out[1:-1]] == [str(10 * k) for k in range(1, 10)]
    assert out[-1] == "[progress] train iteration 3: step 100/100 (100%) loss 0.25 | 10 step/s | done in 0:10"


def test_lines_mode_throttles_by_seconds_when_steps_are_slow():
    p, out, clock = lines_stage(1000, every=30.0)
    for _ in range(7):  # 20 s a step: a line once 30 s have passed since the last one, i.e. every 2nd step
        clock.t += 20.0
        p.advance(1)
    steps = [int(re.search(r"step (\d+)/1000", x).group(1)) for x in out[1:]]
    assert steps == [2, 4, 6]
    assert out[-1].endswith("| elapsed 2:00 | ETA 5:31:20")  # 994 left at 20 s each: 19880 s


def test_eta_and_clock_formats():
    assert P.eta(0, 10, 5.0) == float("inf") and P.clock(float("inf")) == "?"
    assert P.eta(4, 10, 8.0) == pytest.approx(12.0)
    assert P.clock(3725) == "1:02:05" and P.clock(65) == "1:05"


def test_off_mode_writes_nothing():
    out: list[str] = []
    p = P.StageProgress("rollouts iteration 1", 5, mode_="off", write=out.append)
    p.advance(5, reward=1.0)
    p.finish()
    assert out == []


def test_mode_follows_env_then_terminal(monkeypatch):
    monkeypatch.delenv(P.MODE_ENV, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert P.mode() == "lines"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert P.mode() == "bar"
    monkeypatch.setenv(P.MODE_ENV, "OFF")
    assert P.mode() == "off"
    monkeypatch.setenv(P.MODE_ENV, "nonsense")  # not a mode: the terminal decides
    assert P.mode() == "bar"


def test_bar_mode_nested_stages_share_one_live_display(monkeypatch):
    out: list[str] = []
    outer = P.StageProgress("spo_values iteration 1", 0, unit="continuation", mode_="bar", write=out.append)
    outer.add_total(8)
    inner2 = P.StageProgress("inner", 2, mode_="bar", write=out.append)
    assert P._BARS.open == 2 and P._BARS.progress is not None
    inner2.advance(2, loss=0.1)
    inner2.finish()
    outer.advance(8, reward=0.5)
    task = next(t for t in P._BARS.progress.tasks if t.description == "spo_values iteration 1")
    assert (task.completed, task.total, task.fields["note"]) == (8, 8, "reward 0.5")
    outer.finish()
    assert P._BARS.open == 0 and P._BARS.progress is None
    assert out == []  # bars never write plain lines


def test_stage_context_finishes_even_when_the_block_raises(monkeypatch):
    monkeypatch.setenv(P.MODE_ENV, "bar")
    with pytest.raises(RuntimeError), P.stage("evaluate iteration 0", 4):
        raise RuntimeError("boom")
    assert P._BARS.open == 0 and P._BARS.progress is None


def test_run_progress_eta_counts_only_iterations_that_did_work(monkeypatch):
    monkeypatch.setenv(P.MODE_ENV, "lines")
    out: list[str] = []
    clock = FakeClock()
    run = P.RunProgress(4, write=out.append, now=clock)
    run.start(1)
    clock.t += 1.0  # iteration 1 came from the cache: ~no work, not part of the rate
    run.finish(1, executed=False)
    run.start(2)
    clock.t += 60.0
    run.finish(2, executed=True)
    run.start(3)
    assert out[0] == "[progress] iteration 1 of 4 | elapsed 0:00 | ETA ?"
    assert out[-1] == "[progress] iteration 3 of 4 | elapsed 1:01 | ETA 2:00"  # 2 iterations left at 60 s
    monkeypatch.setenv(P.MODE_ENV, "off")
    run.start(4)
    assert len(out) == 3


def test_vllm_generate_turns_off_vllms_own_progress_bar():
    pytest.importorskip("vllm")
    from tasks.engines.base import Request
    from tasks.engines.vllm_engine import VLLMEngine

    class Out:
        def __init__(self):
            self.text, self.token_ids, self.finish_reason, self.logprobs = "ab", [1, 2], "stop", None

    class FakeLLM:
        calls: list[dict] = []

        def generate(self, prompts, params, **kwargs):
            self.calls.append(kwargs)
            return [type("R", (), {"outputs": [Out()]})() for _ in prompts]

    engine = object.__new__(VLLMEngine)  # no vLLM engine start: only the generate call is under test
    engine.llm = FakeLLM()
    try:
        engine.generate([Request([1, 2], 0, 4)], temperature=1.0, top_p=1.0, stop=["x"], progress=True)
    except Exception:  # noqa: BLE001, S110 - only the generate call's arguments matter here
        pass
    assert FakeLLM.calls == [{"use_tqdm": False}]


@pytest.mark.slow
def test_run_into_a_log_file_writes_progress_lines_and_no_carriage_returns(tmp_path):
    """`segflow run > log 2>&1`: every stage says where it is in plain lines, and no bar (ours, vLLM's,
    transformers') leaves carriage returns in the log."""
    import os
    import subprocess

    from tests.conftest import SMALL

    sets = [a for s in [*SMALL, "run.iterations=1"] for a in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k not in (P.MODE_ENV, "HF_HUB_DISABLE_PROGRESS_BARS")}
    # Inside a task Prefect logs printed lines at INFO; conftest raises the level to WARNING for quiet tests.
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    log = tmp_path / "log"
    with open(log, "wb") as f:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", *sets, "--runs-dir", str(tmp_path / "runs")],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=600,
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text
    for line in (
        "[progress] warm start (SFT): step 60/60 (100%) loss ",
        "[progress] evaluate iteration 0: answer 32/32 (100%) graded accuracy ",
        "[progress] iteration 1 of 1 | elapsed ",
        "[progress] rollouts iteration 1: request 32/32 (100%) tokens_per_s ",
        "[progress] train iteration 1: step 1/1 (100%) loss ",
        "[progress] evaluate iteration 1: answer 32/32 (100%) graded accuracy ",
    ):
        assert line in text, line
    assert re.search(
        r"\[progress\] warm start \(SFT\): step [1-5]?\d/60 \(\d+%\) loss [\d.]+ \| [\d.]+ step/s "
        r"\| elapsed [\d:]+ \| ETA ",
        text,
    )


def test_tables_off_a_terminal_are_not_cut_at_80_columns(monkeypatch):
    from flows.cli_common import console

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console().width == 200
    monkeypatch.setenv("COLUMNS", "150")
    assert console().width == 150
