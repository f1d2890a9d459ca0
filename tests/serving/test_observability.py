"""Prometheus metrics per model and variant, and one access line per request with its id."""

from __future__ import annotations

import re
import time

import httpx
import pytest
import serving_builders as b
from conftest import TRANSFORMER_VARIANT
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def samples(base: str, name: str) -> list:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return [
        s for family in text_string_to_metric_families(text) for s in family.samples
        if s.name == name
    ]  # fmt: skip


def count(base: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples(base, "recsynth_requests_total")
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


def access_lines(log, request_id: str) -> list[str]:
    # The server writes its line once the answer is sent: give its log a moment to flush.
    for _ in range(40):
        lines = [ln for ln in log.read_text().splitlines() if f"request_id={request_id} " in ln]
        if lines:
            return lines
        time.sleep(0.05)
    return []


def test_requests_are_counted_by_model_variant_and_status(servers):
    base = servers.recommender.base
    labels = {"model": "recommender", "variant": "stable", "role": "all", "endpoint": "predict"}
    ok0, bad0 = count(base, **labels, status="200"), count(base, **labels, status="400")
    url = f"{base}/v1/models/recommender:predict"
    for _ in range(3):
        assert httpx.post(url, json={"instances": [{"user_id": "17850"}]}).status_code == 200
    assert httpx.post(url, json={"instances": [{"user_id": "17850", "k": 0}]}).status_code == 400
    assert count(base, **labels, status="200") == ok0 + 3
    assert count(base, **labels, status="400") == bad0 + 1
    hist = [
        s
        for s in samples(base, "recsynth_request_duration_seconds_count")
        if s.labels.get("variant") == "stable" and s.labels.get("endpoint") == "predict"
    ]
    assert hist and hist[0].value >= ok0 + 4


def test_unknown_model_names_share_one_label(servers):
    base = servers.recommender.base
    before = count(base, model="unknown", status="404")
    for name in ("x1", "x2"):
        r = httpx.post(f"{base}/v1/models/{name}:predict", json={"instances": [{}]}, timeout=10)
        assert r.status_code == 404
    assert count(base, model="unknown", status="404") == before + 2
    assert not [s for s in samples(base, "recsynth_requests_total") if s.labels["model"] == "x1"]


def test_transformer_metrics_carry_its_variant_and_role(split):
    base = split.transformer.base
    url = f"{base}/v1/models/recommender:predict"
    before = count(base, variant=TRANSFORMER_VARIANT, role="transformer", status="200")
    assert httpx.post(url, json={"instances": [{"items": ["22752"]}]}).status_code == 200
    after = count(base, variant=TRANSFORMER_VARIANT, role="transformer", status="200")
    assert after == before + 1
    assert count(split.predictor.base, role="predictor", endpoint="infer", status="200") >= 1


def test_one_access_line_per_request_with_its_id(servers):
    base = servers.recommender.base
    r = httpx.post(
        f"{base}/v1/models/recommender:predict",
        json={"instances": [{"user_id": "17850", "k": 2}]},
        headers={"x-request-id": "obs-ok-1"},
        timeout=10,
    )
    assert r.headers["x-request-id"] == "obs-ok-1"
    (line,) = access_lines(servers.recommender.log, "obs-ok-1")
    assert "model=recommender variant=stable role=all endpoint=predict status=200" in line
    assert "latency_ms=" in line

    r = httpx.post(
        f"{base}/v1/models/recommender:predict",
        json={"instances": [{"user_id": "17850", "k": 0}]},
        headers={"x-request-id": "obs-bad-1"},
        timeout=10,
    )
    (line,) = access_lines(servers.recommender.log, "obs-bad-1")
    assert "status=400" in line and "error_field=instances[0].k" in line


def test_a_request_without_a_usable_id_gets_one(servers):
    r = httpx.post(
        f"{servers.recommender.base}/v1/models/recommender:predict",
        json={"instances": [{"items": ["22752"]}]},
        headers={"x-request-id": "bad id with spaces"},
        timeout=10,
    )
    new_id = r.headers["x-request-id"]
    assert len(new_id) == 32 and new_id != "bad id with spaces"
    assert len(access_lines(servers.recommender.log, new_id)) == 1


def test_no_customer_history_in_the_info_log(servers):
    base = servers.recommender.base
    httpx.post(
        f"{base}/v1/models/recommender:predict",
        json={"instances": [{"user_id": "17850"}, {"items": b.HISTORIES["13047"]}]},
        headers={"x-request-id": "obs-privacy-1"},
        timeout=10,
    )
    assert access_lines(servers.recommender.log, "obs-privacy-1")
    text = servers.recommender.log.read_text()
    for secret in ("17850", *b.HISTORIES["17850"], *b.HISTORIES["13047"]):
        # As a token of its own: a latency such as 0.0011785030364 holds the digits of 17850.
        found = re.search(rf"(?<![\w.]){re.escape(secret)}(?![\w])", text)
        assert found is None, (secret, text[max(found.start() - 80, 0) : found.end() + 80])


def test_the_leak_check_ignores_digits_inside_numbers_but_not_ids():
    pattern = rf"(?<![\w.]){re.escape('17850')}(?![\w])"
    assert re.search(pattern, "kserve.trace INFO predict: 0.0011785030364990234") is None
    assert re.search(pattern, "took 17850.5 ms") is not None  # a leading id still counts
    assert re.search(pattern, "instances=[{'user_id': '17850'}]") is not None
    assert re.search(pattern, "items=[17850, 22382]") is not None


def test_the_request_id_reaches_the_predictor(split):
    r = httpx.post(
        f"{split.transformer.base}/v1/models/recommender:predict",
        json={"instances": [{"user_id": "17850", "k": 2}]},
        headers={"x-request-id": "obs-hop-1"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    (front,) = access_lines(split.transformer.log, "obs-hop-1")
    (back,) = access_lines(split.predictor.log, "obs-hop-1")
    assert "role=transformer endpoint=predict status=200" in front
    assert "role=predictor endpoint=infer status=200" in back
