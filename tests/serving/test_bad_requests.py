"""Every documented bad input: its 4xx status, a JSON body naming the field, and no 500."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.integration

REC_V1 = ("recommender", "/v1/models/recommender:predict")
GEN_V1 = ("generator", "/v1/models/generator:predict")
REC_V2 = ("recommender", "/v2/models/recommender/infer")
GEN_V2 = ("generator", "/v2/models/generator/infer")


def inst(**fields) -> bytes:
    return json.dumps({"instances": [fields]}).encode()


def t(name: str, dtype: str, data: list, shape: list | None = None) -> dict:
    return {"name": name, "datatype": dtype, "shape": shape or [len(data)], "data": data}


def v2(*tensors: dict, **extra) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


# (id, target, body, status, text the error message must contain)
CASES = [
    # the V1 envelope
    ("rec-no-instances", REC_V1, b"{}", 400, "instances"),
    ("rec-instances-object", REC_V1, b'{"instances": {"user_id": "1"}}', 400, "instances"),
    ("rec-instances-empty", REC_V1, b'{"instances": []}', 400, "instances"),
    ("rec-instance-not-object", REC_V1, b'{"instances": ["17850"]}', 400, "instances[0]"),
    ("rec-body-not-object", REC_V1, b'["x"]', 400, "body"),
    ("rec-unknown-top-key", REC_V1, b'{"instances": [{"user_id": "1"}], "x": 1}', 400, "x"),
    ("rec-not-json", REC_V1, b"{user_id: 1", 400, "body"),
    ("rec-nan", REC_V1, b'{"instances": [{"user_id": "1", "k": NaN}]}', 400, "body"),
    ("rec-infinity", REC_V1, b'{"instances": [{"items": ["85123A"], "k": Infinity}]}', 400, "body"),
    ("rec-not-utf8", REC_V1, b'{"instances": [{"user_id": "\xff\xfe"}]}', 400, "body"),
    ("rec-too-many", REC_V1, json.dumps({"instances": [{"user_id": "1"}] * 257}).encode(), 413,
     "instances"),
    ("rec-body-too-large", REC_V1, b" " * (2 * 1024 * 1024 + 10), 413, "body"),
    # recommender instance fields
    ("rec-neither", REC_V1, inst(k=3), 400, "instances[0].user_id"),
    ("rec-both", REC_V1, inst(user_id="17850", items=["85123A"]), 400, "instances[0].user_id"),
    ("rec-user-int", REC_V1, inst(user_id=17850), 400, "instances[0].user_id"),
    ("rec-user-empty", REC_V1, inst(user_id=""), 400, "instances[0].user_id"),
    ("rec-items-not-list", REC_V1, inst(items="85123A"), 400, "instances[0].items"),
    ("rec-items-empty", REC_V1, inst(items=[]), 400, "instances[0].items"),
    ("rec-items-mixed", REC_V1, inst(items=["85123A", 71053]), 400, "instances[0].items[1]"),
    ("rec-item-float", REC_V1, inst(items=[22752.0]), 400, "instances[0].items[0]"),
    ("rec-unknown-item", REC_V1, inst(items=["85123A", "NOPE1"]), 400, "instances[0].items[1]"),
    ("rec-k-zero", REC_V1, inst(user_id="1", k=0), 400, "instances[0].k"),
    ("rec-k-negative", REC_V1, inst(user_id="1", k=-2), 400, "instances[0].k"),
    ("rec-k-minus-one", REC_V1, inst(user_id="1", k=-1), 400, "instances[0].k"),
    ("rec-k-billion", REC_V1, inst(user_id="1", k=10**9), 400, "instances[0].k"),
    ("rec-user-float", REC_V1, inst(user_id=17850.0), 400, "instances[0].user_id"),
    ("rec-exclude-seen-int", REC_V1, inst(user_id="1", exclude_seen=1), 400,
     "instances[0].exclude_seen"),
    ("rec-exclude-seen-string", REC_V1, inst(user_id="1", exclude_seen="false"), 400,
     "instances[0].exclude_seen"),
    ("rec-price-band-unknown", REC_V1, inst(user_id="1", price_band=7), 400,
     "instances[0].price_band"),
    ("rec-price-band-negative", REC_V1, inst(user_id="1", price_band=-1), 400,
     "instances[0].price_band"),
    ("rec-price-band-string", REC_V1, inst(user_id="1", price_band="1"), 400,
     "instances[0].price_band"),
    ("rec-100k-instances", REC_V1, json.dumps({"instances": [{"user_id": "1"}] * 100_000}).encode(),
     413, "instances"),
    ("rec-k-over-catalogue", REC_V1, inst(user_id="1", k=25), 400, "instances[0].k"),
    ("rec-k-float", REC_V1, inst(user_id="1", k=3.0), 400, "instances[0].k"),
    ("rec-k-string", REC_V1, inst(user_id="1", k="3"), 400, "instances[0].k"),
    ("rec-k-bool", REC_V1, inst(user_id="1", k=True), 400, "instances[0].k"),
    ("rec-unknown-field", REC_V1, inst(user_id="1", kk=3), 400, "instances[0].kk"),
    # recommender V2
    ("rec-v2-malformed-json", REC_V2, b'{"inputs": [', 400, "body"),
    ("rec-v2-schema", REC_V2, b'{"inputs": [{"name": "user_id"}]}', 400, "inputs[0].shape"),
    ("rec-v2-no-inputs-key", REC_V2, b'{"id": "1"}', 400, "inputs"),
    ("rec-v2-not-utf8", REC_V2, b'{"inputs": [{"name": "user_id", "shape": [1], '
     b'"datatype": "BYTES", "data": ["\xff"]}]}', 400, "body"),
    ("rec-v2-nan", REC_V2, b'{"inputs": [{"name": "k", "shape": [1], "datatype": "INT32", '
     b'"data": [NaN]}]}', 400, "inputs[0].data"),
    ("rec-v2-shape-mismatch", REC_V2, v2(t("user_id", "BYTES", ["1"], [3])), 400,
     "inputs[0].data"),
    ("rec-v2-wrong-dtype", REC_V2, v2(t("user_id", "INT64", [17850])), 400,
     "inputs[0].datatype"),
    ("rec-v2-k-wrong-dtype", REC_V2, v2(t("user_id", "BYTES", ["1"]), t("k", "FP32", [3.0])), 400,
     "inputs[1].datatype"),
    ("rec-v2-bytes-bare-string", REC_V2, v2({"name": "user_id", "datatype": "BYTES", "shape": [1],
     "data": "17850"}), 400, "inputs[0].data"),
    ("rec-v2-items-bare-string", REC_V2, v2({"name": "items", "datatype": "BYTES", "shape": [1, 1],
     "data": "85123A"}), 400, "inputs[0].data"),
    ("rec-v2-shape-too-short", REC_V2, v2(t("user_id", "BYTES", ["1", "2", "3"], [2])), 400,
     "inputs[0].data"),
    ("rec-v2-ids-as-floats", REC_V2, v2(t("user_id", "BYTES", [17850.0])), 400, "inputs[0].data"),
    ("rec-v2-exclude-seen-int", REC_V2, v2(t("user_id", "BYTES", ["1"]),
     t("exclude_seen", "BOOL", [0])), 400, "inputs[1].data"),
    ("rec-v2-price-band-unknown", REC_V2, v2(t("user_id", "BYTES", ["1"]),
     t("price_band", "INT32", [9])), 400, "inputs.price_band"),
    ("rec-v2-unknown-input", REC_V2, v2(t("customer", "BYTES", ["1"])), 400, "inputs[0].name"),
    ("rec-v2-neither", REC_V2, v2(t("k", "INT32", [3])), 400, "inputs"),
    ("rec-v2-k-zero", REC_V2, v2(t("user_id", "BYTES", ["1"]), t("k", "INT32", [0])), 400,
     "inputs.k"),
    ("rec-v2-k-float", REC_V2, v2(t("user_id", "BYTES", ["1"]), t("k", "INT32", [2.5])), 400,
     "inputs[1].data"),
    ("rec-v2-unknown-item", REC_V2, v2(t("items", "BYTES", ["NOPE1"], [1, 1])), 400,
     "inputs.items[0][0]"),
    ("rec-v2-items-1d", REC_V2, v2(t("items", "BYTES", ["85123A"])), 400, "inputs.items.shape"),
    ("rec-v2-unknown-output", REC_V2, v2(t("user_id", "BYTES", ["1"]), outputs=[{"name": "x"}]),
     400, "outputs[0].name"),
    ("rec-v2-too-many", REC_V2, v2(t("user_id", "BYTES", ["1"] * 300)), 413, "inputs.user_id"),
    # generator V1
    ("gen-no-instances", GEN_V1, b'{"prefix": []}', 400, "instances"),
    ("gen-temperature-negative", GEN_V1, inst(temperature=-0.5), 400, "instances[0].temperature"),
    ("gen-temperature-string", GEN_V1, inst(temperature="hot"), 400, "instances[0].temperature"),
    ("gen-temperature-too-high", GEN_V1, inst(temperature=1e9), 400, "instances[0].temperature"),
    ("gen-prefix-unknown", GEN_V1, inst(prefix=["85123A", "NOPE1"]), 400, "instances[0].prefix[1]"),
    ("gen-prefix-int", GEN_V1, inst(prefix=[85123]), 400, "instances[0].prefix[0]"),
    ("gen-prefix-not-list", GEN_V1, inst(prefix="85123A"), 400, "instances[0].prefix"),
    ("gen-prefix-too-long", GEN_V1, inst(prefix=["85123A"] * 13), 400, "instances[0].prefix"),
    ("gen-n-zero", GEN_V1, inst(n=0), 400, "instances[0].n"),
    ("gen-n-too-big", GEN_V1, inst(n=33), 400, "instances[0].n"),
    ("gen-n-float", GEN_V1, inst(n=2.0), 400, "instances[0].n"),
    ("gen-max-items-zero", GEN_V1, inst(max_items=0), 400, "instances[0].max_items"),
    ("gen-max-items-over-context", GEN_V1, inst(max_items=14), 400, "instances[0].max_items"),
    ("gen-max-items-over-context-with-prefix", GEN_V1, inst(prefix=["85123A"], max_items=13),
     400, "instances[0].max_items"),
    ("gen-top-k-zero", GEN_V1, inst(top_k=0), 400, "instances[0].top_k"),
    ("gen-top-p-zero", GEN_V1, inst(top_p=0), 400, "instances[0].top_p"),
    ("gen-top-p-over-one", GEN_V1, inst(top_p=1.5), 400, "instances[0].top_p"),
    ("gen-seed-negative", GEN_V1, inst(seed=-1), 400, "instances[0].seed"),
    ("gen-country-unknown", GEN_V1, inst(country="Atlantis"), 400, "instances[0].country"),
    ("gen-country-int", GEN_V1, inst(country=1), 400, "instances[0].country"),
    ("gen-unknown-field", GEN_V1, inst(temp=1.0), 400, "instances[0].temp"),
    ("gen-too-many", GEN_V1, json.dumps({"instances": [{}] * 17}).encode(), 413, "instances"),
    # generator V2
    ("gen-v2-temperature-negative", GEN_V2, v2(t("temperature", "FP32", [-1.0])), 400,
     "inputs.temperature"),
    ("gen-v2-temperature-nan", GEN_V2, b'{"inputs": [{"name": "temperature", "shape": [1], '
     b'"datatype": "FP32", "data": [NaN]}]}', 400, "inputs[0].data"),
    ("gen-v2-n-two-values", GEN_V2, v2(t("n", "INT32", [1, 2])), 400, "inputs.n.shape"),
    ("gen-v2-prefix-unknown", GEN_V2, v2(t("prefix", "BYTES", ["NOPE1"])), 400,
     "inputs.prefix[0]"),
    ("gen-v2-repeated-input", GEN_V2, v2(t("n", "INT32", [1]), t("n", "INT32", [2])), 400,
     "inputs[1].name"),
    # unknown models and paths
    ("unknown-model-v1", ("recommender", "/v1/models/nope:predict"), inst(user_id="1"), 404,
     "nope"),
    ("unknown-model-v2", ("generator", "/v2/models/nope/infer"), v2(t("n", "INT32", [1])), 404,
     "nope"),
    ("unknown-model-ready", ("generator", "/v2/models/nope/ready"), None, 404, "nope"),
    ("unknown-model-v1-on-recommender", ("recommender", "/v1/models/recommenderx:predict"),
     inst(user_id="1"), 404, "recommenderx"),
    ("unknown-model-v2-on-recommender", ("recommender", "/v2/models/Recommender/infer"),
     v2(t("user_id", "BYTES", ["1"])), 404, "Recommender"),
]  # fmt: skip


def _server(servers, name: str):
    return servers.recommender if name == "recommender" else servers.generator


def good_request(servers, name: str) -> None:
    """A valid request to that server, answered in full: the bad one broke nothing."""
    if name == "recommender":
        r = httpx.post(
            f"{servers.recommender.base}/v1/models/recommender:predict",
            json={"instances": [{"user_id": "17850", "k": 3}]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"][0]["items"]) == 3
    else:
        r = httpx.post(
            f"{servers.generator.base}/v1/models/generator:predict",
            json={"instances": [{"n": 2, "max_items": 3}]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"][0]["sessions"]) == 2


@pytest.mark.parametrize(
    ("target", "body", "status", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request(servers, target, body, status, names):
    name, path = target
    url = _server(servers, name).base + path
    if body is None:
        r = httpx.get(url, timeout=30)
    else:
        r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()
    assert names in error["error"], error
    assert "Traceback" not in r.text
    good_request(servers, name)


def test_streamed_body_over_the_limit_is_413(servers):
    # No content-length: the limit is enforced while the body is read.
    chunks = (b" " * (1024 * 1024) for _ in range(3))
    r = httpx.post(
        f"{servers.recommender.base}/v1/models/recommender:predict",
        content=chunks,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "body"


def test_form_encoded_v1_body_is_still_parsed(servers):
    # curl's default content type is form-encoded; KServe then hands the raw bytes through.
    r = httpx.post(
        f"{servers.recommender.base}/v1/models/recommender:predict",
        content=b'{"instances": [{"user_id": "17850", "k": 2}]}',
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]["items"]) == 2


def test_error_body_has_field_value_and_allowed(servers):
    r = httpx.post(
        f"{servers.recommender.base}/v1/models/recommender:predict",
        json={"instances": [{"user_id": "1", "k": 0}]},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": "instances[0].k: out of range; got 0; allowed: an integer from 1 to 24",
        "status": 400,
        "field": "instances[0].k",
        "value": "0",
        "allowed": "an integer from 1 to 24",
    }


def test_servers_still_answer_after_bad_requests(servers):
    for case in CASES:
        name, path = case[1]
        url = _server(servers, name).base + path
        httpx.post(url, content=case[2] or b"", timeout=30)
    assert servers.recommender.proc.poll() is None
    assert servers.generator.proc.poll() is None
    rec = httpx.post(
        f"{servers.recommender.base}/v1/models/recommender:predict",
        json={"instances": [{"user_id": "17850", "k": 3}]},
        timeout=30,
    )
    gen = httpx.post(
        f"{servers.generator.base}/v1/models/generator:predict",
        json={"instances": [{"n": 2, "max_items": 3}]},
        timeout=30,
    )
    assert rec.status_code == 200
    assert len(rec.json()["predictions"][0]["items"]) == 3
    assert gen.status_code == 200
    assert len(gen.json()["predictions"][0]["sessions"]) == 2
