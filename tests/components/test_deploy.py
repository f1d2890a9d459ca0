"""The deploy step: rendered manifests, local server start/stop, the state file, the control CLI.

Process tests start small HTTP servers of their own (a script written into tmp_path) on
127.0.0.1 in ports 18410-18499; the last tests start the real ``python -m serving``
on tiny models from the serving tests' builders.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from components.common.errors import ConfigError, InputError
from components.deploy import control, logic, manifests, servers
from components.deploy.config import DeployConfig

# SERVE's range (18000-18499), above what tests/serving and bench/serving.py hand out.
PORT_RANGE = range(18410, 18500)

FAKE_SERVER = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    name, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "crash":
        print("boom: model.onnx is corrupt", file=sys.stderr, flush=True)
        sys.exit(3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ready = mode == "ok" and self.path == f"/v2/models/{name}/ready"
            self.send_response(200 if ready else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    print(f"serving {name} on {port}", flush=True)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def free_ports(n: int) -> list[int]:
    """``n`` ports of PORT_RANGE that nothing listens on right now."""
    start = random.randrange(len(PORT_RANGE))
    found: list[int] = []
    for i in range(len(PORT_RANGE)):
        port = PORT_RANGE[(start + i) % len(PORT_RANGE)]
        if not servers.port_in_use("127.0.0.1", port):
            found.append(port)
            if len(found) == n:
                return found
    pytest.skip(f"no {n} free ports in {PORT_RANGE}")


@pytest.fixture
def fake_script(tmp_path: Path) -> Path:
    path = tmp_path / "fake_server.py"
    path.write_text(FAKE_SERVER, encoding="utf-8")
    return path


def fake_spec(script: Path, name: str, port: int, log_dir: Path, mode: str = "ok"):
    return servers.ServerSpec(
        name=name,
        argv=(sys.executable, str(script), name, str(port), mode),
        host="127.0.0.1",
        port=port,
        model_dir=f"/models/{name}",
        log_path=log_dir / f"{name}.log",
        final_log_path=log_dir / f"{name}.log",
        port_field=f"{name}_port",
    )


def make_inputs(root: Path) -> tuple[Path, Path]:
    exported, store = root / "exported", root / "feature_store"
    for model in ("recommender", "generator"):
        (exported / model).mkdir(parents=True)
        (exported / model / "model.onnx").write_bytes(b"onnx")
    store.mkdir()
    (store / "feature_store.yaml").write_text("project: recsynth\n")
    return exported, store


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# rendered manifests


def test_run_renders_storage_uri_gpu_and_canary_for_the_run(tmp_path: Path) -> None:
    exported, store = make_inputs(tmp_path)
    cfg = DeployConfig(
        start_servers=False, canary_traffic_percent=10, state_dir=str(tmp_path / "s")
    )
    summary = logic.run(cfg, exported, store, tmp_path / "deployment", run_id="run-0042")

    out = tmp_path / "deployment" / "manifests"
    for model in ("recommender", "generator"):
        rollout = load(out / f"{model}-inferenceservice.yaml")
        pred = rollout["spec"]["predictor"]
        assert rollout["apiVersion"] == "serving.kserve.io/v1beta1"
        assert rollout["metadata"]["name"] == f"recsynth-{model}"
        assert rollout["metadata"]["namespace"] == "recsynth"
        assert rollout["metadata"]["annotations"]["recsynth.io/run-id"] == "run-0042"
        assert pred["model"]["storageUri"] == f"pvc://recsynth-models/run-0042/{model}"
        assert pred["canaryTrafficPercent"] == 10
        assert pred["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pred["model"]["resources"]["requests"]["nvidia.com/gpu"] == "1"
        env = {e["name"]: e["value"] for e in pred["model"]["env"]}
        assert env["RECSYNTH_REQUIRE_GPU"] == "1"
        assert pred["model"]["image"] == cfg.serving_image
        assert pred["model"]["args"][:2] == ["--model", model]
        sec = pred["model"]["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["readOnlyRootFilesystem"] is True
        assert sec["allowPrivilegeEscalation"] is False
        assert sec["capabilities"]["drop"] == ["ALL"]
        assert sec["seccompProfile"]["type"] == "RuntimeDefault"
        assert pred["model"]["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{model}/ready"
        assert manifests.model_problems(rollout, manifests.V1beta1InferenceService) == []

        assert env["RECSYNTH_VARIANT"] == "canary"

        promote = load(out / "promote" / f"{model}-inferenceservice.yaml")
        rollback = load(out / "rollback" / f"{model}-inferenceservice.yaml")
        assert "canaryTrafficPercent" not in promote["spec"]["predictor"]
        assert rollback["spec"]["predictor"]["canaryTrafficPercent"] == 0
        # the variants differ in the traffic split and the variant label only
        for doc, label in ((promote, "stable"), (rollback, "canary"), (rollout, "canary")):
            components = [doc["spec"]["predictor"]]
            containers = [doc["spec"]["predictor"]["model"]]
            if "transformer" in doc["spec"]:
                components.append(doc["spec"]["transformer"])
                containers += doc["spec"]["transformer"]["containers"]
            for component in components:
                component.pop("canaryTrafficPercent", None)
            for container in containers:
                (variant,) = [e for e in container["env"] if e["name"] == "RECSYNTH_VARIANT"]
                assert variant["value"] == label
                variant["value"] = "-"
        assert promote == rollout == rollback

    rec = load(out / "recommender-inferenceservice.yaml")["spec"]
    assert rec["predictor"]["model"]["args"] == ["--model", "recommender", "--role", "predictor"]
    assert "RECSYNTH_REDIS_CONNECTION_STRING" not in str(rec["predictor"])
    (transformer,) = rec["transformer"]["containers"]
    assert transformer["args"][:4] == ["--model", "recommender", "--role", "transformer"]
    assert transformer["args"][transformer["args"].index("--feature-repo") + 1] == (
        manifests.FEATURE_REPO_MOUNT
    )
    assert rec["transformer"]["canaryTrafficPercent"] == 10
    assert rec["transformer"]["storageUris"] == [
        {"uri": "pvc://recsynth-models/run-0042/recommender", "mountPath": "/mnt/models"}
    ]
    assert "nvidia.com/gpu" not in str(rec["transformer"])
    gen = load(out / "generator-inferenceservice.yaml")["spec"]
    assert "transformer" not in gen
    runtime = load(out / "serving-servingruntime.yaml")
    assert runtime["spec"]["containers"][0]["command"] == ["python", "-m", "serving"]
    assert manifests.model_problems(runtime, manifests.V1alpha1ServingRuntime) == []

    rollout_md = (tmp_path / "deployment" / "rollout.md").read_text()
    assert "kubectl apply -n recsynth -f manifests/promote/" in rollout_md
    assert "kubectl apply -n recsynth -f manifests/rollback/" in rollout_md
    assert "-f manifests/recommender-inferenceservice.yaml" in rollout_md
    assert "10 %" in rollout_md

    assert summary["storage_uris"] == {
        "recommender": "pvc://recsynth-models/run-0042/recommender",
        "generator": "pvc://recsynth-models/run-0042/generator",
    }
    assert summary["canary_traffic_percent"] == 10
    assert summary["servers_started"] is False and summary["pids"] == {}
    step = json.loads((tmp_path / "deployment" / "step.json").read_text())
    assert step["step"] == "deploy" and step["summary"]["run_id"] == "run-0042"
    assert json.loads((tmp_path / "deployment" / "servers.json").read_text())["servers"] == []


def test_no_canary_and_no_gpu_render_a_direct_cpu_rollout(tmp_path: Path) -> None:
    cfg = DeployConfig(
        canary_traffic_percent=None,
        gpus_per_predictor=0,
        storage_uri_prefix="s3://bucket/recsynth/",
        namespace="shop",
    )
    isvc = manifests.to_dict(
        manifests.inference_service(cfg, "generator", run_id="r1", canary_traffic_percent=None)
    )
    model = isvc["spec"]["predictor"]["model"]
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert "tolerations" not in isvc["spec"]["predictor"]
    assert model["storageUri"] == "s3://bucket/recsynth/r1/generator"
    assert "nvidia.com/gpu" not in model["resources"]["limits"]
    assert {e["name"]: e["value"] for e in model["env"]}["RECSYNTH_REQUIRE_GPU"] == "0"
    assert isvc["metadata"]["namespace"] == "shop"


@pytest.mark.parametrize("run_id", ["", "../etc", "a/b", "-x", "r" * 64, "run id"])
def test_bad_run_id_is_refused_and_nothing_is_written(tmp_path: Path, run_id: str) -> None:
    cfg = DeployConfig(start_servers=False)
    with pytest.raises(ConfigError, match="run_id="):
        logic.run(cfg, tmp_path, tmp_path, tmp_path / "deployment", run_id=run_id)
    assert not (tmp_path / "deployment").exists()


def test_missing_exports_are_named_before_anything_is_stopped(tmp_path: Path) -> None:
    exported, store = make_inputs(tmp_path)
    (exported / "generator" / "model.onnx").unlink()
    cfg = DeployConfig(state_dir=str(tmp_path / "state"))
    with pytest.raises(InputError, match="generator/model.onnx"):
        logic.run(cfg, exported, store, tmp_path / "deployment", run_id="r1")
    assert not (tmp_path / "deployment").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("host", "0.0.0.0", "loopback"),
        ("host", "10.1.2.3", "loopback"),
        ("serving_image", "ghcr.io/recsynth/recsynth-serving:latest", "pinned"),
        ("serving_image", "ghcr.io/recsynth/recsynth-serving", "pinned"),
        ("canary_traffic_percent", 100, "less than or equal to 99"),
        ("generator_port", 8080, "different ports"),
    ],
)
def test_config_rejects_unsafe_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeployConfig(**{field: value})


# ---------------------------------------------------------------------------------------------
# local servers


@pytest.mark.integration
def test_start_records_ready_servers_and_stop_ends_them(tmp_path: Path, fake_script: Path) -> None:
    state = servers.StateFile(tmp_path / "state")
    p1, p2 = free_ports(2)
    specs = [
        fake_spec(fake_script, "recommender", p1, tmp_path / "logs"),
        fake_spec(fake_script, "generator", p2, tmp_path / "logs"),
    ]
    records = servers.start_servers(specs, state, timeout_s=30)
    pids = [r["pid"] for r in records]
    try:
        assert [r["name"] for r in records] == ["recommender", "generator"]
        assert [r["port"] for r in records] == [p1, p2]
        assert records[0]["url"] == f"http://127.0.0.1:{p1}"
        assert records[0]["model_dir"] == "/models/recommender"
        assert records[0]["log"] == str(tmp_path / "logs" / "recommender.log")
        on_disk = json.loads(state.path.read_text())["servers"]
        assert [r["pid"] for r in on_disk] == pids
        assert all(servers.is_alive(pid) for pid in pids)
        assert servers.check_ready(f"http://127.0.0.1:{p2}/v2/models/generator/ready")
        # each server leads its own session, so it survives the step that started it
        assert all(os.getsid(pid) == pid for pid in pids)

        # a second start replaces the first servers instead of colliding with them
        again = servers.start_servers(specs, state, timeout_s=30)
        new_pids = [r["pid"] for r in again]
        assert set(new_pids).isdisjoint(pids)
        assert not any(servers.is_alive(pid) for pid in pids)
        pids = new_pids

        with state.locked():
            results = servers.stop_servers(state)
        assert [r["result"] for r in results] == ["stopped", "stopped"]
        assert not any(servers.is_alive(pid) for pid in pids)
        assert not state.path.exists()
    finally:
        _kill_leftovers(pids)


@pytest.mark.integration
def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    # A live process of ours whose cmdline differs from the record: what a recycled PID looks like.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = servers.StateFile(tmp_path / "state")
        state.save(
            [
                {
                    "name": "recommender",
                    "pid": bystander.pid,
                    "host": "127.0.0.1",
                    "port": 18999,
                    "argv": list(
                        servers.serving_argv("recommender", "/m", host="127.0.0.1", port=18999)
                    ),
                }
            ]
        )
        with state.locked():
            results = servers.stop_servers(state)
        assert results == [{"name": "recommender", "pid": bystander.pid, "result": "not-ours"}]
        time.sleep(0.2)
        assert bystander.poll() is None  # still running: it was never signalled
        assert not state.path.exists()  # the stale record is gone
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.integration
def test_port_held_by_another_process_is_refused(tmp_path: Path, fake_script: Path) -> None:
    (port,) = free_ports(1)
    with socket.socket() as holder:
        # A port an earlier test's server just left may sit in TIME_WAIT; this holder may reuse it.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        state = servers.StateFile(tmp_path / "state")
        spec = fake_spec(fake_script, "recommender", port, tmp_path / "logs")
        with pytest.raises(
            ConfigError, match=rf"deploy.recommender_port={port}: .* already in use"
        ):
            servers.start_servers([spec], state, timeout_s=5)
    assert not (tmp_path / "logs" / "recommender.log").exists()  # nothing was started
    assert not state.path.exists()


@pytest.mark.integration
def test_a_server_that_exits_fails_with_its_log_tail(tmp_path: Path, fake_script: Path) -> None:
    p1, p2 = free_ports(2)
    state = servers.StateFile(tmp_path / "state")
    good = fake_spec(fake_script, "recommender", p1, tmp_path / "logs")
    bad = fake_spec(fake_script, "generator", p2, tmp_path / "logs", mode="crash")
    with pytest.raises(servers.ServerStartError, match=r"(?s)generator exited with code 3.*boom"):
        servers.start_servers([good, bad], state, timeout_s=30, failed_log_dir=tmp_path / "kept")
    assert not state.path.exists()
    assert not servers.port_in_use("127.0.0.1", p1)  # the healthy one was stopped too
    assert "boom" in (tmp_path / "kept" / "generator-failed.log").read_text()


@pytest.mark.integration
def test_a_server_that_never_gets_ready_is_stopped(tmp_path: Path, fake_script: Path) -> None:
    (port,) = free_ports(1)
    state = servers.StateFile(tmp_path / "state")
    spec = fake_spec(fake_script, "recommender", port, tmp_path / "logs", mode="never")
    with pytest.raises(servers.ServerStartError, match=r"(?s)not ready .* within 2 s.*serving rec"):
        servers.start_servers([spec], state, timeout_s=2)
    assert not state.path.exists()
    deadline = time.monotonic() + 5
    while servers.port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not servers.port_in_use("127.0.0.1", port)


@pytest.mark.integration
def test_run_starts_records_and_control_stops(
    tmp_path: Path, fake_script: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """deploy.run's own path (state file, servers.json, logs) with stand-in server commands."""

    def stand_in(model, model_dir, *, host, port, feature_repo=None, python=None):
        assert (model == "recommender") == (feature_repo is not None)
        return (sys.executable, str(fake_script), model, str(port), "ok")

    monkeypatch.setattr(servers, "serving_argv", stand_in)
    exported, store = make_inputs(tmp_path)
    p1, p2 = free_ports(2)
    state_dir = tmp_path / "state"
    cfg = DeployConfig(
        recommender_port=p1, generator_port=p2, state_dir=str(state_dir), ready_timeout_s=30
    )
    out = tmp_path / "deployment"
    summary = logic.run(cfg, exported, store, out, run_id="r7")
    pids = list(summary["pids"].values())
    try:
        assert summary["endpoints"] == {
            "recommender": f"http://127.0.0.1:{p1}",
            "generator": f"http://127.0.0.1:{p2}",
        }
        recorded = json.loads((out / "servers.json").read_text())["servers"]
        state_records = json.loads((state_dir / "servers.json").read_text())["servers"]
        assert [r["pid"] for r in recorded] == [r["pid"] for r in state_records] == pids
        assert recorded[0]["model_dir"] == str((exported / "recommender").resolve())
        # the log path recorded is the final one, and the running server keeps writing there
        log = Path(recorded[0]["log"])
        assert log == (out / "logs" / "recommender.log").resolve()
        assert f"serving recommender on {p1}" in log.read_text()

        assert control.main(["status", "--state-dir", str(state_dir)]) == 0
        assert capsys.readouterr().out.count(" ready ") == 2

        assert control.main(["stop", "--state-dir", str(state_dir)]) == 0
        assert "recommender: pid" in capsys.readouterr().out
        assert not any(servers.is_alive(pid) for pid in pids)
        assert not (state_dir / "servers.json").exists()
        assert control.main(["status", "--state-dir", str(state_dir)]) == 0  # nothing recorded
    finally:
        _kill_leftovers(pids)


def _kill_leftovers(pids: list[int]) -> None:
    # Only processes this test started, and only if they still run our fake server.
    for pid in pids:
        cmd = servers.read_cmdline(pid)
        if cmd and "fake_server.py" in " ".join(cmd):
            os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# the real serving CLI


@pytest.mark.slow
@pytest.mark.integration
def test_run_starts_the_real_servers(tmp_path: Path) -> None:
    builders_dir = Path(__file__).resolve().parents[1] / "serving"
    if not (builders_dir / "serving_builders.py").is_file():
        pytest.skip("tests/serving/serving_builders.py (tiny exported models) is not there yet")
    sys.path.insert(0, str(builders_dir))
    try:
        import serving_builders as sb
    finally:
        sys.path.remove(str(builders_dir))

    exported = tmp_path / "exported"
    sb.build_recommender(exported / "recommender")
    sb.build_generator(exported / "generator")
    store = sb.build_feature_store(tmp_path / "work")
    p1, p2 = free_ports(2)
    state_dir = tmp_path / "state"
    cfg = DeployConfig(
        recommender_port=p1, generator_port=p2, state_dir=str(state_dir), ready_timeout_s=150
    )
    summary = logic.run(cfg, exported, store, tmp_path / "deployment", run_id="real-1")
    pids = list(summary["pids"].values())
    try:
        for name, port in (("recommender", p1), ("generator", p2)):
            assert servers.check_ready(f"http://127.0.0.1:{port}/v2/models/{name}/ready")
            cmd = servers.read_cmdline(summary["pids"][name])
            assert cmd[1:5] == ("-m", "serving", "--model", name)
        assert control.main(["stop", "--state-dir", str(state_dir)]) == 0
        assert not any(servers.is_alive(pid) for pid in pids)
        assert not (state_dir / "servers.json").exists()
    finally:
        for pid in pids:
            cmd = servers.read_cmdline(pid)
            if cmd and cmd[1:3] == ("-m", "serving"):
                os.killpg(pid, signal.SIGKILL)


def test_status_reports_a_dead_server_and_exits_1(tmp_path: Path, capsys) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    state = servers.StateFile(tmp_path / "state")
    record = {
        "name": "generator",
        "pid": finished.pid,
        "host": "127.0.0.1",
        "port": 18998,
        "url": "http://127.0.0.1:18998",
        "log": "/nowhere.log",
        "argv": [sys.executable, "-c", "pass"],
    }
    state.save([record])
    assert control.main(["status", "--state-dir", str(state.dir)]) == 1
    assert "generator: pid" in capsys.readouterr().out
    assert control.main(["status", "--json", "--state-dir", str(state.dir)]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["running"], r["ready"]) for r in rows] == [("generator", False, False)]


def test_default_serving_image_is_the_pipelines_serving_image() -> None:
    images = pytest.importorskip("components.common.images")
    assert DeployConfig().serving_image == images.SERVING_IMAGE


def test_a_corrupt_state_file_is_reported_not_guessed_at(tmp_path: Path, capsys) -> None:
    state = servers.StateFile(tmp_path / "state")
    state.dir.mkdir()
    state.path.write_text('{"servers": [{"pid": 1')
    assert control.main(["stop", "--state-dir", str(state.dir)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert state.path.exists()  # left for a human to read


def test_a_record_without_a_usable_pid_is_dropped_unsignalled(tmp_path: Path) -> None:
    state = servers.StateFile(tmp_path / "state")
    state.save([{"name": "generator", "pid": "not-a-pid", "argv": ["x"]}, {"name": "recommender"}])
    with state.locked():
        results = servers.stop_servers(state)
    assert [r["result"] for r in results] == ["gone", "gone"]
    assert not state.path.exists()
