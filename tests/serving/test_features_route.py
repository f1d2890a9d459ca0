"""A purchase pushed over HTTP reaches the next recommendation (the running server's store).

Uses the session's recommender server (tests/serving/conftest.py) and customer ids that no
other test reads, so the pushes change nobody else's history.
"""

from __future__ import annotations

import httpx
import pytest

from serving.features import CustomerHistory

pytestmark = pytest.mark.integration


def _predict(servers, instance: dict) -> dict:
    r = httpx.post(
        f"{servers.recommender.base}/v1/models/recommender:predict",
        json={"instances": [instance]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def _push(servers, body: dict) -> httpx.Response:
    return httpx.post(
        f"{servers.recommender.base}/v1/models/recommender/purchases", json=body, timeout=30
    )


def test_pushed_purchase_is_seen_by_the_next_request(servers):
    customer = "31337"
    before = _predict(servers, {"user_id": customer, "k": 5})
    assert before["fallback"] == "popularity"

    bought = ["22633", "22632", "84879"]
    r = _push(servers, {"customer_id": customer, "items": bought})
    assert r.status_code == 200, r.text
    after = _predict(servers, {"user_id": customer, "k": 5})
    # the customer is now known, and ranked exactly as a session of what they bought
    session = _predict(servers, {"items": bought, "k": 5})
    assert after["fallback"] is None
    assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in session["items"]]
    assert not set(bought) & {i["item_id"] for i in after["items"]}
    # and the store the server reads holds the history, oldest first
    assert CustomerHistory(servers.feature_repo).recent_items([customer]) == [bought]

    r = _push(servers, {"customer_id": customer, "items": ["22623"]})
    assert r.status_code == 200, r.text
    again = _predict(servers, {"user_id": customer, "k": 5})
    assert "22623" not in {i["item_id"] for i in again["items"]}
    assert [i["item_id"] for i in again["items"]] == [
        i["item_id"] for i in _predict(servers, {"items": [*bought, "22623"], "k": 5})["items"]
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer_id": 31338, "items": ["22633"]}, "customer_id"),
        ({"user_id": "31338", "items": ["22633"]}, "user_id"),
        ({"customer_id": "31338", "items": []}, "items"),
        ({"customer_id": "31338", "items": ["22633"], "ts": "2011-12-09T12:50:00"}, "ts"),
    ],
)
def test_a_bad_push_is_a_400_naming_the_field_and_changes_nothing(servers, body, field):
    r = _push(servers, body)
    assert r.status_code == 400, r.text
    assert field in r.json()["field"]
    assert CustomerHistory(servers.feature_repo).recent_items(["31338"]) == [None]
    assert _predict(servers, {"user_id": "31338", "k": 3})["fallback"] == "popularity"
    # the server keeps serving the registered customers
    assert _predict(servers, {"user_id": "17850", "k": 3})["fallback"] is None
