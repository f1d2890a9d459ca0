"""Local processes on 127.0.0.1 for the tests and the benchmarks, each ended by its own PID.

:func:`start_redis` starts a throwaway ``redis-server`` (the Feast Redis online store of the Redis
tests): no snapshot, no append-only file, bound to loopback, on the first port of a given range
that it can bind. It is known to be ours before anything connects to it: its own log must say it
is ready while the process is alive, so a server someone else runs on a port of the range is never
spoken to.

Nothing here imports pytest: the tests turn :class:`RedisUnavailable` into a skip themselves.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
# redis-server writes this line once its listening socket is bound.
_REDIS_READY_LINE = "Ready to accept connections"
REDIS_START_TIMEOUT_S = 15.0


class RedisUnavailable(RuntimeError):
    """No redis-server here to start, or none of the range's ports could be bound."""


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound now (another process may take it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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
