"""Starting and stopping `python -m serving` processes for the tests (127.0.0.1, 18000-18499).

Each process is started and stopped by its own PID through serving.procs (which bench/serving.py
uses too); this module adds the suite's port range and turns a server that never became ready
into a test failure with its log.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving import procs

REPO = procs.REPO
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
        if procs.port_is_free(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port in 18000-18499")


# The tests' name for a server process of serving.procs.
Server = procs.ServerProc


def start_server(
    name: str, args: list[str], log: Path, *, env: dict | None = None, port: int | None = None
) -> Server:
    """Start `python -m serving --model NAME ...` on ``port`` or a free port of the range."""
    if port is None:
        port = free_port(18000 + (os.getpid() % 50) * 8)
    return procs.start_server(
        name,
        procs.serving_argv(name, args, port),
        port=port,
        log=log,
        ready_path=f"/v2/models/{name}/ready",
        env=env,
    )


def wait_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll GET /v2/models/<name>/ready until 200; fail with the log if the process exits."""
    try:
        procs.wait_ready(server, timeout_s)
    except procs.ServerNotReady as exc:
        pytest.fail(str(exc))


def stop_server(server: Server) -> int:
    """SIGTERM our process by its PID, then SIGKILL it if it lingers; returns the exit code."""
    return procs.stop_process(server.proc)
