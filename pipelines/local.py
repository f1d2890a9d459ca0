"""Run the whole pipeline on this machine with the KFP local runner.

``python -m pipelines.local --config configs/demo.yaml --source bundled [--run-id ID]``

Layout of a run (everything of the run lives under ``runs/<run-id>/``)::

    runs/<run-id>/
        config.yaml              the validated config the run used
        run.json                 run id, source, status, per-step wall time, failing step
        pipeline.log             everything KFP and the steps printed
        recsynth-<timestamp>/    KFP's pipeline root: <task>/<output>/ for every task
        artifacts -> recsynth-<timestamp>
        report.md, report.html, metrics.json   copied from the report task
        audit.json, audit.html                 copied from the dp-audit task
    runs/latest -> <run-id>      the newest run that finished

Each step runs in a subprocess of this Python environment (``SubprocessRunner(use_venv=False)``),
so the step code is the working tree's and nothing is installed at run time. The console shows one
line when a step starts and one when it ends, with its wall time; a failing step stops the run
with that step's error and a non-zero exit, and nothing downstream of it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from components.common.config import RecsynthConfig, load_config
from components.common.errors import ConfigError, RecsynthError
from components.common.logs import configure_logging
from pipelines.pipeline import (
    PIPELINE_NAME,
    REPORT_BLOCKED_TASK,
    REPORT_DEPLOYED_TASK,
    recsynth_pipeline,
)

logger = logging.getLogger(__name__)

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
REPORT_FILES = ("report.md", "report.html", "metrics.json")
# The DP audit's verdict and page, copied beside the report so runs/latest shows them.
AUDIT_TASK = "dp-audit"
AUDIT_FILES = ("audit.json", "audit.html")
# The generator's quality report, copied beside the run's report as quality.html / quality.json.
QUALITY_DIR = ("generate", "synthetic")
QUALITY_FILES = ("quality.html", "quality.json")
LATEST = "latest"

# Console names of tasks whose KFP name says little (the blocked branch's report is "report-2").
TASK_LABELS = {REPORT_BLOCKED_TASK: "report (blocked)"}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
# The last line of a Python traceback: "package.module.SomeError: message".
_EXCEPTION_LINE = re.compile(
    r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure)): (.*)$"
)


class PipelineFailed(RecsynthError):
    """A step of the local run failed; names the step and carries its error message."""

    def __init__(self, step: str | None, message: str, run_dir: Path) -> None:
        self.step = step
        self.message = message
        self.run_dir = run_dir
        where = f"step {step!r} failed" if step else "the pipeline failed"
        super().__init__(f"{where}: {message} (full log: {run_dir / 'pipeline.log'})")


@dataclass
class StepProgress:
    """Start and end of one task as seen in KFP's log."""

    task: str
    started: float
    finished: float | None = None
    status: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


class ProgressTee:
    """A text stream that keeps KFP's output in the run log and prints one line per step event.

    KFP's local runner logs "Executing task 'X'" and "Task 'X' finished with status S" and prints
    every line of the task's subprocess; this stream sees all of it (it replaces ``sys.stdout``
    while the pipeline runs), writes it to ``log``, and writes the step events to ``console``.
    """

    def __init__(self, log: TextIO, console: TextIO, clock: Any = time.perf_counter) -> None:
        self._log = log
        self._console = console
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = ""
        self.steps: dict[str, StepProgress] = {}
        self._current: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            self._log.write(text)
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._log.flush()
            self._console.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, line: str) -> None:
        started = _STARTED.search(line)
        if started:
            task = started.group(1)
            self.steps[task] = StepProgress(task=task, started=self._clock())
            self._current.append(task)
            self._console.write(f"[recsynth] {TASK_LABELS.get(task, task):<18} started\n")
            self._console.flush()
            return
        finished = _FINISHED.search(line)
        if finished:
            task, status = finished.group(1), finished.group(2)
            now = self._clock()
            step = self.steps.setdefault(task, StepProgress(task=task, started=now))
            step.finished = now
            step.status = status
            if task in self._current:
                self._current.remove(task)
            verb = "finished in" if status == "SUCCESS" else f"{status.lower()} after"
            label = TASK_LABELS.get(task, task)
            self._console.write(f"[recsynth] {label:<18} {verb} {step.wall_s:.1f} s\n")
            self._console.flush()
            return
        for task in self._current:
            self.steps[task].log.append(line)

    def failed_step(self) -> StepProgress | None:
        """The first task that did not succeed (finished with another status or never ended)."""
        for step in self.steps.values():
            if step.status is not None and step.status != "SUCCESS":
                return step
        for step in self.steps.values():
            if step.status is None:
                return step
        return None


def error_message(lines: list[str]) -> str:
    """The exception line of the last traceback in a step's output, else its last line."""
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2).strip()}"
    text = [line.strip() for line in lines if line.strip()]
    return text[-1] if text else "no error output"


def pipeline_arguments(cfg: RecsynthConfig) -> dict[str, Any]:
    """The config as the plain dict a KFP ``dict`` parameter carries.

    KFP parameters cannot hold None, so unset optional values (e.g. ``dp.delta``) are left out and
    come back as their defaults when a step validates its section; the round trip is checked.
    """
    payload = cfg.model_dump(mode="json", exclude_none=True)
    if RecsynthConfig.model_validate(payload) != cfg:
        raise ConfigError(
            "the config does not survive leaving out its None values: a field whose default is "
            "not None was set to None"
        )
    return payload


def new_run_id(now: dt.datetime | None = None) -> str:
    """A sortable id such as ``20261204-143012``."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%d-%H%M%S")


def _check_run_id(run_id: str) -> None:
    if not RUN_ID_PATTERN.match(run_id) or run_id == LATEST:
        raise ConfigError(
            f"run id {run_id!r} is not allowed: use 1-63 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, and not {LATEST!r}"
        )


def point_latest(runs_dir: Path, run_dir: Path) -> Path:
    """Point ``runs_dir/latest`` at ``run_dir`` (relative link, replaced atomically)."""
    link = runs_dir / LATEST
    tmp = runs_dir / f".{LATEST}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)
    return link


def find_report_dir(artifacts_dir: Path) -> Path:
    """The output directory of whichever report task ran (deployed or blocked branch)."""
    for task in (REPORT_DEPLOYED_TASK, REPORT_BLOCKED_TASK):
        candidate = artifacts_dir / task / "report"
        if (candidate / "metrics.json").is_file():
            return candidate
    raise RecsynthError(f"no report task output under {artifacts_dir}")


@dataclass
class LocalRun:
    """What a finished local run left behind."""

    run_id: str
    run_dir: Path
    artifacts_dir: Path
    report_path: Path
    metrics: dict[str, Any]
    steps: dict[str, float]

    def task_dir(self, task: str) -> Path:
        """The directory of one task's outputs (KFP task name, e.g. "dp-audit")."""
        return self.artifacts_dir / task


def run_local(
    cfg: RecsynthConfig,
    *,
    source: str = "bundled",
    run_id: str | None = None,
    runs_dir: str | os.PathLike[str] = "runs",
    console: TextIO | None = None,
) -> LocalRun:
    """Run the pipeline locally under ``runs_dir/<run_id>/``.

    Args:
        cfg: the validated run config.
        source: the shop log for ingest ("bundled" or a path).
        run_id: the run's id; a timestamp when None. A run dir that exists is refused.
        runs_dir: the folder holding every run and the ``latest`` link.
        console: where step progress lines go (stdout when None).

    Returns:
        The run's directories, report path, metrics and per-step wall times.

    Raises:
        ConfigError: the run id is not allowed or already used.
        PipelineFailed: a step failed; names the step and its error.
    """
    from kfp import local

    console = console or sys.stdout
    runs_dir = Path(runs_dir).absolute()
    run_id = new_run_id() if run_id is None else run_id
    _check_run_id(run_id)
    run_dir = runs_dir / run_id
    if run_dir.exists():
        raise ConfigError(f"run dir {run_dir} already exists: pick another --run-id")
    run_dir.mkdir(parents=True)
    if Path(source).exists():
        # Recorded absolute, so run.json says exactly what was read.
        source = str(Path(source).resolve())
    config_dict = pipeline_arguments(cfg)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False), "utf-8")
    record: dict[str, Any] = {"run_id": run_id, "source": source, "status": "running"}
    _write_record(run_dir, record)

    # The pipeline root is the run dir itself, so KFP's {root}/{pipeline}-{timestamp}/{task}/
    # lands inside it.
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(run_dir),
        raise_on_error=True,
    )
    console.write(f"[recsynth] run {run_id}: {run_dir}\n")
    started = time.perf_counter()
    with (
        # Line-buffered, so `tail -f pipeline.log` follows a running step.
        open(run_dir / "pipeline.log", "w", encoding="utf-8", buffering=1) as log,
        warnings.catch_warnings(),
    ):
        # SubprocessRunner warns about any image whose name lacks "python"; ours runs locally in
        # this very environment, so the warning says nothing.
        warnings.filterwarnings("ignore", message="You may be attemping", category=RuntimeWarning)
        # Display names only matter in the KFP UI.
        warnings.filterwarnings("ignore", message=r".*\['display_name'\] have no effect")
        tee = ProgressTee(log, console)
        failure: BaseException | None = None
        try:
            with contextlib.redirect_stdout(tee):
                recsynth_pipeline(config=config_dict, source=source, run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - KFP raises RuntimeError/ValueError on failure
            failure = exc
        tee.write("\n")

    steps = {name: round(s.wall_s, 3) for name, s in tee.steps.items() if s.wall_s is not None}
    record.update(steps=steps, wall_s=round(time.perf_counter() - started, 3))
    roots = sorted(run_dir.glob(f"{PIPELINE_NAME}-*"))
    artifacts_dir = roots[-1] if roots else run_dir / "artifacts"
    if roots:
        (run_dir / "artifacts").symlink_to(artifacts_dir.name, target_is_directory=True)

    if failure is not None:
        step = tee.failed_step()
        message = error_message(step.log) if step else str(failure)
        record.update(status="failed", failed_step=step.task if step else None, error=message)
        _write_record(run_dir, record)
        raise PipelineFailed(step.task if step else None, message, run_dir) from failure

    report_dir = find_report_dir(artifacts_dir)
    for name in REPORT_FILES:
        shutil.copy2(report_dir / name, run_dir / name)
    audit_dir = artifacts_dir / AUDIT_TASK / "audit"
    for name in AUDIT_FILES:
        if (audit_dir / name).is_file():
            shutil.copy2(audit_dir / name, run_dir / name)
    quality_dir = artifacts_dir.joinpath(*QUALITY_DIR)
    for name in QUALITY_FILES:
        if (quality_dir / name).is_file():
            shutil.copy2(quality_dir / name, run_dir / name)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    record.update(
        status="succeeded",
        audit_passed=metrics.get("audit_passed"),
        audit_failed_checks=[c["name"] for c in metrics.get("audit_checks", []) if not c["passed"]],
        deployed=metrics.get("deployed"),
    )
    _write_record(run_dir, record)
    point_latest(runs_dir, run_dir)
    return LocalRun(
        run_id=run_id,
        run_dir=run_dir,
        artifacts_dir=artifacts_dir,
        report_path=run_dir / "report.md",
        metrics=metrics,
        steps=steps,
    )


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.local", description="Run the recsynth pipeline on this machine."
    )
    parser.add_argument("--config", required=True, help="run config YAML, e.g. configs/demo.yaml")
    parser.add_argument(
        "--source", default="bundled", help='shop log: "bundled" (default) or a path'
    )
    parser.add_argument("--run-id", default=None, help="run id (default: a UTC timestamp)")
    parser.add_argument("--runs-dir", default="runs", help="folder of runs (default: runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 a step failed, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    configure_logging()
    if not Path(args.config).is_file():
        print(f"error: config file {args.config} does not exist", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_local(cfg, source=args.source, run_id=args.run_id, runs_dir=args.runs_dir)
    except PipelineFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verdict = "deployed" if result.metrics.get("deployed") else "deployment blocked by DP audit"
    print(f"[recsynth] run {result.run_id} done ({verdict})")
    for check in result.metrics.get("audit_checks", []):
        if not check["passed"]:
            print(f"[recsynth] DP audit FAILED {check['name']}: {check['detail']}")
    print(f"report: {result.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
