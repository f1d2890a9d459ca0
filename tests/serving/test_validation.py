"""serving.validation.parse_json_object and its two callers, the V1 body and the push body."""

from __future__ import annotations

import pytest

from serving.errors import BadRequest
from serving.push import BODY_EXAMPLE, parse_body
from serving.validation import instances_of, parse_json_object

V1_EXAMPLE = '{"instances": [...]}'


@pytest.mark.parametrize(
    "raw", [b'{"a": [1, "x"]}', bytearray(b'{"a": [1, "x"]}'), memoryview(b'{"a": [1, "x"]}')]
)
def test_bytes_holding_an_object_are_parsed(raw):
    assert parse_json_object(raw, V1_EXAMPLE) == {"a": [1, "x"]}


def test_an_already_decoded_object_is_returned_as_is():
    body = {"instances": [{"user_id": "1"}]}
    assert parse_json_object(body, V1_EXAMPLE) is body


@pytest.mark.parametrize(
    "raw", [b"{user_id: 1", b'{"k": NaN}', b'{"k": Infinity}', b'{"u": "\xff\xfe"}', b""]
)
def test_bytes_that_are_not_strict_json_are_refused_naming_the_body(raw):
    with pytest.raises(BadRequest) as info:
        parse_json_object(raw, V1_EXAMPLE)
    body = info.value.to_dict()
    assert body["field"] == "body"
    assert body["error"].startswith("body: not valid JSON (")
    assert body["allowed"] == f"UTF-8 JSON without NaN/Infinity: {V1_EXAMPLE}"
    assert "value" not in body


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'"17850"', "str"),
        ("17850", "str"),
        (b"[1, 2]", "list"),
        (["x"], "list"),
        (b"5", "int"),
        (b"2.5", "float"),
        (b"true", "bool"),
        (b"null", "NoneType"),
    ],
)
def test_json_that_is_not_an_object_names_its_type(raw, kind):
    with pytest.raises(BadRequest) as info:
        parse_json_object(raw, V1_EXAMPLE)
    assert info.value.to_dict() == {
        "error": f"body: the body must be a JSON object; got '{kind}'; allowed: {V1_EXAMPLE}",
        "status": 400,
        "field": "body",
        "value": f"'{kind}'",
        "allowed": V1_EXAMPLE,
    }


def test_a_json_string_holding_json_is_not_decoded_twice():
    # KServe already decoded '"{\"instances\": ...}"' into this str: it is a string, not a body.
    with pytest.raises(BadRequest, match="must be a JSON object; got 'str'"):
        instances_of('{"instances": [{"user_id": "1"}]}', max_instances=4)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"{not json", "not valid JSON"), (b'["55501"]', "must be a JSON object; got 'list'")],
)
def test_v1_and_push_bodies_share_the_checks_with_their_own_examples(raw, message):
    with pytest.raises(BadRequest, match=message) as v1:
        instances_of(raw, max_instances=4)
    with pytest.raises(BadRequest, match=message) as push:
        parse_body(raw)
    assert v1.value.field == push.value.field == "body"
    assert v1.value.allowed.endswith(V1_EXAMPLE)
    assert push.value.allowed.endswith(BODY_EXAMPLE)
    assert v1.value.message.replace(V1_EXAMPLE, "X") == push.value.message.replace(
        BODY_EXAMPLE, "X"
    )


def test_form_encoded_v1_bytes_still_give_the_instances():
    got = instances_of(b'{"instances": [{"user_id": "17850", "k": 2}]}', max_instances=4)
    assert got == [{"user_id": "17850", "k": 2}]
