"""Over HTTP: a body that is not a JSON object is a 400 with field, value and allowed, V1 and V2."""

from __future__ import annotations

import httpx
import pytest

from serving.server import V1_BODY_EXAMPLE, V2_BODY_EXAMPLE

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
GOOD_V2 = {
    "recommender": b'{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], '
    b'"data": ["17850"]}]}',
    "generator": b'{"inputs": [{"name": "n", "datatype": "INT32", "shape": [1], "data": [2]}]}',
}


def post(base: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(base + path, content=body, headers=headers, timeout=30)


def answers(servers) -> None:
    """Both servers still answer a good V2 request."""
    for model, body in GOOD_V2.items():
        r = post(getattr(servers, model).base, f"/v2/models/{model}/infer", body, JSON)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("model", ["recommender", "generator"])
@pytest.mark.parametrize(
    ("body", "kind"),
    [(b'"17850"', "str"), (b'""', "str"), (b"17850", "int"), (b'["17850"]', "list"),
     (b"true", "bool"), (b"null", "NoneType")],
)  # fmt: skip
def test_a_v2_body_that_is_not_an_object_names_its_type(servers, model, body, kind):
    base = getattr(servers, model).base
    r = post(base, f"/v2/models/{model}/infer", body, JSON)
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": f"body: the body must be a JSON object; got '{kind}'; allowed: {V2_BODY_EXAMPLE}",
        "status": 400,
        "field": "body",
        "value": f"'{kind}'",
        "allowed": V2_BODY_EXAMPLE,
    }
    answers(servers)


@pytest.mark.parametrize("model", ["recommender", "generator"])
def test_a_v1_body_that_is_a_json_string_names_its_type(servers, model):
    base = getattr(servers, model).base
    r = post(base, f"/v1/models/{model}:predict", b'"{\\"instances\\": [{}]}"', JSON)
    assert r.status_code == 400, r.text
    error = r.json()
    assert (error["field"], error["value"], error["allowed"]) == ("body", "'str'", V1_BODY_EXAMPLE)


def test_a_v2_body_without_a_json_content_type_names_the_content_type(servers):
    r = post(
        servers.recommender.base,
        "/v2/models/recommender/infer",
        b'{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["1"]}]}',
        {"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["field"] == "body"
    assert error["value"] == "'application/x-www-form-urlencoded'"
    assert error["allowed"] == (
        "content-type application/json, or the inference-header-content-length header"
    )
    answers(servers)


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("recommender", "/v2/models/recommender/infer"),
        ("generator", "/v1/models/generator:predict"),
    ],
)
def test_invalid_json_names_the_body_and_what_is_allowed(servers, model, path):
    r = post(getattr(servers, model).base, path, b'{"inputs": [', JSON)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["field"] == "body"
    assert error["error"].startswith("body: not valid JSON")
    example = V2_BODY_EXAMPLE if path.startswith("/v2/") else V1_BODY_EXAMPLE
    assert error["allowed"] == f"UTF-8 JSON without NaN/Infinity: {example}"
    answers(servers)
