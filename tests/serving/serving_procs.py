"""Starting and stopping `python -m serving` processes for the tests (127.0.0.1, 18000-18499).

Each process is started here and stopped by its own PID (SIGTERM, then SIGKILL if it lingers).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PORTS = range(18000, 18500)
READY_TIMEOUT_S = 120
# Ports handed out in this session: a server may not have bound its port yet when the next one
# is chosen.
_HANDED_OUT: set[int] = set()


def free_port(start: int = 18000) -> int:
    """A port of this suite's range that nothing listens on now."""
    for port in [*range(start, PORTS.stop), *range(PORTS.start, start)]:
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port in 18000-18499")


@dataclass
class Server:
    """A `python -m serving` process started by this suite."""

    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])


def start_server(
    name: str, args: list[str], log: Path, *, env: dict | None = None, port: int | None = None
) -> Server:
    """Start `python -m serving --model NAME ...` on ``port`` or a free port of the range."""
    if port is None:
        port = free_port(18000 + (os.getpid() % 50) * 8)
    full_env = {**os.environ, "RECSYNTH_LOG_LEVEL": "INFO", **(env or {})}
    handle = log.open("a", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model", name, *args, "--port", str(port)],
        cwd=REPO,
        env=full_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    return Server(name, port, proc, log)


def wait_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll GET /v2/models/<name>/ready until 200; fail with the log if the process exits."""
    deadline = time.monotonic() + timeout_s
    url = f"{server.base}/v2/models/{server.name}/ready"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(
                f"{server.name} server exited {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{server.name} server not ready after {timeout_s} s:\n{server.log_tail()}")


def stop_server(server: Server) -> int:
    """SIGTERM our process by its PID, then SIGKILL it if it lingers; returns the exit code."""
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=10)
    return server.proc.returncode
