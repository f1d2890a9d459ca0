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
import subprocess
import sys
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


_WRITE = """
import sys
from datetime import timedelta
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import test_feast_ttl as t
store = t._repo(Path(sys.argv[1]), ttl_days=1)
second = timedelta(seconds=1)
store.materialize(start_date=t.STAMP - second, end_date=t.STAMP + second)
"""

_READ = """
import json, sys
from feast import FeatureStore
got = FeatureStore(repo_path=sys.argv[1]).get_online_features(
    features=["customer_history:updated_at"], entity_rows=[{"customer_id": "17850"}]
).to_dict(include_event_timestamps=True)
print("RESULT" + json.dumps({"event_ts": got["updated_at__ts"][0],
                             "updated_at": got["updated_at"][0].timestamp()}))
"""


def _in_zone(zone: str, script: str, *args: str) -> dict | None:
    env = {**os.environ, "TZ": zone, "RECSYNTH_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    return json.loads(lines[0][len("RESULT") :]) if lines else None


@pytest.mark.slow
def test_sqlite_event_timestamps_shift_with_the_timezone_but_updated_at_does_not(tmp_path):
    repo = tmp_path / "repo"
    _in_zone("Asia/Kolkata", _WRITE, str(repo), str(Path(__file__).parent))
    utc = _in_zone("UTC", _READ, str(repo))
    kolkata = _in_zone("Asia/Kolkata", _READ, str(repo))
    # Feast's event timestamp is right only where it was written, 5.5 hours off elsewhere
    assert kolkata["event_ts"] == STAMP.timestamp()
    assert kolkata["event_ts"] - utc["event_ts"] == 5.5 * 3600
    # the UnixTimestamp feature is the same instant everywhere
    assert utc["updated_at"] == kolkata["updated_at"] == STAMP.timestamp()
