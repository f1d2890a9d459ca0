"""What Feast 0.67 does with TTLs and event timestamps, pinned because serving depends on it.

Findings: (1) a feature view's TTL is not applied to online reads (a 1-day TTL still serves a 2011
row from the sqlite store), but it does bound point-in-time joins, and materialize_incremental
starts at now - TTL, so it would skip old rows. register_features therefore materializes an
explicit window. (2) The sqlite online store writes an event timestamp as the epoch of its naive
UTC wall-clock read in the writer's local timezone, and reads it back in the reader's: a row
written under TZ=Asia/Kolkata reads back 5.5 hours early under UTC. So serving checks the TTL
against the row's ``updated_at`` feature (a UnixTimestamp), never against Feast's event timestamp.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.register_features import logic

REPO = Path(__file__).resolve().parents[2] / "feature_repo"
STAMP = pd.Timestamp("2011-03-01 10:00", tz="UTC")


def _repo(root: Path, ttl_days: int):
    """A tiny applied repo from the real definitions with one 2011 customer and item."""
    from feast import FeatureStore

    (root / "data").mkdir(parents=True)
    shutil.copyfile(REPO / "features.py", root / "features.py")
    shutil.copyfile(REPO / "feature_store.yaml", root / "feature_store.yaml")
    (root / "feature_settings.json").write_text(json.dumps({"history_ttl_days": ttl_days}))
    pd.DataFrame(
        {
            "customer_id": ["17850"],
            "recent_items": [["85123A", "71053"]],
            "n_items": [2],
            "country": ["United Kingdom"],
            "last_purchase_at": [STAMP],
            "updated_at": [STAMP],
            "event_timestamp": [STAMP],
        }
    ).to_parquet(root / "data" / "customer_history.parquet")
    pd.DataFrame(
        {"item_id": ["85123A"], "popularity": [3], "price_band": [1], "event_timestamp": [STAMP]}
    ).to_parquet(root / "data" / "item_popularity.parquet")
    pd.DataFrame(
        {
            "item_id": ["85123A"],
            "description": ["WHITE HANGING HEART T-LIGHT HOLDER"],
            "text_embedding": [np.ones(4, dtype=np.float32)],
            "event_timestamp": [STAMP],
        }
    ).to_parquet(root / "data" / "item_text.parquet")
    store = FeatureStore(repo_path=str(root))
    store.apply(logic._load_definitions(root / "features.py"))
    return store


def _history(store) -> list:
    return store.get_online_features(
        features=["customer_history:recent_items"], entity_rows=[{"customer_id": "17850"}]
    ).to_dict()["recent_items"]


@pytest.fixture(scope="module")
def one_day_ttl_store(tmp_path_factory):
    store = _repo(tmp_path_factory.mktemp("ttl") / "repo", ttl_days=1)
    second = timedelta(seconds=1)
    store.materialize(start_date=STAMP - second, end_date=STAMP + second)
    return store


def test_online_reads_ignore_the_ttl(one_day_ttl_store):
    assert one_day_ttl_store.get_feature_view("customer_history").ttl == timedelta(days=1)
    # the row is about 15 years older than its 1-day TTL and is still served
    assert _history(one_day_ttl_store) == [["85123A", "71053"]]


def test_point_in_time_joins_apply_the_ttl(one_day_ttl_store):
    def joined(at: pd.Timestamp) -> list:
        entity = pd.DataFrame({"customer_id": ["17850"], "event_timestamp": [at]})
        frame = one_day_ttl_store.get_historical_features(
            entity_df=entity, features=["customer_history:recent_items"]
        ).to_df()
        return [list(v) for v in frame["recent_items"] if v is not None and len(v)]

    assert joined(STAMP + timedelta(hours=1)) == [["85123A", "71053"]]
    assert joined(STAMP + timedelta(days=3)) == []


def test_materialize_incremental_starts_at_now_minus_ttl(tmp_path):
    store = _repo(tmp_path / "repo", ttl_days=365)
    store.materialize_incremental(end_date=pd.Timestamp.now(tz="UTC").to_pydatetime())
    assert _history(store) == [None]


@contextmanager
def _zone(zone: str) -> Iterator[None]:
    """Run the block with this process's local timezone set to ``zone``, then restore it.

    time.tzset() makes the change visible to datetime at once (naive .timestamp() and
    fromtimestamp(), which is what the sqlite store's adapter and converter use).
    """
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def _stamps(repo: Path) -> dict:
    from feast import FeatureStore

    got = (
        FeatureStore(repo_path=str(repo))
        .get_online_features(
            features=["customer_history:updated_at"], entity_rows=[{"customer_id": "17850"}]
        )
        .to_dict(include_event_timestamps=True)
    )
    return {"event_ts": got["updated_at__ts"][0], "updated_at": got["updated_at"][0].timestamp()}


def test_sqlite_event_timestamps_shift_with_the_timezone_but_updated_at_does_not(tmp_path):
    second = timedelta(seconds=1)
    with _zone("Asia/Kolkata"):
        store = _repo(tmp_path / "repo", ttl_days=1)
        store.materialize(start_date=STAMP - second, end_date=STAMP + second)
        kolkata = _stamps(tmp_path / "repo")
    with _zone("UTC"):
        utc = _stamps(tmp_path / "repo")
    # Feast's event timestamp is right only where it was written, 5.5 hours off elsewhere
    assert kolkata["event_ts"] == STAMP.timestamp()
    assert kolkata["event_ts"] - utc["event_ts"] == 5.5 * 3600
    # the UnixTimestamp feature is the same instant everywhere
    assert utc["updated_at"] == kolkata["updated_at"] == STAMP.timestamp()
