"""Local server processes: start detached, wait for readiness, record, stop only our own.

A server started here outlives the step that started it (``start_new_session=True``), so the only
link back to it is the state file. A PID from that file is signalled only when
``/proc/<pid>/cmdline`` is exactly the command line recorded when the server was started: a PID
that the kernel has since handed to another program is left alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common.errors import ConfigError, RecsynthError

logger = logging.getLogger(__name__)

STATE_FILE = "servers.json"
_LOCK_FILE = "servers.lock"
_POLL_S = 0.25
_LOG_TAIL_LINES = 40


class ServerStartError(RecsynthError):
    """A local server exited or never became ready; the message carries its log's tail."""


@dataclass(frozen=True)
class ServerSpec:
    """One server to start.

    Attributes:
        name: model name on the wire ("recommender", "generator"); also the readiness path.
        argv: the full command line; recorded, and compared with /proc before any signal.
        host: loopback address the server binds.
        port: TCP port it listens on.
        model_dir: the model directory it serves (recorded for humans and the report).
        log_path: where its stdout and stderr go while the step runs.
        final_log_path: where that log lives once the step's output directory is in place.
        port_field: the config key that chose the port, named in a port-conflict error.
    """

    name: str
    argv: tuple[str, ...]
    host: str
    port: int
    model_dir: str
    log_path: Path
    final_log_path: Path
    port_field: str = "port"

    @property
    def ready_url(self) -> str:
        return ready_url(self.host, self.port, self.name)


def serving_argv(
    model: str,
    model_dir: str | os.PathLike[str],
    *,
    host: str,
    port: int,
    feature_repo: str | os.PathLike[str] | None = None,
    python: str | None = None,
) -> tuple[str, ...]:
    """The ``python -m serving`` command line for one model (helper E's CLI)."""
    argv = [python or sys.executable, "-m", "serving", "--model", model]
    argv += ["--model-dir", str(model_dir)]
    if feature_repo is not None:
        argv += ["--feature-repo", str(feature_repo)]
    argv += ["--host", host, "--port", str(port)]
    return tuple(argv)


def ready_url(host: str, port: int, name: str) -> str:
    """KServe V2 readiness URL of model ``name``."""
    netloc = f"[{host}]" if ":" in host else host
    return f"http://{netloc}:{port}/v2/models/{name}/ready"


# ---------------------------------------------------------------------------------------------
# /proc inspection


def read_cmdline(pid: int) -> tuple[str, ...] | None:
    """The argv of ``pid`` from /proc, or None when there is no such (live) process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:  # zombies and kernel threads have an empty cmdline
        return None
    return tuple(part.decode("utf-8", "surrogateescape") for part in raw.rstrip(b"\0").split(b"\0"))


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def is_ours(record: dict[str, Any]) -> bool:
    """True when the record's PID still runs exactly the command line we started it with."""
    try:
        pid = int(record["pid"])
        argv = tuple(str(a) for a in record["argv"])
    except (KeyError, TypeError, ValueError):
        return False
    return pid > 1 and read_cmdline(pid) == argv


def _reap(pid: int) -> None:
    # Only works for our own children (the test process, or a step that stops what it started);
    # for anyone else's child it is a harmless ChildProcessError.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: signal.Signals) -> None:
    # The server leads its own session, so signalling its group also ends any worker it forked.
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_record(record: dict[str, Any], *, grace_s: float = 10.0) -> str:
    """Stop one recorded server if it is still ours.

    Returns:
        "stopped" (ended by SIGTERM), "killed" (needed SIGKILL), "gone" (was not running) or
        "not-ours" (the PID runs something else now and was not signalled).
    """
    name = record.get("name", "?")
    try:
        pid = int(record.get("pid", 0))
    except (TypeError, ValueError):
        logger.warning("state record of server %s has no usable pid: %r", name, record.get("pid"))
        return "gone"
    if pid <= 1 or not is_alive(pid):
        logger.info("server %s (pid %s) is not running", name, pid)
        return "gone"
    if not is_ours(record):
        logger.warning("pid %s of server %s now runs another command; leaving it alone", pid, name)
        return "not-ours"
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, grace_s):
        logger.info("stopped server %s (pid %d)", name, pid)
        return "stopped"
    logger.warning("server %s (pid %d) ignored SIGTERM for %.0f s; killing", name, pid, grace_s)
    _signal(pid, signal.SIGKILL)
    _wait_gone(pid, 5.0)
    return "killed"


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        time.sleep(0.05)
    return not is_alive(pid)


# ---------------------------------------------------------------------------------------------
# ports and readiness


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (or holds) ``host:port``."""
    family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the servers set it: a TIME_WAIT leftover is no conflict, a listener is.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


# Loopback requests must never go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def check_ready(url: str, *, timeout_s: float = 2.0) -> bool:
    """True when GET ``url`` answers 200."""
    try:
        with _OPENER.open(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it is missing)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# state file


class StateFile:
    """The JSON file that lists the servers currently started for this working directory."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir).resolve()
        self.path = self.dir / STATE_FILE

    @contextlib.contextmanager
    def locked(self) -> Iterator[StateFile]:
        """Hold an exclusive lock so two deploys or a deploy and a stop never interleave."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / _LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"state file {self.path} is not valid JSON ({exc.msg}); "
                "stop the servers by hand and delete it"
            ) from exc
        servers = payload.get("servers") if isinstance(payload, dict) else None
        if not isinstance(servers, list):
            raise ConfigError(f"state file {self.path} lacks a 'servers' list")
        return [s for s in servers if isinstance(s, dict)]

    def save(self, servers: Sequence[dict[str, Any]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        payload = {"updated_at": _now(), "servers": list(servers)}
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# start and stop


def stop_servers(state: StateFile, *, grace_s: float = 10.0) -> list[dict[str, Any]]:
    """Stop every server in the state file that is still ours, then clear the file.

    The caller holds ``state.locked()``. Returns one ``{"name", "pid", "result"}`` per record.
    """
    results = []
    for record in state.load():
        outcome = stop_record(record, grace_s=grace_s)
        results.append({"name": record.get("name"), "pid": record.get("pid"), "result": outcome})
    state.clear()
    return results


def start_servers(
    specs: Sequence[ServerSpec],
    state: StateFile,
    *,
    timeout_s: float,
    env: dict[str, str] | None = None,
    failed_log_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Replace the recorded servers with ``specs``, wait until all are ready, record them.

    Stops the servers the state file lists (ours only), refuses ports held by anything else,
    starts each spec detached with its output in ``spec.log_path``, and polls each readiness URL
    until ``timeout_s``. If one exits or never gets ready, everything started here is stopped,
    the state file is cleared, its log is copied to ``failed_log_dir`` and the error carries the
    log's tail.

    Returns:
        The records written to the state file: name, pid, host, port, url, model_dir, log, argv.

    Raises:
        ConfigError: a port is taken by a process not in the state file.
        ServerStartError: a server exited or did not get ready in time.
    """
    with state.locked():
        previous = stop_servers(state)
        if previous:
            logger.info("replaced earlier servers: %s", previous)
        for spec in specs:
            if port_in_use(spec.host, spec.port):
                raise ConfigError(
                    f"deploy.{spec.port_field}={spec.port}: {spec.host}:{spec.port} is already in "
                    f"use by a process recsynth did not record in {state.path}; stop that process "
                    "or choose a free port (1024-65535)"
                )

        started: list[tuple[ServerSpec, subprocess.Popen[bytes], dict[str, Any]]] = []
        try:
            for spec in specs:
                proc = _launch(spec, env)
                record = {
                    "name": spec.name,
                    "pid": proc.pid,
                    "host": spec.host,
                    "port": spec.port,
                    "url": f"http://{spec.host}:{spec.port}",
                    "ready_url": spec.ready_url,
                    "model_dir": spec.model_dir,
                    "log": str(spec.final_log_path),
                    "argv": list(spec.argv),
                    "started_at": _now(),
                }
                started.append((spec, proc, record))
                # Recorded at once, so `make stop` finds a server even if this step dies waiting.
                state.save([r for _, _, r in started])
            _wait_all_ready(started, timeout_s)
        except BaseException:
            for spec, proc, record in started:
                stop_record(record, grace_s=5.0)
                proc.poll()
                _keep_failed_log(spec, failed_log_dir)
            state.clear()
            raise
        records = [r for _, _, r in started]
        state.save(records)
        return records


def _launch(spec: ServerSpec, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")  # so the log tail is current when we read it
    with open(spec.log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argv is built by us, never from a shell string
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=child_env,
        )
    logger.info("started server %s pid=%d on %s:%d", spec.name, proc.pid, spec.host, spec.port)
    return proc


def _wait_all_ready(
    started: Sequence[tuple[ServerSpec, subprocess.Popen[bytes], dict[str, Any]]],
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    pending = {spec.name: (spec, proc) for spec, proc, _ in started}
    while pending:
        for name, (spec, proc) in list(pending.items()):
            code = proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"server {name} exited with code {code} before it was ready at "
                    f"{spec.ready_url}. Last lines of {spec.log_path}:\n{log_tail(spec.log_path)}"
                )
            if check_ready(spec.ready_url):
                logger.info("server %s is ready at %s", name, spec.ready_url)
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            spec, _ = next(iter(pending.values()))
            raise ServerStartError(
                f"server {spec.name} was not ready at {spec.ready_url} within {timeout_s:.0f} s "
                f"(deploy.ready_timeout_s). Last lines of {spec.log_path}:\n"
                f"{log_tail(spec.log_path)}"
            )
        time.sleep(_POLL_S)


def _keep_failed_log(spec: ServerSpec, failed_log_dir: Path | None) -> None:
    # The step's output directory is discarded on failure; keep the log where a human looks.
    if failed_log_dir is None or not spec.log_path.is_file():
        return
    failed_log_dir.mkdir(parents=True, exist_ok=True)
    target = failed_log_dir / f"{spec.name}-failed.log"
    shutil.copyfile(spec.log_path, target)
    logger.error("log of the failed server %s kept at %s", spec.name, target)


def server_status(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with ``running`` (alive and ours) and ``ready`` (readiness URL answers 200)."""
    out = []
    for record in records:
        running = is_ours(record) and is_alive(int(record["pid"]))
        url = record.get("ready_url") or ready_url(
            record.get("host", "127.0.0.1"), record.get("port", 0), record.get("name", "")
        )
        out.append({**record, "running": running, "ready": running and check_ready(url)})
    return out
