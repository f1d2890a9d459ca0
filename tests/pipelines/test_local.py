"""The local runner's parts that need no pipeline run: progress, errors, run ids, latest link."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest

from components.common.config import load_config
from components.common.errors import ConfigError
from pipelines import local

TEST_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "test.yaml")


def _tee() -> tuple[local.ProgressTee, io.StringIO, io.StringIO]:
    log, console = io.StringIO(), io.StringIO()
    ticks = itertools.count(start=10.0, step=1.5)
    return local.ProgressTee(log, console, clock=lambda: next(ticks)), log, console


def test_progress_lines_per_step_with_seconds():
    tee, log, console = _tee()
    tee.write("14:00:00.000 - INFO - Executing task \x1b[96m'ingest'\x1b[0m\n")
    tee.write("    some step output\n    more")
    tee.write(" output\n")
    tee.write("14:00:01.500 - INFO - Task \x1b[96m'ingest'\x1b[0m finished with status ")
    tee.write("\x1b[92mSUCCESS\x1b[0m\n")

    assert console.getvalue().splitlines() == [
        "[recsynth] ingest             started",
        "[recsynth] ingest             finished in 1.5 s",
    ]
    assert "some step output" in log.getvalue()
    assert tee.steps["ingest"].log == ["    some step output", "    more output"]
    assert tee.steps["ingest"].wall_s == pytest.approx(1.5)
    assert tee.failed_step() is None


def test_failed_step_and_its_error():
    tee, _, console = _tee()
    tee.write("Executing task 'ingest'\nTask 'ingest' finished with status SUCCESS\n")
    tee.write("Executing task 'generate'\n")
    tee.write("    Traceback (most recent call last):\n")
    tee.write('      File "x.py", line 1, in <module>\n')
    tee.write("    components.common.errors.InputError: events lack customer_id (file=a)\n")
    tee.write("Task 'generate' finished with status FAILURE\n")

    step = tee.failed_step()
    assert step.task == "generate"
    assert local.error_message(step.log) == "InputError: events lack customer_id (file=a)"
    assert (
        console.getvalue().splitlines()[-1] == "[recsynth] generate           failure after 1.5 s"
    )


def test_step_that_never_finished_is_the_failed_one():
    tee, _, _ = _tee()
    tee.write("Executing task 'ingest'\nTask 'ingest' finished with status SUCCESS\n")
    tee.write("Executing task 'train'\n    RuntimeError: boom\n")
    assert tee.failed_step().task == "train"


def test_error_message_takes_the_last_exception():
    lines = [
        "ValueError: first",
        "The above exception was the direct cause of the following exception:",
        "    components.common.errors.ConfigError: invalid config section 'train': epochs",
    ]
    assert local.error_message(lines) == "ConfigError: invalid config section 'train': epochs"
    assert local.error_message(["no exception here", "last words", ""]) == "last words"
    assert local.error_message([]) == "no error output"


@pytest.mark.parametrize("run_id", ["latest", "../x", "a b", "", "-x", "x" * 64])
def test_bad_run_ids_refused(tmp_path, run_id):
    with pytest.raises(ConfigError, match="run id"):
        local.run_local(load_config(None), run_id=run_id, runs_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_existing_run_dir_refused(tmp_path):
    (tmp_path / "r1").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        local.run_local(load_config(None), run_id="r1", runs_dir=tmp_path)


def test_latest_link_moves(tmp_path):
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
    local.point_latest(tmp_path, tmp_path / "r1")
    local.point_latest(tmp_path, tmp_path / "r2")

    link = tmp_path / "latest"
    assert link.is_symlink()
    assert str(link.readlink()) == "r2"  # relative, so the runs folder can move
    assert link.resolve() == (tmp_path / "r2").resolve()


def test_pipeline_arguments_round_trip():
    cfg = load_config(TEST_CONFIG)
    payload = local.pipeline_arguments(cfg)

    assert "delta" not in payload["train"]["dp"]  # None is not a KFP parameter value
    assert type(cfg).model_validate(payload) == cfg


def test_cli_missing_config_is_exit_2(tmp_path, capsys):
    code = local.main(["--config", str(tmp_path / "none.yaml"), "--runs-dir", str(tmp_path)])
    assert code == 2
    assert "none.yaml" in capsys.readouterr().err


def test_cli_invalid_config_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  size: huge\n")
    code = local.main(["--config", str(bad), "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "generate.size" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_blocked_report_has_a_readable_label():
    tee, _, console = _tee()
    tee.write("Executing task 'report-2'\nTask 'report-2' finished with status SUCCESS\n")
    assert console.getvalue().splitlines() == [
        "[recsynth] report (blocked)   started",
        "[recsynth] report (blocked)   finished in 1.5 s",
    ]
    assert "report-2" in tee.steps
