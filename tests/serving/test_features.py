"""serving.features against real Feast repos built by register_features: read, TTL, push, keys.

One sqlite store per module (Feast's import and apply dominate); tests that write to it push to
customers no other test reads. The Redis tests start their own redis-server on 127.0.0.1
(serving.procs.running_redis).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.errors import BadRequest, ModelLoadError, NotReady
from serving.features import HISTORY_LENGTH, CustomerHistory, extend_history, lookup_latency
from serving.procs import LocalRedis, running_redis

T0 = pd.Timestamp("2011-02-01 09:30", tz="UTC")
ITEMS = [f"{84000 + i}" if i % 4 else f"{22000 + i}B" for i in range(90)]
# customer id -> distinct items bought, oldest first
HISTORIES = {
    "17850": ITEMS[:5],
    "13047": ITEMS[10:13],
    "12583": ITEMS[: HISTORY_LENGTH - 1],  # one short of a full history
    "14688": ITEMS[20:70],  # more than is kept online: the last 50
    "15100": ITEMS[3:4],
    "16029": ITEMS[40:48],
    "17511": ITEMS[60:64],
}
# This suite's Redis ports (tests/components/test_register_features.py uses the same range).
REDIS_PORTS = range(19500, 19550)


def write_inputs(root: Path) -> tuple[Path, Path]:
    """cleaned/ and training_set/ for :data:`HISTORIES`, as ingest and fuse write them."""
    cleaned, training = root / "cleaned", root / "training_set"
    cleaned.mkdir(parents=True)
    training.mkdir(parents=True)
    ids = list(HISTORIES)
    stamps = [[T0 + pd.Timedelta(days=i, hours=j) for j in range(len(HISTORIES[c]))]
              for i, c in enumerate(ids)]  # fmt: skip
    countries = ["France" if i % 3 == 0 else "United Kingdom" for i in range(len(ids))]
    pd.DataFrame(
        {"customer_id": ids, "country": countries, "items": list(HISTORIES.values()), "ts": stamps}
    ).to_parquet(cleaned / "sequences.parquet")
    pd.DataFrame(
        {
            "customer_id": ids,
            "country": countries,
            "n_events": [len(h) for h in HISTORIES.values()],
            "first_ts": pd.DatetimeIndex([s[0] for s in stamps]),
            "last_ts": pd.DatetimeIndex([s[-1] for s in stamps]),
        }
    ).to_parquet(cleaned / "customers.parquet")
    n = len(ITEMS)
    pd.DataFrame(
        {
            "item_id": ITEMS,
            "description": [f"TEST ITEM {c}" for c in ITEMS],
            "unit_price": np.ones(n),
            "price_band": np.zeros(n, dtype=np.int64),
            "n_events": np.ones(n, dtype=np.int64),
            "first_seen": pd.DatetimeIndex([T0] * n),
        }
    ).to_parquet(cleaned / "items.parquet")
    pd.DataFrame(
        {
            "item_index": np.arange(1, n + 1, dtype=np.int64),
            "item_id": ITEMS,
            "description": [f"TEST ITEM {c}" for c in ITEMS],
            "price_band": np.zeros(n, dtype=np.int64),
            "popularity": np.arange(n, dtype=np.int64),
            "text_embedding": [np.full(4, 0.5, dtype=np.float32)] * n,
        }
    ).to_parquet(training / "item_features.parquet")
    return cleaned, training


def build(root: Path, inputs: tuple[Path, Path], **settings) -> tuple[Path, dict]:
    """A feature_store/ built by register_features with these FeaturesConfig settings."""
    from components.register_features.config import FeaturesConfig
    from components.register_features.logic import run

    out = root / "feature_store"
    summary = run(FeaturesConfig(check_rows=2, **settings), *inputs, out)
    return out, summary


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def repo(inputs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return build(tmp_path_factory.mktemp("store"), inputs)


@pytest.fixture(scope="module")
def history(repo) -> CustomerHistory:
    return CustomerHistory(repo[0])


def test_lookup_serves_registered_histories_and_none_for_unknown(history, repo):
    got = history.recent_items(["17850", "00000", "14688", "13047"])
    assert got == [HISTORIES["17850"], None, HISTORIES["14688"][-50:], HISTORIES["13047"]]
    row = history.histories(["17850"])[0]
    assert row.updated_at == datetime.fromisoformat(repo[1]["registered_at"])
    assert row.last_purchase_at == T0 + pd.Timedelta(hours=4)
    assert (row.n_items, row.country) == (5, "France")
    assert history.ttl == timedelta(days=30)
    assert history.store_type == "sqlite"


def test_push_is_seen_by_the_next_lookup(history):
    before = history.histories(["13047"])[0]
    result = history.push_purchase("13047", ["99001", ITEMS[11], "99002"])
    # ITEMS[11] is already in the history: distinct items keep their first-purchase place
    assert history.recent_items(["13047"]) == [[*HISTORIES["13047"], "99001", "99002"]]
    after = history.histories(["13047"])[0]
    assert (result["added"], result["n_items"], result["restarted"]) == (2, 5, False)
    assert after.n_items == before.n_items + 2
    assert after.country == before.country == "United Kingdom"
    assert after.updated_at > before.updated_at
    assert after.updated_at == datetime.fromisoformat(result["updated_at"])
    assert result["mode"] == "online"


def test_push_keeps_the_last_50_items(history):
    history.push_purchase("12583", ["99101", "99102", "99103"])
    got = history.recent_items(["12583"])[0]
    assert len(got) == HISTORY_LENGTH
    assert got == [*HISTORIES["12583"], "99101", "99102", "99103"][-HISTORY_LENGTH:]
    assert history.histories(["12583"])[0].n_items == HISTORY_LENGTH - 1 + 3


@given(st.lists(st.lists(st.sampled_from([f"C{i}" for i in range(70)]), min_size=1), max_size=12))
def test_extend_history_keeps_the_last_distinct_items_in_first_purchase_order(purchases):
    # Reference: the distinct codes of all purchases in order of first appearance, last 50 of
    # them, for purchases whose items never fell out of the window.
    history: list[str] = []
    total = 0
    for bought in purchases:
        before = set(history)
        history, added = extend_history(history, bought)
        assert added == [c for c in dict.fromkeys(bought) if c not in before]
        total += len(added)
        assert len(history) == len(set(history)) <= HISTORY_LENGTH
        assert history[-len(added) :] == added[-HISTORY_LENGTH:] or not added
    everything = list(dict.fromkeys(c for bought in purchases for c in bought))
    if total == len(everything):
        assert history == everything[-HISTORY_LENGTH:]


def test_pushes_in_one_second_are_all_kept_and_stamped_in_order(history):
    first = history.push_purchase("16029", ["99201"])
    second = history.push_purchase("16029", ["99202"])
    assert history.recent_items(["16029"])[0][-2:] == ["99201", "99202"]
    assert second["updated_at"] > first["updated_at"]


def test_push_with_a_past_time_keeps_the_later_last_purchase(history):
    old = datetime(2011, 1, 5, 12, 0, tzinfo=UTC)
    result = history.push_purchase("17511", ["99301"], old)
    row = history.histories(["17511"])[0]
    assert row.recent_items[-1] == "99301"
    # the registered last purchase (2011-02-07) is later than the pushed one
    assert row.last_purchase_at == T0 + pd.Timedelta(days=6, hours=3)
    # the row's stamp moves forward, never back to 2011
    assert row.updated_at > datetime(2026, 1, 1, tzinfo=UTC)
    assert result["last_purchase_at"] == row.last_purchase_at.isoformat()


def test_a_push_older_than_the_ttl_is_stamped_now_and_served(history):
    # The ttl measures from the write, not from the purchase: a purchase dated 60 days back
    # (twice the ttl) is served at once and keeps its own time as last_purchase_at.
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    before = datetime.now(UTC).replace(microsecond=0)
    result = history.push_purchase("20004", ["99801", "99802"], ts)
    row = history.histories(["20004"])[0]
    assert row is not None
    assert row.recent_items == ["99801", "99802"]
    assert row.last_purchase_at == ts
    assert before <= row.updated_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert result["updated_at"] == row.updated_at.isoformat()
    assert result["restarted"] is True


def test_a_push_far_in_the_future_names_the_tolerance(history):
    with pytest.raises(BadRequest) as info:
        history.push_purchase("13047", ["1"], datetime.now(UTC) + timedelta(hours=1))
    assert info.value.allowed == "a UTC-aware time no later than 5 minutes after now (UTC)"


def test_push_for_a_new_customer_starts_a_history(history):
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    result = history.push_purchase("20001", ["99401", "99402", "99401"], ts, country="Spain")
    row = history.histories(["20001"])[0]
    assert row.recent_items == ["99401", "99402"]
    assert (row.n_items, row.country, row.last_purchase_at) == (2, "Spain", ts)
    assert result["restarted"] is True


def test_a_write_through_feast_itself_is_seen_at_once(history, repo):
    # no cache between the store and the request: a row Feast writes is what the next read gets
    from feast import FeatureStore

    now = pd.Timestamp.now(tz="UTC").floor("s")
    FeatureStore(repo_path=str(repo[0])).write_to_online_store(
        "customer_history",
        pd.DataFrame(
            {
                "customer_id": ["20002"],
                "recent_items": [["99501"]],
                "n_items": [1],
                "country": ["France"],
                "last_purchase_at": [now],
                "updated_at": [now],
                "event_timestamp": [now],
            }
        ),
    )
    assert history.recent_items(["20002"]) == [["99501"]]


def test_concurrent_lookups_and_pushes_all_succeed(history):
    # the server runs requests in a thread pool: reads and pushes share the store
    from concurrent.futures import ThreadPoolExecutor

    pushed = [f"99{900 + i}" for i in range(12)]

    def read(_: int) -> list:
        return history.recent_items(["17850", "14688", "20003"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        reads = [pool.submit(read, i) for i in range(200)]
        for code in pushed:
            history.push_purchase("20003", [code])
        got = [r.result() for r in reads]
    assert all(g[0] == HISTORIES["17850"] for g in got)
    assert all(g[1] == HISTORIES["14688"][-50:] for g in got)
    # every read saw a prefix of the pushes, in order, and the last read after them sees all
    assert all(g[2] is None or g[2] == pushed[: len(g[2])] for g in got)
    assert history.recent_items(["20003"]) == [pushed]


def test_rows_older_than_the_ttl_are_not_served(history, repo):
    registered = datetime.fromisoformat(repo[1]["registered_at"])
    ttl = timedelta(days=30)
    fresh = history.histories(["15100"], now=registered + ttl - timedelta(seconds=1))
    assert fresh[0].recent_items == HISTORIES["15100"]
    assert history.histories(["15100"], now=registered + ttl + timedelta(seconds=1)) == [None]


def test_expired_rows_are_reported_in_one_warning_without_ids(history, repo, caplog):
    late = datetime.fromisoformat(repo[1]["registered_at"]) + timedelta(days=31)
    history._warned_at = None
    with caplog.at_level("WARNING", logger="serving.features"):
        history.histories(["15100", "17850"], now=late)
        history.histories(["15100"], now=late)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith("2 customer histories were older than the ttl")
    assert "15100" not in warnings[0] and HISTORIES["15100"][0] not in warnings[0]


def test_an_expired_store_takes_the_anonymous_path_until_a_push(inputs, tmp_path):
    # stamped with the 2011 purchases, every history is years older than its 30-day TTL
    out, summary = build(tmp_path, inputs, history_stamp="last_purchase")
    assert summary["customers_older_than_ttl"] == len(HISTORIES)
    expired = CustomerHistory(out)
    assert expired.recent_items(list(HISTORIES)) == [None] * len(HISTORIES)
    # Feast itself still serves the row: only the ttl check keeps it from the recommender
    from feast import FeatureStore

    raw = FeatureStore(repo_path=str(out)).get_online_features(
        features=["customer_history:recent_items"], entity_rows=[{"customer_id": "17850"}]
    )
    assert raw.to_dict()["recent_items"] == [HISTORIES["17850"]]
    # a purchase makes the customer current again, from that purchase on
    result = expired.push_purchase("17850", ["99601"])
    assert result["restarted"] is True
    assert expired.recent_items(["17850", "13047"]) == [["99601"], None]
    assert expired.histories(["17850"])[0].n_items == 1


@pytest.mark.parametrize(
    ("rows", "field", "message"),
    [
        ([{"user_id": "17850"}], "entity_rows[0].user_id", "unknown join key 'user_id'"),
        ([{}], "entity_rows[0].customer_id", "join key 'customer_id' is missing"),
        ([{"customer_id": 17850}], "entity_rows[0].customer_id", "string customer id"),
        ([{"customer_id": 17850.0}], "entity_rows[0].customer_id", "string customer id"),
        ([{"customer_id": "17850"}, "17850"], "entity_rows[1]", "must be an object"),
        (
            [{"customer_id": "17850", "item_id": "85123A"}],
            "entity_rows[0].item_id",
            "unknown join key 'item_id'",
        ),
    ],
)
def test_a_wrong_or_missing_join_key_names_the_key(history, rows, field, message):
    with pytest.raises(BadRequest, match=message) as info:
        history.features_for(rows)
    assert info.value.field == field
    assert info.value.status == 400
    assert info.value.allowed is not None


def test_features_for_good_rows_matches_recent_items(history):
    got = history.features_for([{"customer_id": "17850"}, {"customer_id": "00000"}])
    assert [None if r is None else r.recent_items for r in got] == history.recent_items(
        ["17850", "00000"]
    )


@pytest.mark.parametrize("bad", [17850, None, "", " 17850", ["17850"], True])
def test_lookup_refuses_ids_that_are_not_strings(history, bad):
    with pytest.raises(BadRequest, match="customer_id\\[1\\]") as info:
        history.recent_items(["17850", bad])
    assert "'17850'" in info.value.allowed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"customer_id": 13047, "items": ["1"]}, "customer_id"),
        ({"customer_id": "13047", "items": []}, "items"),
        ({"customer_id": "13047", "items": "85123A"}, "items"),
        ({"customer_id": "13047", "items": ["85123A", 85123]}, "items[1]"),
        ({"customer_id": "13047", "items": ["x"] * 1001}, "items"),
        ({"customer_id": "13047", "items": ["1"], "ts": datetime(2026, 1, 1)}, "ts"),
        ({"customer_id": "13047", "items": ["1"], "ts": "2026-01-01T00:00:00Z"}, "ts"),
        (
            {"customer_id": "13047", "items": ["1"], "ts": datetime.now(UTC) + timedelta(hours=1)},
            "ts",
        ),
        ({"customer_id": "13047", "items": ["1"], "country": ""}, "country"),
    ],
)
def test_a_bad_push_names_the_field_and_writes_nothing(history, kwargs, field):
    before = history.histories(["13047"])[0]
    with pytest.raises(BadRequest) as info:
        history.push_purchase(**kwargs)
    assert info.value.field == field
    assert history.histories(["13047"])[0] == before


def test_missing_repo_fails_loading(tmp_path):
    with pytest.raises(ModelLoadError, match="no feature_store.yaml"):
        CustomerHistory(tmp_path)


def _older_repo(repo: Path, root: Path, edit) -> Path:
    """A copy of ``repo`` applied from edited definitions (a repo of an older feature_repo/)."""
    from feast import FeatureStore

    from components.register_features.logic import _load_definitions

    old = root / "old"
    shutil.copytree(repo, old)
    (old / "data" / "registry.db").unlink()
    (old / "data" / "online_store.db").unlink()
    (old / "features.py").write_text(edit((old / "features.py").read_text()))
    FeatureStore(repo_path=str(old)).apply(_load_definitions(old / "features.py"))
    return old


def test_a_repo_of_older_definitions_fails_loading_naming_what_is_missing(repo, tmp_path):
    def without_push_and_stamps(text: str) -> str:
        start = text.index('        Field(\n            name="last_purchase_at"')
        end = text.index("    ],\n    source=customer_history_push")
        text = text[:start] + text[end:]
        return text.replace("source=customer_history_push", "source=customer_history_source")

    old = _older_repo(repo[0], tmp_path, without_push_and_stamps)
    with pytest.raises(ModelLoadError, match="lacks the features.*updated_at"):
        CustomerHistory(old)


def test_a_repo_without_the_push_source_fails_loading(repo, tmp_path):
    def without_push(text: str) -> str:
        return text.replace("source=customer_history_push", "source=customer_history_source")

    old = _older_repo(repo[0], tmp_path, without_push)
    with pytest.raises(ModelLoadError, match="does not take pushes from 'customer_history_push'"):
        CustomerHistory(old)


def test_lookup_latency_reports_percentiles_of_real_reads(repo):
    ids = ["17850", "00000", "14688"]
    got = lookup_latency(repo[0], ids, 30)
    assert got["n"] == 30
    assert got["store"] == "sqlite"
    # two of every three ids are known customers
    assert got["served"] == 20
    assert 0 < got["p50_ms"] <= got["p99_ms"] <= got["max_ms"]
    with pytest.raises(ValueError, match="at least 1"):
        lookup_latency(repo[0], ids, 0)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A redis-server of this module's on 127.0.0.1 (19500-19549), ended by its own PID."""
    with running_redis(tmp_path_factory.mktemp("redis"), REDIS_PORTS, unavailable=pytest.skip) as r:
        yield r


@pytest.mark.integration
def test_redis_store_reads_pushes_and_expires_through_the_same_path(
    redis_server, inputs, tmp_path, monkeypatch
):
    monkeypatch.setenv("RECSYNTH_REDIS_CONNECTION_STRING", redis_server.url)
    out, summary = build(tmp_path, inputs, online_store="redis")
    redis_history = CustomerHistory(out)
    assert redis_history.store_type == "redis"
    assert redis_history.recent_items(["14688", "00000"]) == [HISTORIES["14688"][-50:], None]

    first = redis_history.push_purchase("13047", ["99701"])
    second = redis_history.push_purchase("13047", ["99702"])
    # Redis drops a write not newer than the stored row: both pushes must land
    assert redis_history.recent_items(["13047"]) == [[*HISTORIES["13047"], "99701", "99702"]]
    assert second["updated_at"] > first["updated_at"]
    # a purchase dated before the registration still lands (the stamp moves forward)
    redis_history.push_purchase("17850", ["99703"], datetime(2011, 1, 1, tzinfo=UTC))
    assert redis_history.recent_items(["17850"])[0][-1] == "99703"

    registered = datetime.fromisoformat(summary["registered_at"])
    late = registered + timedelta(days=30, seconds=1)
    assert redis_history.histories(["15100"], now=late) == [None]

    latency = lookup_latency(out, ["14688", "00000"], 20)
    assert (latency["store"], latency["served"]) == ("redis", 10)


# Run in each pushing process: open the store, say so, wait for the start signal, then push one
# item per purchase for the same customer as fast as it can.
PUSHER = """
import sys, time
from pathlib import Path
from serving.features import CustomerHistory
repo, customer, prefix, n, go = sys.argv[1:]
history = CustomerHistory(Path(repo))
Path(f"{go}.{prefix}").touch()
while not Path(go).exists():
    time.sleep(0.002)
for i in range(int(n)):
    history.push_purchase(customer, [f"{prefix}{i:02d}"])
"""


@pytest.fixture(scope="module")
def redis_repo(redis_server, inputs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A feature_store/ on the module's Redis, registered into an emptied server."""
    # The module's other Redis test pushed newer rows for registered customers, which Redis would
    # keep over a new registration's.
    redis_server.client().flushdb()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECSYNTH_REDIS_CONNECTION_STRING", redis_server.url)
        out, _ = build(tmp_path_factory.mktemp("redis-store"), inputs, online_store="redis")
        yield out


@pytest.mark.integration
def test_two_processes_pushing_for_one_customer_lose_no_purchase(redis_repo, tmp_path):
    out = redis_repo
    go = tmp_path / "go"
    n = 12
    pushers = [
        subprocess.Popen(
            [sys.executable, "-c", PUSHER, str(out), "30001", prefix, str(n), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for prefix in ("A", "B")
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"go.{p}").exists() for p in "AB"):
            exited = [p for p in pushers if p.poll() is not None]
            if exited:
                pytest.fail(f"a pusher exited: {exited[0].stdout.read()[-2000:]!r}")
            if time.monotonic() > deadline:
                pytest.fail("the pushers did not open the store within 120 s")
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=120)[0] for p in pushers]
    finally:
        for p in pushers:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert [p.returncode for p in pushers] == [0, 0], outputs
    row = CustomerHistory(out).histories(["30001"])[0]
    pushed = {prefix: [f"{prefix}{i:02d}" for i in range(n)] for prefix in "AB"}
    assert sorted(row.recent_items) == sorted(pushed["A"] + pushed["B"])
    assert row.n_items == 2 * n
    # each process's purchases keep their order within the interleaving
    for prefix, items in pushed.items():
        assert [c for c in row.recent_items if c.startswith(prefix)] == items


@pytest.mark.integration
def test_a_push_waits_for_another_holder_of_the_lock_then_gives_up(
    redis_repo, redis_server, monkeypatch
):
    import serving.features as features

    history = CustomerHistory(redis_repo)
    before = history.histories(["17850"])[0]
    key = features.push_lock_key(history.project, "17850")
    assert key == "recsynth:push-lock:recsynth:17850"
    # Another pod's push holds this customer's lock (as redis-py's Lock sets it: a token, NX PX).
    assert redis_server.client().set(key, "another-pod", nx=True, px=60_000)
    monkeypatch.setattr(features, "PUSH_LOCK_WAIT_S", 0.3)
    with pytest.raises(NotReady, match="another push for this customer") as info:
        history.push_purchase("17850", ["99801"])
    assert info.value.status == 503
    assert info.value.headers == {"Retry-After": "1"}
    assert history.histories(["17850"])[0] == before
    # another customer's pushes do not wait for it; once it is released, this one's go through
    assert history.push_purchase("13047", ["99802"])["added"] == 1
    redis_server.client().delete(key)
    assert history.push_purchase("17850", ["99801"])["added"] == 1
    assert history.recent_items(["17850"])[0][-1] == "99801"
    assert redis_server.client().exists(key) == 0
