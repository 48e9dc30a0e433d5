"""Issue 31, item 9 (part): suggestions for misspelt keys and presets, `segflow presets`, `segflow sql`
without runs, and Ctrl-C as a cancellation (exit 130, no failure webhook)."""

from __future__ import annotations

import logging
import re

import pytest
from typer.testing import CliRunner

from configs.loader import ConfigError, available_presets, preset_summary, resolve
from flows.cli import app

runner = CliRunner()


def test_misspelt_key_suggests_the_key_and_lists_the_section():
    with pytest.raises(ConfigError) as e:
        resolve("default", overrides=["run.iteratons=4"])
    assert str(e.value) == (
        "unknown key 'run.iteratons'; did you mean 'run.iterations'? "
        "(run keys: device, iterations, preset, seed, torch_threads)"
    )


def test_misspelt_section_suggests_the_section():
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean 'train'\? \(sections: advantage, "):
        resolve("default", overrides=["trian.lr=1e-5"])


def test_unknown_key_without_a_close_match_still_lists_the_keys():
    with pytest.raises(ConfigError) as e:
        resolve("default", overrides=["run.zzzzzz=1"])
    assert "did you mean" not in str(e.value)
    assert str(e.value).endswith("(run keys: device, iterations, preset, seed, torch_threads)")


def test_misspelt_key_through_the_cli_exits_2_with_the_suggestion(tmp_path):
    res = runner.invoke(app, ["run", "--set", "run.iteratons=4", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean 'run.iterations'?" in res.output


def test_misspelt_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"^unknown preset 'spo-chain'; did you mean 'spo_chain'\? available: "):
        resolve("spo-chain")


def test_presets_prints_one_line_per_preset_with_estimator_model_and_description():
    res = runner.invoke(app, ["presets"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert [line.split()[0] for line in lines] == available_presets()
    by_name = {line.split()[0]: line.split(None, 3) for line in lines}
    assert by_name["spo_tree"][1:3] == ["spo_tree", "tiny"]
    assert by_name["gsm8k_qwen05b"][1:3] == ["grpo", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert by_name["rloo"][3] == "RLOO (Ahmadian et al. 2024)"


def test_preset_summary_is_the_first_comment_clause():
    assert preset_summary("default") == "The embedded default"
    assert preset_summary("dr_grpo") == "Dr. GRPO (Liu et al. 2025)"
    assert preset_summary("gsm8k_qwen05b") == "GSM8K with Qwen2.5-0.5B-Instruct (spec §5.1, App. F)."
    assert all(len(preset_summary(p)) <= 72 for p in available_presets())


def test_sql_in_a_directory_without_runs_warns(tmp_path):
    res = runner.invoke(app, ["sql", "select count(*) as n from runs", "--runs-dir", str(tmp_path), "--format", "csv"])
    assert res.exit_code == 0
    assert f"warning: no runs found under {tmp_path.resolve()}" in res.stderr
    assert res.stdout == "n\n0\n"  # stdout stays parseable


def test_sql_with_a_run_does_not_warn(tmp_path):
    (tmp_path / "some-run").mkdir()
    (tmp_path / "some-run" / "config.yaml").write_text("run: {}\n")
    res = runner.invoke(app, ["sql", "select 1 as n", "--runs-dir", str(tmp_path), "--format", "csv"])
    assert res.exit_code == 0 and "no runs found" not in res.stderr


def test_ctrl_c_in_run_is_a_cancellation_with_exit_130(tmp_path, monkeypatch):
    import flows.cli
    import flows.rl_train

    def interrupted(cfg, runs_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.cli, "env_defaults", lambda runs_dir: None)
    monkeypatch.setattr(flows.rl_train, "rl_train", interrupted)
    res = runner.invoke(app, ["run", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 130
    assert res.stderr.strip() == "interrupted; rerun the same command to resume"


def test_ctrl_c_inside_a_flow_sends_no_failure_notification(prefect_harness, monkeypatch):
    """A real flow with segflow's hooks: KeyboardInterrupt leaves it Crashed, the hook stays silent; a
    real error in the same flow still sends its message (so the silence is not the hook being broken)."""
    from prefect import flow, get_run_logger

    from flows import notify

    sent: list[dict] = []
    monkeypatch.setattr(notify, "send", lambda body, *a, **k: sent.append(body) or True)

    @flow(name="interrupted_probe", on_failure=[notify.notify_failure], on_crashed=[notify.notify_failure])
    def probe(exc_type: str) -> None:
        get_run_logger().warning("probe ran")
        raise {"interrupt": KeyboardInterrupt, "error": RuntimeError}[exc_type]("boom")

    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("prefect.flow_runs").addHandler(handler)
    notify.quiet_interrupt_crashes()  # as `segflow run` does
    try:
        with pytest.raises(KeyboardInterrupt):
            probe("interrupt")
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(handler)
    assert sent == []
    assert "probe ran" in logged and not [m for m in logged if "Crash detected" in m]  # the flow's logger works
    with pytest.raises(RuntimeError):
        probe("error")
    assert [re.sub(r" \(.*", "", b["text"]) for b in sent] == ["segflow interrupted_probe failed: RuntimeError: boom"]
