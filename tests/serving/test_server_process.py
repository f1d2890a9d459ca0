"""The `python -m serving` process: where it listens, how it stops, how it fails to load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serving_procs import REPO, start_server, stop_server, wait_ready

pytestmark = pytest.mark.integration

HAS_GPU = shutil.which("nvidia-smi") is not None


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket that process ``pid`` listens on (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if width == 8:
                addr = ".".join(str(int(addr_hex[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = "ipv6:" + addr_hex
            found.append((addr, int(port_hex, 16)))
    return found


def test_each_server_listens_on_loopback_only_and_without_grpc(servers):
    for server in (servers.recommender, servers.generator):
        assert listening_sockets(server.proc.pid) == [("127.0.0.1", server.port)]


def run_cli(*args: str, env: dict | None = None, timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_sigterm_stops_the_server_cleanly(model_dirs, tmp_path):
    server = start_server("generator", ["--model-dir", str(model_dirs[1])], tmp_path / "g.log")
    try:
        wait_ready(server)
    finally:
        code = stop_server(server)
    assert code == 0, server.log_tail()


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: CUDA may well be active")
def test_gpu_required_without_cuda_fails_to_load(model_dirs):
    result = run_cli(
        "--model", "generator", "--model-dir", str(model_dirs[1]), "--port", "18499",
        env={"RECSYNTH_REQUIRE_GPU": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "CUDAExecutionProvider is not active" in result.stderr
    assert "RECSYNTH_REQUIRE_GPU=1" in result.stderr


def test_missing_model_files_fail_to_load(tmp_path):
    result = run_cli("--model", "generator", "--model-dir", str(tmp_path), "--port", "18498")
    assert result.returncode == 2
    assert "vocab.json" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "generator", "--model-dir", ".", "--host", "0.0.0.0"], "every interface"),
        (["--model", "generator", "--model-dir", ".", "--host", "::"], "every interface"),
        (["--model", "recommender", "--model-dir", "."], "--feature-repo"),
        (["--model", "generator", "--model-dir", ".", "--feature-repo", "."], "--feature-repo"),
        (["--model", "generator", "--model-dir", ".", "--port", "0"], "--port"),
    ],
)
def test_cli_refuses_bad_arguments(args, message):
    result = run_cli(*args, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
