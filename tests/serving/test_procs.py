"""serving.procs: local redis-server starts on a free port of the range, is ours, ends by PID."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import pytest

from serving import procs

PORTS = range(19540, 19550)

NEEDS_REDIS = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port of the range that a socket of this test listens on."""
    for port in PORTS:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen(1)
        try:
            yield port
        finally:
            sock.close()
        return
    pytest.skip("no free port in 19540-19549")


@pytest.mark.integration
@NEEDS_REDIS
def test_redis_starts_ready_on_loopback_and_stops_by_pid(tmp_path):
    server = procs.start_redis(tmp_path, PORTS)
    try:
        client = server.client(socket_timeout=2)
        assert int(client.info("server")["process_id"]) == server.proc.pid
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("save")["save"] == ""
        assert server.url == f"127.0.0.1:{server.port}"
    finally:
        code = server.stop()
    assert server.proc.poll() is not None
    assert code == 0
    assert procs.port_is_free(server.port)


@pytest.mark.integration
@NEEDS_REDIS
def test_a_port_lost_after_the_probe_is_skipped_for_the_next(tmp_path, held_port, monkeypatch):
    # The probe says free, but the port is taken when redis-server binds: that process exits
    # and the next port is tried; the listener on the held port is never spoken to.
    monkeypatch.setattr(procs, "port_is_free", lambda port, host="127.0.0.1": True)
    with procs.running_redis(tmp_path, range(held_port, PORTS.stop)) as server:
        assert server.port > held_port
        assert int(server.client().info("server")["process_id"]) == server.proc.pid
    assert server.proc.returncode == 0


@pytest.mark.integration
@NEEDS_REDIS
def test_no_bindable_port_is_redis_unavailable(tmp_path, held_port):
    with pytest.raises(procs.RedisUnavailable, match=f"{held_port}-{held_port}"):
        procs.start_redis(tmp_path, range(held_port, held_port + 1))


def test_missing_binary_calls_the_unavailable_callback(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    reasons: list[str] = []
    with (
        pytest.raises(procs.RedisUnavailable),
        procs.running_redis(tmp_path, PORTS, unavailable=reasons.append),
    ):
        pytest.fail("no server should have started")
    assert reasons == [
        "redis-server is not installed (scripts/redis-test-server.sh install adds it)"
    ]
