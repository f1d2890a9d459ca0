"""The cluster shape: a transformer process in front of a predictor process, talking V2 HTTP.

Both are real `python -m serving` processes on 127.0.0.1. The transformer must answer exactly
as the one-process server does, fail fast with 503 + Retry-After while its predictor is down or
restarting, and recover once the predictor is back.
"""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import numpy as np
import orjson
import pytest
import serving_builders as b
from conftest import TRANSFORMER_VARIANT
from serving_procs import start_server, stop_server, wait_ready
from test_server_process import run_cli

pytestmark = pytest.mark.integration

V1_CASES = [
    [{"user_id": "17850", "k": 5}],
    [{"user_id": b.UNKNOWN_CUSTOMER, "k": 3}],
    [{"items": ["85123A", "71053"], "k": 4}, {"user_id": "13047"}],
    [{"user_id": "17850", "k": 6, "exclude_seen": False}],
    [{"items": ["22752"], "k": 5, "price_band": 1}],
    [{"user_id": b.UNKNOWN_CUSTOMER, "k": 4, "price_band": 2}],
]


def post(base: str, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=10, **kw)


def without_variant(predictions: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "variant"} for p in predictions]


@pytest.mark.parametrize("instances", V1_CASES, ids=range(len(V1_CASES)))
def test_transformer_answers_as_the_one_process_server(servers, split, instances):
    path = "/v1/models/recommender:predict"
    one = post(servers.recommender.base, path, {"instances": instances})
    two = post(split.transformer.base, path, {"instances": instances})
    assert one.status_code == two.status_code == 200, two.text
    assert without_variant(two.json()["predictions"]) == without_variant(one.json()["predictions"])
    assert {p["variant"] for p in two.json()["predictions"]} == {TRANSFORMER_VARIANT}
    assert {p["variant"] for p in one.json()["predictions"]} == {"stable"}


def test_transformer_v2_matches_and_carries_version_and_variant(servers, split):
    body = {
        "id": "two-1",
        "inputs": [
            {"name": "user_id", "shape": [2], "datatype": "BYTES", "data": ["17850", "13047"]},
            {"name": "k", "shape": [1], "datatype": "INT32", "data": [3]},
        ],
    }
    path = "/v2/models/recommender/infer"
    one = post(servers.recommender.base, path, body).json()
    two = post(split.transformer.base, path, body).json()
    assert two["outputs"] == one["outputs"]
    assert two["parameters"] == {"model_version": "rec-test-1", "variant": TRANSFORMER_VARIANT}
    assert two["model_version"] == "rec-test-1"


def test_predictor_scores_match_onnx_in_json_and_binary(split):
    import onnxruntime as ort

    ids = np.zeros((2, b.MAX_HISTORY), dtype=np.int64)
    ids[0, -2:] = [1, 2]
    ids[1, -1:] = [7]
    session = ort.InferenceSession(
        str(split.rec_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    want = session.run(["scores"], {"item_ids": ids})[0]
    url = f"{split.predictor.base}/v2/models/recommender/infer"
    tensor = {"name": "item_ids", "shape": list(ids.shape), "datatype": "INT64"}
    as_json = httpx.post(url, json={"inputs": [{**tensor, "data": ids.tolist()}]}, timeout=10)
    assert as_json.status_code == 200, as_json.text
    (out,) = as_json.json()["outputs"]
    assert out["shape"] == [2, len(b.CATALOGUE_CODES) + 1]
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(2, -1), want, rtol=1e-6)

    raw = ids.astype("<i8").tobytes()
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
        }
    )
    as_bin = httpx.post(
        url,
        content=header + raw,
        headers={
            "inference-header-content-length": str(len(header)),
            "content-type": "application/octet-stream",
        },
        timeout=10,
    )
    assert as_bin.status_code == 200, as_bin.text
    json_len = int(as_bin.headers["inference-header-content-length"])
    got = np.frombuffer(as_bin.content[json_len:], dtype="<f4").reshape(2, -1)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": [{"name": "item_ids", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]},
         "inputs[0].datatype"),
        ({"inputs": [{"name": "item_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 99]}]},
         "inputs[0].data"),
        ({"inputs": [{"name": "item_ids", "shape": [1, 2], "datatype": "INT64",
                      "data": [1.5, 2]}]}, "inputs[0].data"),
        ({"inputs": [{"name": "item_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2]}]},
         "inputs[0].data"),
        ({"inputs": [{"name": "item_ids", "shape": [1, 99], "datatype": "INT64",
                      "data": [1] * 99}]}, "inputs[0].shape"),
        ({"inputs": [{"name": "ids", "shape": [1, 1], "datatype": "INT64", "data": [1]}]},
         "inputs"),
    ],
)  # fmt: skip
def test_predictor_refuses_bad_tensors_and_keeps_serving(split, body, field):
    url = f"{split.predictor.base}/v2/models/recommender/infer"
    r = httpx.post(url, json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
    good = {"inputs": [{"name": "item_ids", "shape": [1, 1], "datatype": "INT64", "data": [3]}]}
    assert httpx.post(url, json=good, timeout=10).status_code == 200


def test_predictor_refuses_v1(split):
    r = post(split.predictor.base, "/v1/models/recommender:predict", {"instances": [[1, 2]]})
    assert r.status_code == 400
    assert r.json()["field"] == "protocol"


def test_predictor_down_and_restarted_under_load(split):
    """While the predictor is stopped and restarted, every answer is 200 or 503 + Retry-After."""
    url = f"{split.transformer.base}/v1/models/recommender:predict"
    body = {"instances": [{"user_id": "17850", "k": 3}]}
    # (monotonic time the request was sent, status)
    answers: list[tuple[float, int]] = []
    problems: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(url, json=body)
                except httpx.HTTPError as exc:  # a hang would end here, after 10 s
                    problems.append(repr(exc))
                    continue
                answers.append((sent, r.status_code))
                if r.status_code == 503 and (
                    r.headers.get("retry-after") != "1" or r.json().get("field") != "predictor"
                ):
                    problems.append(f"503 without Retry-After/field: {r.headers} {r.text}")
                elif r.status_code not in (200, 503):
                    problems.append(f"{r.status_code}: {r.text}")
                time.sleep(0.005)

    def wait_for_answers(since: float, n: int = 8) -> None:
        deadline = time.monotonic() + 60
        while sum(t >= since for t, _ in answers) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    port = split.predictor.port
    try:
        wait_for_answers(0.0)
        assert stop_server(split.predictor) == 0
        down_from = time.monotonic()
        wait_for_answers(down_from)
        restart_at = time.monotonic()
        split.predictor = start_server(
            "recommender",
            ["--role", "predictor", "--model-dir", str(split.rec_dir)],
            split.logs / "predictor.log",
            port=port,
        )
        wait_ready(split.predictor)
        back_from = time.monotonic()
        wait_for_answers(back_from)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert problems == []
    before = [s for t, s in answers if t < down_from]
    down = [s for t, s in answers if down_from <= t < restart_at]
    back = [s for t, s in answers if t >= back_from]
    assert 200 in before
    assert len(down) >= 8 and set(down) == {503}
    assert len(back) >= 8 and set(back) == {200}
    assert httpx.post(url, json=body, timeout=10).status_code == 200


def test_corrupt_model_file_fails_readiness_with_a_clear_message(model_dirs, tmp_path):
    rec = tmp_path / "recommender"
    shutil.copytree(model_dirs[0], rec)
    data = (rec / "model.onnx").read_bytes()
    (rec / "model.onnx").write_bytes(data[: len(data) // 2])
    for role in ("predictor", "all"):
        args = [
            "--model",
            "recommender",
            "--role",
            role,
            "--model-dir",
            str(rec),
            "--port",
            "18497",
        ]
        if role == "all":
            args += ["--feature-repo", str(tmp_path)]
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert "onnxruntime could not open" in result.stderr
        assert str(rec / "model.onnx") in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "transformer", "--feature-repo", "."], "--predictor-host"),
        (["--role", "all", "--feature-repo", ".", "--predictor-host", "h:1"], "--predictor-host"),
        (["--role", "predictor", "--feature-repo", "."], "--feature-repo"),
        (["--role", "transformer", "--feature-repo", ".", "--predictor-host", "h:99999"],
         "port must be 1-65535"),
        (["--role", "predictor", "--variant", "Canary!"], "--variant"),
    ],
)  # fmt: skip
def test_cli_refuses_bad_role_combinations(args, message, model_dirs):
    result = run_cli(
        "--model", "recommender", "--model-dir", str(model_dirs[0]), "--port", "18496", *args,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr


def test_generator_has_no_roles(model_dirs):
    result = run_cli(
        "--model", "generator", "--model-dir", str(model_dirs[1]), "--role", "predictor",
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--role predictor applies to --model recommender only" in result.stderr
