"""Session fixtures: tiny artifacts in tmp, and real `python -m serving` processes on 127.0.0.1.

Servers use ports 18000-18499 (this suite's range), are started once per session and are
stopped by their own PID at teardown. The generator server starts first and loads while the
Feast store is built in a subprocess; the recommender starts when the store is ready.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import serving_builders as builders
from serving_procs import HERE, REPO, Server, start_server, stop_server, wait_ready


@dataclass
class Servers:
    recommender: Server
    generator: Server
    rec_dir: Path
    gen_dir: Path
    feature_repo: Path


@dataclass
class SplitServers:
    """The cluster shape: a transformer (Feast, ranking) in front of a predictor (ONNX)."""

    transformer: Server
    predictor: Server
    rec_dir: Path
    feature_repo: Path
    logs: Path


TRANSFORMER_VARIANT = "canary"


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The exported/recommender and exported/generator folders (tiny ONNX models)."""
    root = tmp_path_factory.mktemp("exported")
    return (
        builders.build_recommender(root / "recommender"),
        builders.build_generator(root / "generator"),
    )


@pytest.fixture(scope="session")
def servers(
    model_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """Both model servers, ready; stopped by PID at the end of the session."""
    rec_dir, gen_dir = model_dirs
    logs = tmp_path_factory.mktemp("logs")
    generator = start_server("generator", ["--model-dir", str(gen_dir)], logs / "generator.log")
    started: list[Server] = [generator]
    try:
        work = tmp_path_factory.mktemp("features")
        build = subprocess.run(
            [sys.executable, str(HERE / "serving_builders.py"), "feature-store", str(work)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if build.returncode != 0:
            pytest.fail(
                f"feature store build failed:\n{build.stdout[-2000:]}{build.stderr[-4000:]}"
            )
        repo = Path(build.stdout.strip().splitlines()[-1])
        recommender = start_server(
            "recommender",
            ["--model-dir", str(rec_dir), "--feature-repo", str(repo)],
            logs / "recommender.log",
        )
        started.append(recommender)
        wait_ready(generator)
        wait_ready(recommender)
        yield Servers(recommender, generator, rec_dir, gen_dir, repo)
    finally:
        for server in started:
            stop_server(server)


@pytest.fixture(scope="session")
def split(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitServers]:
    """``--role predictor`` and ``--role transformer`` (variant canary), ready; stopped by PID.

    A test may stop and restart the predictor; it must leave a ready one in ``split.predictor``.
    """
    logs = tmp_path_factory.mktemp("split-logs")
    predictor = start_server(
        "recommender",
        ["--role", "predictor", "--model-dir", str(servers.rec_dir)],
        logs / "predictor.log",
    )
    holder = SplitServers(None, predictor, servers.rec_dir, servers.feature_repo, logs)  # type: ignore[arg-type]
    try:
        holder.transformer = start_server(
            "recommender",
            [
                "--role", "transformer",
                "--predictor-host", f"127.0.0.1:{predictor.port}",
                "--model-dir", str(servers.rec_dir),
                "--feature-repo", str(servers.feature_repo),
            ],
            logs / "transformer.log",
            env={"RECSYNTH_VARIANT": TRANSFORMER_VARIANT},
        )  # fmt: skip
        wait_ready(predictor)
        wait_ready(holder.transformer)
        yield holder
    finally:
        for server in (holder.transformer, holder.predictor):
            if server is not None:
                stop_server(server)
