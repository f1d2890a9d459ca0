"""Units of the serving roles, the access log and the push body (no server)."""

from __future__ import annotations

import datetime as dt

import pytest

from serving.errors import BadRequest, PredictorUnavailable
from serving.metrics import endpoint_of
from serving.push import parse_body, parse_ts
from serving.scoring import RemoteScorer, parse_predictor_host
from serving.validation import get_bool


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1:18001", "http://127.0.0.1:18001"),
        ("recsynth-recommender-predictor", "http://recsynth-recommender-predictor"),
        (
            "recsynth-recommender-predictor.recsynth",
            "http://recsynth-recommender-predictor.recsynth",
        ),
        ("http://10.0.0.5:8080/", "http://10.0.0.5:8080"),
        ("[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_predictor_host_becomes_a_base_url(host, url):
    assert parse_predictor_host(host) == url


@pytest.mark.parametrize("host", ["", "h:0", "h:70000", "h:x", ":80", "h/path"])
def test_bad_predictor_hosts_are_refused(host):
    with pytest.raises(ValueError, match="predictor-host"):
        parse_predictor_host(host)


def test_unreachable_predictor_is_a_503_with_retry_after():
    import numpy as np

    # 18499 is this suite's last port and left unbound: the connection is refused at once.
    scorer = RemoteScorer("127.0.0.1:18499", model_name="recommender", n_scores=5,
                          model_version=None)  # fmt: skip
    with pytest.raises(PredictorUnavailable) as info:
        scorer.score(np.zeros((1, 4), dtype=np.int64))
    scorer.close()
    assert info.value.status == 503
    assert info.value.headers == {"Retry-After": "1"}
    assert info.value.field == "predictor"


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("/v1/models/recommender:predict", ("recommender", "predict")),
        ("/v2/models/recommender/infer", ("recommender", "infer")),
        ("/v2/models/recommender/versions/3/infer", ("recommender", "infer")),
        ("/v1/models/recommender/purchases", ("recommender", "purchases")),
        ("/v2/models/recommender/ready", None),
        ("/v2/models/recommender", None),
        ("/metrics", None),
    ],
)
def test_endpoint_of_names_only_inference_paths(path, found):
    assert endpoint_of(path) == found


@pytest.mark.parametrize("value", [1, 0, "true", None, 1.0])
def test_get_bool_refuses_non_booleans(value):
    with pytest.raises(BadRequest, match="instances\\[0\\].exclude_seen"):
        get_bool({"exclude_seen": value}, "exclude_seen", "instances[0]", default=True)


def test_get_bool_default_and_values():
    assert get_bool({}, "exclude_seen", "i", default=True) is True
    assert get_bool({"exclude_seen": False}, "exclude_seen", "i", default=True) is False


def test_ts_with_an_offset_becomes_utc():
    assert parse_ts("2011-12-09T13:50:00+01:00") == dt.datetime(2011, 12, 9, 12, 50, tzinfo=dt.UTC)
    assert parse_ts("2011-12-09T12:50:00Z").utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("value", ["2011-12-09T12:50:00", "yesterday", 1323435000, "2999-01-01Z"])
def test_bad_ts_is_refused(value):
    with pytest.raises(BadRequest, match="ts"):
        parse_ts(value)


def test_push_body_without_ts_is_stamped_now():
    before = dt.datetime.now(dt.UTC)
    customer, items, ts = parse_body(b'{"customer_id": "1", "items": ["a", "b"]}')
    assert (customer, items) == ("1", ["a", "b"])
    assert before <= ts <= dt.datetime.now(dt.UTC)
