"""The recommender over HTTP: V1 and V2 answers checked against the ONNX model directly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import serving_builders as b

pytestmark = pytest.mark.integration


def v1(servers, instances: list[dict]) -> list[dict]:
    r = httpx.post(
        f"{servers.recommender.base}/v1/models/recommender:predict",
        json={"instances": instances},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def expected_top(servers, history: list[str], k: int) -> list[str]:
    """Reference ranking: ORT on the left-padded last max_history items, bought ones removed."""
    index = {code: i + 1 for i, code in enumerate(b.CATALOGUE_CODES)}
    known = [index[c] for c in history if c in index]
    row = np.zeros((1, b.MAX_HISTORY), dtype=np.int64)
    recent = known[-b.MAX_HISTORY :]
    row[0, b.MAX_HISTORY - len(recent) :] = recent
    session = ort.InferenceSession(
        str(servers.rec_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scores = session.run(["scores"], {"item_ids": row})[0][0].astype(np.float64)
    scores[0] = -np.inf
    scores[known] = -np.inf
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return [b.CATALOGUE_CODES[i - 1] for i in order]


def test_known_customer_gets_k_unbought_items_in_score_order(servers):
    (pred,) = v1(servers, [{"user_id": "17850", "k": 5}])
    ids = [item["item_id"] for item in pred["items"]]
    scores = [item["score"] for item in pred["items"]]
    assert len(ids) == 5
    assert not set(ids) & set(b.HISTORIES["17850"])
    assert scores == sorted(scores, reverse=True)
    assert ids == expected_top(servers, b.HISTORIES["17850"], 5)
    assert pred["fallback"] is None
    assert pred["user_id"] == "17850"
    assert pred["model_version"] == "rec-test-1"
    assert [item["description"] for item in pred["items"]] == [f"TEST ITEM {i}" for i in ids]


def test_history_items_would_win_without_exclusion(servers):
    # The fixture model scores a history's own items highest, so the exclusion is what removes
    # them: check that they really are at the top of the raw scores.
    session = ort.InferenceSession(
        str(servers.rec_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    row = np.zeros((1, b.MAX_HISTORY), dtype=np.int64)
    row[0, -4:] = [1, 2, 3, 4]
    raw = session.run(["scores"], {"item_ids": row})[0][0]
    top4 = set(np.argsort(-raw[1:])[:4] + 1)
    assert len(top4 & {1, 2, 3, 4}) >= 3


def test_default_k_is_ten(servers):
    (pred,) = v1(servers, [{"user_id": "13047"}])
    assert len(pred["items"]) == 10
    assert [i["item_id"] for i in pred["items"]] == expected_top(servers, b.HISTORIES["13047"], 10)


def test_retired_codes_in_history_are_ignored(servers):
    (by_user, by_items) = v1(
        servers, [{"user_id": "12583", "k": 6}, {"items": ["84879", "22745"], "k": 6}]
    )
    assert by_user["fallback"] is None
    assert by_user["items"] == by_items["items"]


def test_unknown_customer_gets_popularity_fallback(servers):
    (pred,) = v1(servers, [{"user_id": b.UNKNOWN_CUSTOMER, "k": 4}])
    assert pred["fallback"] == "popularity"
    assert [i["item_id"] for i in pred["items"]] == b.CATALOGUE_CODES[:4]
    assert [i["score"] for i in pred["items"]] == [
        float(b.POPULARITY[c]) for c in b.CATALOGUE_CODES[:4]
    ]
    assert pred["model_version"] == "rec-test-1"


def test_customer_with_only_retired_codes_falls_back(servers):
    (pred,) = v1(servers, [{"user_id": "15100", "k": 3}])
    assert pred["fallback"] == "popularity"
    assert [i["item_id"] for i in pred["items"]] == b.CATALOGUE_CODES[:3]


def test_anonymous_session(servers):
    (pred,) = v1(servers, [{"items": ["85123A", "71053"], "k": 5}])
    ids = [i["item_id"] for i in pred["items"]]
    assert ids == expected_top(servers, ["85123A", "71053"], 5)
    assert not {"85123A", "71053"} & set(ids)
    assert pred["user_id"] is None
    assert pred["fallback"] is None


def test_long_session_uses_the_last_max_history_items(servers):
    session = b.CATALOGUE_CODES[:12]
    (pred,) = v1(servers, [{"items": session, "k": 5}])
    ids = [i["item_id"] for i in pred["items"]]
    assert ids == expected_top(servers, session, 5)
    assert not set(ids) & set(session)


def test_batch_answers_in_order_and_match_single_requests(servers):
    instances = [
        {"user_id": "17850", "k": 3},
        {"user_id": b.UNKNOWN_CUSTOMER, "k": 2},
        {"items": ["22752"], "k": 4},
        {"user_id": "17850", "k": 3},
    ]
    batch = v1(servers, instances)
    singles = [v1(servers, [inst])[0] for inst in instances]
    assert batch == singles
    assert [p["fallback"] for p in batch] == [None, "popularity", None, None]


def v2(servers, inputs: list[dict], outputs: list[dict] | None = None) -> dict:
    body: dict = {"id": "req-1", "inputs": inputs}
    if outputs is not None:
        body["outputs"] = outputs
    r = httpx.post(f"{servers.recommender.base}/v2/models/recommender/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_v2_user_ids(servers):
    answer = v2(
        servers,
        [
            {"name": "user_id", "shape": [2], "datatype": "BYTES", "data": ["17850", "99999"]},
            {"name": "k", "shape": [1], "datatype": "INT32", "data": [3]},
        ],
    )
    out = {o["name"]: o for o in answer["outputs"]}
    assert answer["id"] == "req-1"
    assert answer["model_version"] == "rec-test-1"
    assert out["item_id"]["shape"] == [2, 3]
    assert out["item_id"]["data"][:3] == expected_top(servers, b.HISTORIES["17850"], 3)
    assert out["item_id"]["data"][3:] == b.CATALOGUE_CODES[:3]
    assert out["fallback"]["data"] == ["", "popularity"]
    scores = out["score"]["data"]
    assert scores[:3] == sorted(scores[:3], reverse=True)
    assert out["description"]["data"][0] == f"TEST ITEM {out['item_id']['data'][0]}"


def test_v2_sessions_padded_with_empty_strings(servers):
    answer = v2(
        servers,
        [
            {
                "name": "items",
                "shape": [2, 2],
                "datatype": "BYTES",
                "data": [["85123A", ""], ["22752", "21730"]],
            },
            {"name": "k", "shape": [1], "datatype": "INT32", "data": [2]},
        ],
    )
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["item_id"]["data"][:2] == expected_top(servers, ["85123A"], 2)
    assert out["item_id"]["data"][2:] == expected_top(servers, ["22752", "21730"], 2)


def test_v2_requested_outputs_filter_the_answer(servers):
    answer = v2(
        servers,
        [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["17850"]}],
        outputs=[{"name": "item_id"}],
    )
    assert [o["name"] for o in answer["outputs"]] == ["item_id"]
    assert answer["outputs"][0]["shape"] == [1, 10]


def test_v2_metadata_and_readiness(servers):
    base = servers.recommender.base
    meta = httpx.get(f"{base}/v2/models/recommender", timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == [
        "user_id",
        "items",
        "k",
        "exclude_seen",
        "price_band",
    ]
    assert [o["name"] for o in meta["outputs"]] == ["item_id", "description", "score", "fallback"]
    ready = httpx.get(f"{base}/v2/models/recommender/ready", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"name": "recommender", "ready": True}
    assert httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 200


def test_concurrent_requests_get_the_same_answers(servers):
    instances = [{"user_id": c, "k": 4} for c in [*b.HISTORIES, b.UNKNOWN_CUSTOMER]] * 3
    want = {i["user_id"]: v1(servers, [i])[0] for i in instances}
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda inst: v1(servers, [inst])[0], instances))
    assert got == [want[i["user_id"]] for i in instances]
