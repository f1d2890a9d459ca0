"""register_features: tables, apply + materialize into a real Feast store, online read-back.

One store is built per module (Feast's import and first apply dominate the time) and shared by
the read tests; the bad-input tests fail before Feast is touched.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common import artifacts
from components.common.errors import ConfigError, InputError
from components.register_features import logic
from components.register_features.config import FeaturesConfig
from serving.procs import LocalRedis, running_redis

N_CUSTOMERS = 12
N_ITEMS = 80
DIM = 384
CFG = FeaturesConfig(recent_items=50, check_rows=4)
# This suite's Redis ports (tests/serving/test_features.py uses the same range).
REDIS_PORTS = range(19500, 19550)


def write_inputs(root: Path) -> tuple[Path, Path]:
    """Tiny cleaned/ and training_set/ shaped like docs/architecture.md."""
    rng = np.random.default_rng(7)
    cleaned, training = root / "cleaned", root / "training_set"
    cleaned.mkdir(parents=True)
    training.mkdir(parents=True)
    item_ids = [f"{85000 + i}" if i % 3 else f"{20000 + i}A" for i in range(N_ITEMS)]
    start = pd.Timestamp("2010-12-01 08:26", tz="UTC")

    sequences, customers = [], []
    for c in range(N_CUSTOMERS):
        # customer 0 has more distinct items than the online history keeps
        n = 70 if c == 0 else int(rng.integers(1, 12))
        chosen = [item_ids[i] for i in rng.permutation(N_ITEMS)[:n]]
        first = start + pd.Timedelta(days=int(c * 9))
        ts = [first + pd.Timedelta(hours=3 * k) for k in range(n)]
        customer_id = str(12346 + c)
        country = "France" if c % 4 == 0 else "United Kingdom"
        sequences.append(
            {"customer_id": customer_id, "country": country, "items": chosen, "ts": ts}
        )
        # the last purchase may repeat an item, so it can be later than the last first purchase
        last = ts[-1] + pd.Timedelta(minutes=17 * c)
        customers.append(
            {
                "customer_id": customer_id,
                "country": country,
                "n_events": n + c,
                "first_ts": first,
                "last_ts": last,
            }
        )
    pd.DataFrame(sequences).to_parquet(cleaned / artifacts.SEQUENCES)
    pd.DataFrame(customers).to_parquet(cleaned / artifacts.CUSTOMERS)

    descriptions = [f"WHITE HANGING HEART T-LIGHT HOLDER {i}" for i in range(N_ITEMS)]
    descriptions[5] = "Dotcomgiftshop Gift Voucher £40.00"
    pd.DataFrame(
        {
            "item_id": item_ids,
            "description": descriptions,
            "unit_price": rng.uniform(0.5, 20, N_ITEMS),
            "price_band": rng.integers(0, 5, N_ITEMS).astype("int64"),
            "n_events": rng.integers(1, 100, N_ITEMS).astype("int64"),
            "first_seen": [start] * N_ITEMS,
        }
    ).to_parquet(cleaned / artifacts.ITEMS)
    embeddings = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    pd.DataFrame(
        {
            "item_index": np.arange(1, N_ITEMS + 1, dtype="int64"),
            "item_id": item_ids,
            "description": descriptions,
            "price_band": rng.integers(0, 5, N_ITEMS).astype("int64"),
            "popularity": rng.integers(0, 500, N_ITEMS).astype("int64"),
            "text_embedding": list(embeddings),
        }
    ).to_parquet(training / artifacts.ITEM_FEATURES)
    return cleaned, training


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def built(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    cleaned, training = inputs
    out = tmp_path_factory.mktemp("run") / "feature_store"
    summary = logic.run(CFG, cleaned, training, out)
    return out, summary


@pytest.fixture(scope="module")
def store(built):
    from feast import FeatureStore

    # opened the way serving opens it
    return FeatureStore(repo_path=str(built[0]))


def _online(store, customer_ids: list[str]) -> dict:
    return store.get_online_features(
        features=["customer_history:recent_items", "customer_history:n_items"],
        entity_rows=[{"customer_id": c} for c in customer_ids],
    ).to_dict()


def test_summary_counts_rows_and_layout(built, inputs):
    out, summary = built
    assert summary["rows"] == {
        "customer_history": N_CUSTOMERS,
        "item_popularity": N_ITEMS,
        "item_text": N_ITEMS,
    }
    assert summary["online_check"]["matched"] is True
    assert summary["online_check"]["customers"] == 4
    assert summary["customers_older_than_ttl"] == 0
    assert summary["history_stamp"] == "registered"
    assert summary["feature_services"] == ["recommender_v1", "recommender_online_v1"]
    for name in ("features.py", "feature_store.yaml", "feature_settings.json", "step.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "feature_settings.json").read_text()) == {"history_ttl_days": 30}
    # nothing of the scratch folder is left beside the output
    assert sorted(p.name for p in out.parent.iterdir()) == ["feature_store"]


def test_online_recent_items_equal_written_history(store, inputs):
    cleaned, _ = inputs
    seqs = pd.read_parquet(cleaned / artifacts.SEQUENCES)
    ids = list(seqs["customer_id"].iloc[[0, 3, 7, N_CUSTOMERS - 1]])
    got = _online(store, ids)
    want = {c: list(items) for c, items in zip(seqs["customer_id"], seqs["items"], strict=True)}
    assert got["customer_id"] == ids
    assert got["recent_items"] == [want[c][-50:] for c in ids]
    assert got["n_items"] == [len(want[c]) for c in ids]
    # customer 0 bought 70 distinct items: the last 50, oldest first
    assert len(got["recent_items"][0]) == 50
    assert got["recent_items"][0][-1] == want[ids[0]][-1]


def test_online_feature_service_serves_customer_history(store, inputs):
    cleaned, _ = inputs
    seqs = pd.read_parquet(cleaned / artifacts.SEQUENCES)
    got = store.get_online_features(
        features=store.get_feature_service("recommender_online_v1"),
        entity_rows=[{"customer_id": seqs["customer_id"].iloc[4]}],
    ).to_dict()
    assert set(got) == {
        "customer_id",
        "recent_items",
        "n_items",
        "country",
        "last_purchase_at",
        "updated_at",
    }
    assert got["recent_items"] == [list(seqs["items"].iloc[4])]
    assert got["country"] == ["France"]


def test_v1_feature_service_joins_customer_and_item_on_their_own_keys(store, inputs):
    cleaned, training = inputs
    seqs = pd.read_parquet(cleaned / artifacts.SEQUENCES)
    feats = pd.read_parquet(training / artifacts.ITEM_FEATURES)
    got = store.get_online_features(
        features=store.get_feature_service("recommender_v1"),
        entity_rows=[
            {"customer_id": seqs["customer_id"].iloc[2], "item_id": feats["item_id"].iloc[5]}
        ],
    ).to_dict()
    assert got["recent_items"] == [list(seqs["items"].iloc[2])]
    assert got["popularity"] == [feats["popularity"].iloc[5]]
    assert got["description"] == ["Dotcomgiftshop Gift Voucher £40.00"]
    # the service names the item's text, not its 384-float embedding
    assert "text_embedding" not in got


def test_unknown_customer_returns_none(store):
    got = _online(store, ["00000", "12346"])
    assert got["recent_items"][0] is None
    assert got["n_items"][0] is None
    assert got["recent_items"][1] is not None


def test_embeddings_round_trip_as_float32_384(store, inputs):
    _, training = inputs
    feats = pd.read_parquet(training / artifacts.ITEM_FEATURES)
    ids = list(feats["item_id"].iloc[[0, 5, N_ITEMS - 1]])
    got = store.get_online_features(
        features=[
            "item_text:text_embedding",
            "item_text:description",
            "item_popularity:popularity",
        ],
        entity_rows=[{"item_id": i} for i in ids],
    ).to_dict()
    for k, row in enumerate([0, 5, N_ITEMS - 1]):
        vector = np.asarray(got["text_embedding"][k], dtype=np.float32)
        assert vector.shape == (DIM,)
        np.testing.assert_array_equal(vector, feats["text_embedding"].iloc[row])
        assert got["popularity"][k] == feats["popularity"].iloc[row]
    assert got["description"][1] == "Dotcomgiftshop Gift Voucher £40.00"


def test_rows_are_stamped_at_registration_and_keep_the_last_purchase(built, inputs):
    out, summary = built
    cleaned, _ = inputs
    history = pd.read_parquet(out / "data" / "customer_history.parquet")
    customers = pd.read_parquet(cleaned / artifacts.CUSTOMERS)
    registered = pd.Timestamp(summary["registered_at"])
    assert registered.tz is not None and registered.microsecond == 0
    # registered in this test run, not in 2011
    assert abs(pd.Timestamp.now(tz="UTC") - registered) < pd.Timedelta(hours=1)
    for column in ("event_timestamp", "updated_at", "last_purchase_at"):
        assert str(history[column].dt.tz) == "UTC", column
    assert (history["event_timestamp"] == registered).all()
    assert (history["updated_at"] == registered).all()
    merged = history.merge(customers, on="customer_id")
    assert (merged["last_purchase_at"] == merged["last_ts"]).all()
    items = pd.read_parquet(out / "data" / "item_text.parquet")
    assert (items["event_timestamp"] == registered).all()


def test_last_purchase_stamping_counts_histories_older_than_the_ttl(inputs):
    cleaned, training = inputs
    cfg = FeaturesConfig(history_stamp="last_purchase", history_ttl_days=30)
    tables = logic.build_tables(
        cfg,
        sequences=pd.read_parquet(cleaned / artifacts.SEQUENCES),
        customers=pd.read_parquet(cleaned / artifacts.CUSTOMERS),
        items=pd.read_parquet(cleaned / artifacts.ITEMS),
        item_features=pd.read_parquet(training / artifacts.ITEM_FEATURES),
    )
    customers = pd.read_parquet(cleaned / artifacts.CUSTOMERS)
    history = tables["customer_history"]
    assert list(history["event_timestamp"]) == list(customers["last_ts"])
    assert (history["updated_at"] == history["event_timestamp"]).all()
    assert (tables["item_popularity"]["event_timestamp"] == customers["last_ts"].max()).all()
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    # every 2010-2011 history is older than 30 days; none is older than 10,000 days
    assert logic._older_than_ttl(tables, 30, now) == N_CUSTOMERS
    assert logic._older_than_ttl(tables, 10_000, now) == 0


def test_naive_registration_time_is_refused(inputs):
    cleaned, training = inputs
    with pytest.raises(InputError, match="registered_at must be timezone-aware"):
        logic.build_tables(
            CFG,
            sequences=pd.read_parquet(cleaned / artifacts.SEQUENCES),
            customers=pd.read_parquet(cleaned / artifacts.CUSTOMERS),
            items=pd.read_parquet(cleaned / artifacts.ITEMS),
            item_features=pd.read_parquet(training / artifacts.ITEM_FEATURES),
            registered_at=pd.Timestamp("2026-01-01 10:00").to_pydatetime(),
        )


def test_store_still_serves_after_the_folder_moves(built, tmp_path):
    from feast import FeatureStore

    moved = tmp_path / "elsewhere" / "fs"
    shutil.copytree(built[0], moved)
    got = _online(FeatureStore(repo_path=str(moved)), ["12346"])
    assert len(got["recent_items"][0]) == 50
    assert b"partial" not in (moved / "data" / "registry.db").read_bytes()


def test_check_fails_when_store_differs_from_tables(store, inputs):
    cleaned, training = inputs
    tables = logic.build_tables(
        CFG,
        sequences=pd.read_parquet(cleaned / artifacts.SEQUENCES),
        customers=pd.read_parquet(cleaned / artifacts.CUSTOMERS),
        items=pd.read_parquet(cleaned / artifacts.ITEMS),
        item_features=pd.read_parquet(training / artifacts.ITEM_FEATURES),
    )
    tables["customer_history"].at[0, "recent_items"] = ["NOT-WRITTEN"]
    with pytest.raises(logic.FeatureStoreCheckError, match="recent_items"):
        logic.check_online(store, tables, 3)


@pytest.mark.parametrize(
    ("file", "column"),
    [
        ("cleaned/sequences.parquet", "items"),
        ("cleaned/customers.parquet", "last_ts"),
        ("training_set/item_features.parquet", "text_embedding"),
    ],
)
def test_missing_column_is_input_error_and_nothing_is_written(inputs, tmp_path, file, column):
    root = tmp_path / "in"
    shutil.copytree(inputs[0], root / "cleaned")
    shutil.copytree(inputs[1], root / "training_set")
    frame = pd.read_parquet(root / file)
    frame.drop(columns=[column]).to_parquet(root / file)
    out = tmp_path / "out" / "feature_store"
    with pytest.raises(InputError, match=column) as info:
        logic.run(CFG, root / "cleaned", root / "training_set", out)
    assert info.value.column == column
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_naive_timestamps_are_refused(inputs, tmp_path):
    cleaned = tmp_path / "cleaned"
    shutil.copytree(inputs[0], cleaned)
    customers = pd.read_parquet(cleaned / artifacts.CUSTOMERS)
    customers["last_ts"] = customers["last_ts"].dt.tz_localize(None)
    customers.to_parquet(cleaned / artifacts.CUSTOMERS)
    with pytest.raises(InputError, match="timezone-aware") as info:
        logic.run(CFG, cleaned, inputs[1], tmp_path / "feature_store")
    assert info.value.column == "last_ts"


def test_embedding_of_another_length_is_refused(inputs, tmp_path):
    training = tmp_path / "training_set"
    shutil.copytree(inputs[1], training)
    feats = pd.read_parquet(training / artifacts.ITEM_FEATURES)
    feats.at[3, "text_embedding"] = np.zeros(10, dtype=np.float32)
    feats.to_parquet(training / artifacts.ITEM_FEATURES)
    with pytest.raises(InputError, match="length 10") as info:
        logic.run(CFG, inputs[0], training, tmp_path / "feature_store")
    assert (info.value.column, info.value.row) == ("text_embedding", 3)


def test_sequence_without_customer_row_is_refused(inputs, tmp_path):
    cleaned = tmp_path / "cleaned"
    shutil.copytree(inputs[0], cleaned)
    customers = pd.read_parquet(cleaned / artifacts.CUSTOMERS)
    customers.iloc[1:].to_parquet(cleaned / artifacts.CUSTOMERS)
    with pytest.raises(InputError, match="'12346' has a sequence but no row") as info:
        logic.run(CFG, cleaned, inputs[1], tmp_path / "feature_store")
    assert info.value.row == 0


def test_redis_without_connection_string_is_config_error(inputs, tmp_path, monkeypatch):
    monkeypatch.delenv(logic.REDIS_ENV, raising=False)
    with pytest.raises(ConfigError, match=logic.REDIS_ENV):
        logic.run(FeaturesConfig(online_store="redis"), *inputs, tmp_path / "feature_store")


def test_config_rejects_unknown_store_and_zero_ttl():
    with pytest.raises(ValueError, match="online_store"):
        FeaturesConfig(online_store="dynamodb")
    with pytest.raises(ValueError, match="history_ttl_days"):
        FeaturesConfig(history_ttl_days=0)
    with pytest.raises(ValueError, match="history_stamp"):
        FeaturesConfig(history_stamp="first_purchase")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A redis-server of this module's on 127.0.0.1 (19500-19549), ended by its own PID."""
    with running_redis(tmp_path_factory.mktemp("redis"), REDIS_PORTS, unavailable=pytest.skip) as r:
        yield r


@pytest.mark.integration
def test_redis_store_serves_the_same_values(redis_server, inputs, tmp_path, monkeypatch):
    from feast import FeatureStore

    client = redis_server.client()
    monkeypatch.setenv(logic.REDIS_ENV, redis_server.url)
    cleaned, training = inputs
    out = tmp_path / "feature_store"
    summary = logic.run(FeaturesConfig(online_store="redis", check_rows=4), cleaned, training, out)
    assert summary["online_store"] == "redis"
    assert summary["online_check"]["matched"] is True
    # the repo names the variable, not this server: each reader supplies its own connection
    assert "${" + logic.REDIS_ENV + "}" in (out / "feature_store.yaml").read_text()
    assert not (out / "data" / "online_store.db").exists()
    assert client.dbsize() > 0

    seqs = pd.read_parquet(cleaned / artifacts.SEQUENCES)
    ids = list(seqs["customer_id"].iloc[[0, 5, N_CUSTOMERS - 1]]) + ["00000"]
    store = FeatureStore(repo_path=str(out))
    got = _online(store, ids)
    want = [list(items)[-50:] for items in seqs["items"].iloc[[0, 5, N_CUSTOMERS - 1]]]
    assert got["recent_items"] == [*want, None]

    feats = pd.read_parquet(training / artifacts.ITEM_FEATURES)
    vector = store.get_online_features(
        features=["item_text:text_embedding"], entity_rows=[{"item_id": feats["item_id"].iloc[2]}]
    ).to_dict()["text_embedding"][0]
    np.testing.assert_array_equal(
        np.asarray(vector, dtype=np.float32), feats["text_embedding"].iloc[2]
    )
