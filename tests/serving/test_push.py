"""POST /v1/models/recommender/purchases: a pushed purchase is in the very next answer."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from serving.features import CustomerHistory

pytestmark = pytest.mark.integration

PATH = "/v1/models/recommender/purchases"


def recommend(base: str, user_id: str, k: int = 5) -> dict:
    r = httpx.post(
        f"{base}/v1/models/recommender:predict",
        json={"instances": [{"user_id": user_id, "k": k}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def test_pushed_purchase_is_seen_by_the_next_request(servers):
    base = servers.recommender.base
    assert recommend(base, "55501")["fallback"] == "popularity"
    r = httpx.post(
        base + PATH,
        json={"customer_id": "55501", "items": ["22752", "21730"], "ts": "2026-12-01T10:00:00Z"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["customer_id"] == "55501"
    assert r.json()["items"] == 2
    assert r.json()["ts"] == "2026-12-01T10:00:00+00:00"
    after = recommend(base, "55501")
    # Now answered from the pushed history, exactly as for a session of those items.
    session = httpx.post(
        f"{base}/v1/models/recommender:predict",
        json={"instances": [{"items": ["22752", "21730"], "k": 5}]},
        timeout=30,
    ).json()["predictions"][0]
    assert after["fallback"] is None
    assert after["items"] == session["items"]


def test_push_through_the_transformer_reaches_the_shared_store(servers, split):
    r = httpx.post(
        split.transformer.base + PATH,
        json={"customer_id": "55502", "items": ["85123A"]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert recommend(servers.recommender.base, "55502")["fallback"] is None
    assert recommend(split.transformer.base, "55502")["fallback"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b'["55501"]', "body"),
        (b'{"items": ["22752"]}', "body.customer_id"),
        (b'{"customer_id": 55501, "items": ["22752"]}', "body.customer_id"),
        (b'{"customer_id": "", "items": ["22752"]}', "body.customer_id"),
        (b'{"customer_id": "55501"}', "body.items"),
        (b'{"customer_id": "55501", "items": "22752"}', "body.items"),
        (b'{"customer_id": "55501", "items": []}', "body.items"),
        (b'{"customer_id": "55501", "items": ["22752", 21730]}', "body.items[1]"),
        (b'{"customer_id": "55501", "items": ["22752"], "ts": "yesterday"}', "body.ts"),
        (b'{"customer_id": "55501", "items": ["22752"], "ts": "2011-12-09T12:50:00"}', "body.ts"),
        (b'{"customer_id": "55501", "items": ["22752"], "ts": 1323435000}', "body.ts"),
        (b'{"customer_id": "55501", "items": ["22752"], "ts": "2999-01-01T00:00:00Z"}', "body.ts"),
        (b'{"customer_id": "55501", "items": ["22752"], "when": "x"}', "body.when"),
        (b'{"customer_id": "55501", "items": ["\xff"]}', "body"),
    ],
)
def test_bad_push_body_is_a_400_naming_the_field(servers, body, field):
    base = servers.recommender.base
    r = httpx.post(base + PATH, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
    assert recommend(base, "17850", k=2)["fallback"] is None


def test_push_to_an_unknown_model_or_the_generator_is_a_404(servers):
    body = {"customer_id": "55501", "items": ["22752"]}
    r = httpx.post(f"{servers.recommender.base}/v1/models/nope/purchases", json=body, timeout=30)
    assert r.status_code == 404
    assert "nope" in r.json()["error"]
    r = httpx.post(f"{servers.generator.base}/v1/models/generator/purchases", json=body, timeout=30)
    assert r.status_code == 404
    assert r.json()["field"] == "model"


def test_the_predictor_takes_no_pushes(split):
    body = {"customer_id": "55501", "items": ["22752"]}
    r = httpx.post(split.predictor.base + PATH, json=body, timeout=30)
    assert r.status_code == 404
    assert r.json()["field"] == "model"


def test_a_backdated_push_is_served_by_the_model(servers):
    # A purchase older than the 30-day TTL: the row is written now, so it is fresh, while the
    # purchase keeps its own time.
    base = servers.recommender.base
    assert recommend(base, "55503")["fallback"] == "popularity"
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(days=60)).replace(microsecond=0)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    r = httpx.post(
        base + PATH,
        json={"customer_id": "55503", "items": ["22752", "21730"], "ts": ts.isoformat()},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 2
    assert dt.datetime.fromisoformat(r.json()["last_purchase_at"]) == ts
    assert dt.datetime.fromisoformat(r.json()["updated_at"]) >= before
    after = recommend(base, "55503")
    assert after["fallback"] is None
    assert not {"22752", "21730"} & {i["item_id"] for i in after["items"]}


def test_a_push_of_an_item_outside_the_catalogue_is_a_400_and_writes_nothing(servers):
    base = servers.recommender.base
    r = httpx.post(
        base + PATH, json={"customer_id": "55504", "items": ["22752", "NOPE"]}, timeout=30
    )
    assert r.status_code == 400, r.text
    assert (r.json()["field"], r.json()["value"]) == ("body.items[1]", "'NOPE'")
    assert "catalogue" in r.json()["allowed"]
    assert CustomerHistory(servers.feature_repo).recent_items(["55504"]) == [None]
    assert recommend(base, "55504")["fallback"] == "popularity"


def test_a_future_ts_names_the_tolerance_and_a_near_future_one_is_taken(servers):
    base = servers.recommender.base
    now = dt.datetime.now(dt.UTC)
    late = (now + dt.timedelta(hours=1)).isoformat()
    r = httpx.post(base + PATH, json={"customer_id": "55505", "items": ["22752"], "ts": late})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "body.ts"
    assert "no later than 5 minutes after" in r.json()["allowed"]
    soon = (now + dt.timedelta(minutes=2)).isoformat()
    r = httpx.post(base + PATH, json={"customer_id": "55505", "items": ["22752"], "ts": soon})
    assert r.status_code == 200, r.text
