"""exclude_seen, the price band filter, and the version and variant every answer carries."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import serving_builders as b

pytestmark = pytest.mark.integration

BAND = {code: i % 3 for i, code in enumerate(b.CATALOGUE_CODES)}  # as serving_builders writes


def v1(servers, instances: list[dict]) -> list[dict]:
    r = httpx.post(
        f"{servers.recommender.base}/v1/models/recommender:predict",
        json={"instances": instances},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def reference(servers, history: list[str], k: int, *, exclude: bool, band: int | None) -> list:
    """ORT on the left-padded history; seen items and other bands removed as asked."""
    index = {code: i + 1 for i, code in enumerate(b.CATALOGUE_CODES)}
    known = [index[c] for c in history if c in index][-b.MAX_HISTORY :]
    row = np.zeros((1, b.MAX_HISTORY), dtype=np.int64)
    row[0, b.MAX_HISTORY - len(known) :] = known
    session = ort.InferenceSession(
        str(servers.rec_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scores = session.run(["scores"], {"item_ids": row})[0][0].astype(np.float64)
    allowed = [
        i
        for i in range(1, len(scores))
        if not (exclude and i in known) and (band is None or BAND[b.CATALOGUE_CODES[i - 1]] == band)
    ]
    order = sorted(allowed, key=lambda i: (-scores[i], i))[:k]
    return [b.CATALOGUE_CODES[i - 1] for i in order]


def test_exclude_seen_false_may_recommend_bought_items(servers):
    history = b.HISTORIES["17850"]
    (pred,) = v1(servers, [{"user_id": "17850", "k": 5, "exclude_seen": False}])
    ids = [i["item_id"] for i in pred["items"]]
    assert ids == reference(servers, history, 5, exclude=False, band=None)
    # The fixture model ranks a history's own items first, so they must show up here...
    assert set(ids) & set(history)
    # ...and never with the default.
    (default,) = v1(servers, [{"user_id": "17850", "k": 5}])
    assert not {i["item_id"] for i in default["items"]} & set(history)


@pytest.mark.parametrize("band", [0, 1, 2])
def test_price_band_filter_keeps_only_that_band(servers, band):
    (pred,) = v1(servers, [{"user_id": "17850", "k": 4, "price_band": band}])
    ids = [i["item_id"] for i in pred["items"]]
    assert ids == reference(servers, b.HISTORIES["17850"], 4, exclude=True, band=band)
    assert {i["price_band"] for i in pred["items"]} == {band}


def test_price_band_filter_applies_to_the_popularity_fallback(servers):
    (pred,) = v1(servers, [{"user_id": b.UNKNOWN_CUSTOMER, "k": 3, "price_band": 2}])
    assert pred["fallback"] == "popularity"
    want = [c for c in b.CATALOGUE_CODES if BAND[c] == 2][:3]
    assert [i["item_id"] for i in pred["items"]] == want


def test_fewer_items_than_k_when_the_band_runs_out(servers):
    (pred,) = v1(servers, [{"items": ["85123A"], "k": 20, "price_band": 0}])
    n_band0 = sum(1 for c in b.CATALOGUE_CODES if BAND[c] == 0)
    assert len(pred["items"]) == n_band0 - 1  # 85123A is band 0 and was seen


def test_v1_answer_carries_version_and_variant(servers):
    (pred,) = v1(servers, [{"items": ["22752"], "k": 2}])
    assert pred["model_version"] == "rec-test-1"
    assert pred["variant"] == "stable"
    assert set(pred["items"][0]) == {"item_id", "description", "score", "price_band"}


def test_v2_options(servers):
    body = {
        "inputs": [
            {"name": "items", "shape": [1, 1], "datatype": "BYTES", "data": ["22752"]},
            {"name": "k", "shape": [1], "datatype": "INT32", "data": [3]},
            {"name": "exclude_seen", "shape": [1], "datatype": "BOOL", "data": [False]},
            {"name": "price_band", "shape": [1], "datatype": "INT32", "data": [BAND["22752"]]},
        ]
    }
    r = httpx.post(f"{servers.recommender.base}/v2/models/recommender/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["item_id"]["data"] == reference(
        servers, ["22752"], 3, exclude=False, band=BAND["22752"]
    )
    assert answer["parameters"] == {"model_version": "rec-test-1", "variant": "stable"}
