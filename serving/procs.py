"""Local processes on 127.0.0.1 for the tests and the benchmarks, each ended by its own PID.

:func:`start_server` starts a server (``python -m serving ...``, or any Python module such as the
bench's naive peer) as a child of this process, its output appended to a log file;
:func:`wait_ready` polls its readiness path until it answers 200 and fails, with the log's tail,
when the process exits first or the time runs out; :func:`stop_process` ends it by its PID
(SIGTERM, then SIGKILL if it lingers).

:func:`start_redis` starts a throwaway ``redis-server`` (the Feast Redis online store of the Redis
tests): no snapshot, no append-only file, bound to loopback, on the first port of a given range
that it can bind. It is known to be ours before anything connects to it: its own log must say it
is ready while the process is alive, so a server someone else runs on a port of the range is never
spoken to.

Nothing here imports pytest: the tests turn :class:`RedisUnavailable` into a skip themselves.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
# The checkout the servers run from (this package's parent), so `python -m serving` finds it.
REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0
# redis-server writes this line once its listening socket is bound.
_REDIS_READY_LINE = "Ready to accept connections"
REDIS_START_TIMEOUT_S = 15.0


class RedisUnavailable(RuntimeError):
    """No redis-server here to start, or none of the range's ports could be bound."""


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound now (another process may take it a moment later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As redis-server and uvicorn bind: a port whose last connection is in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def stop_process(proc: subprocess.Popen, *, grace_s: float = 20.0) -> int:
    """SIGTERM a child started here, by its PID, then SIGKILL if it lingers; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


class ServerNotReady(RuntimeError):
    """A server started here exited, or did not answer its readiness path in time."""


@dataclass
class ServerProc:
    """A server process started by :func:`start_server`.

    Attributes:
        name: what it is called in messages (a model name, or the bench's label).
        port: its port on 127.0.0.1.
        proc: the process.
        log: the file its stdout and stderr are appended to.
        ready_path: the path that answers 200 once it serves.
    """

    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    ready_path: str

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        """The last ``n`` lines of its log."""
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])


def serving_argv(model: str, args: list[str], port: int) -> list[str]:
    """``-m serving --model MODEL ARGS... --port PORT`` (the serving CLI, on 127.0.0.1)."""
    return ["-m", "serving", "--model", model, *args, "--port", str(port)]


def start_server(
    name: str,
    argv: list[str],
    *,
    port: int,
    log: Path,
    ready_path: str,
    env: dict[str, str] | None = None,
    log_level: str = "INFO",
) -> ServerProc:
    """Start ``python ARGV...`` from the checkout; it does not wait (see :func:`wait_ready`).

    Args:
        name: the server's name in messages.
        argv: the interpreter's arguments, e.g. :func:`serving_argv`'s; they must make it listen
            on 127.0.0.1:``port``.
        port: the port it listens on.
        log: file its output is appended to (so a restarted server keeps one log).
        ready_path: the path :func:`wait_ready` polls.
        env: variables set on top of this process's environment.
        log_level: ``RECSYNTH_LOG_LEVEL`` for it (``env`` may override).

    Returns:
        The process, started.
    """
    full_env = {**os.environ, "RECSYNTH_LOG_LEVEL": log_level, **(env or {})}
    with Path(log).open("a", encoding="utf-8") as handle:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=full_env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    logger.info("started %s: pid %d on %s:%d", name, proc.pid, HOST, port)
    return ServerProc(name, port, proc, Path(log), ready_path)


def wait_ready(server: ServerProc, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``GET ready_path`` until it answers 200.

    Raises:
        ServerNotReady: the process exited first, or ``timeout_s`` passed; the message holds
            the log's tail.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerNotReady(
                f"{server.name} server exited {server.proc.returncode}:\n{server.log_tail()}"
            )
        if _answers_200(server.port, server.ready_path):
            return
        time.sleep(0.25)
    raise ServerNotReady(
        f"{server.name} server not ready after {timeout_s:.0f} s:\n{server.log_tail()}"
    )


def _answers_200(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        # Not listening yet, or it closed the connection while starting.
        return False
    finally:
        conn.close()


@dataclass
class LocalRedis:
    """A redis-server started by :func:`start_redis`.

    Attributes:
        port: its port on 127.0.0.1.
        proc: the process (stopped by :meth:`stop`, by its PID).
        log: its log file.
    """

    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        """The connection string Feast's Redis online store takes (``host:port``)."""
        return f"{HOST}:{self.port}"

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.Redis`` client of this server."""
        import redis

        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def stop(self) -> int:
        """End this server by its PID; its exit code."""
        return stop_process(self.proc, grace_s=10.0)


def start_redis(
    state_dir: Path, ports: range, *, timeout_s: float = REDIS_START_TIMEOUT_S
) -> LocalRedis:
    """Start a redis-server on 127.0.0.1, on the first port of ``ports`` that it binds.

    Args:
        state_dir: an empty folder of the caller's for the server's log (and nothing else: no
            RDB snapshot, no append-only file).
        ports: the caller's port range.
        timeout_s: how long one start may take before it counts as failed.

    Returns:
        The server, ready: it answered PING.

    Raises:
        RedisUnavailable: redis-server is not installed, or no port of ``ports`` could be bound.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailable(
            "redis-server is not installed (scripts/redis-test-server.sh install adds it)"
        )
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    for port in ports:
        if not port_is_free(port):
            continue
        log = state_dir / f"redis-{port}.log"
        proc = subprocess.Popen(
            [binary, "--bind", HOST, "--port", str(port), "--protected-mode", "yes"]
            + ["--save", "", "--appendonly", "no", "--dir", str(state_dir)]
            + ["--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = LocalRedis(port, proc, log)
        if _wait_redis_ready(server, timeout_s):
            logger.info("redis-server pid %d on %s", proc.pid, server.url)
            return server
        # It lost the port to another process between the probe and its bind: the next one.
        stop_process(proc, grace_s=10.0)
    raise RedisUnavailable(f"no port of {ports.start}-{ports.stop - 1} could be bound for Redis")


@contextmanager
def running_redis(
    state_dir: Path, ports: range, *, unavailable: Callable[[str], Any] | None = None
) -> Iterator[LocalRedis]:
    """:func:`start_redis` for a ``with`` block, the server ended by its PID when it closes.

    Args:
        state_dir: see :func:`start_redis`.
        ports: see :func:`start_redis`.
        unavailable: called with the reason when no server can be started (a test passes
            ``pytest.skip``); :class:`RedisUnavailable` is raised when it is None or returns.

    Yields:
        The ready server.
    """
    try:
        server = start_redis(state_dir, ports)
    except RedisUnavailable as exc:
        if unavailable is not None:
            unavailable(str(exc))
        raise
    try:
        yield server
    finally:
        server.stop()


def _wait_redis_ready(server: LocalRedis, timeout_s: float) -> bool:
    """True once the server's own log says it listens and it answers PING."""
    import redis

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        text = server.log.read_text(errors="replace") if server.log.exists() else ""
        if _REDIS_READY_LINE in text:
            try:
                return bool(server.client(socket_timeout=2).ping())
            except redis.ConnectionError:
                return False
        time.sleep(0.05)
    return False
