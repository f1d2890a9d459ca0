"""feature_repo/: the definitions declare the contract's names, types and relative sources."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from components.register_features import logic

REPO = Path(__file__).resolve().parents[2] / "feature_repo"


def _load(folder: Path) -> dict:
    objects = logic._load_definitions(folder / "features.py")
    return {o.name: o for o in objects}


@pytest.fixture(scope="module")
def defs() -> dict:
    return _load(REPO)


def test_entities_join_on_string_ids(defs):
    from feast import ValueType

    assert defs["customer"].join_key == "customer_id"
    assert defs["item"].join_key == "item_id"
    assert defs["customer"].value_type == ValueType.STRING
    assert defs["item"].value_type == ValueType.STRING


def test_feature_views_have_the_contract_features(defs):
    from feast.types import Array, Float32, Int64, String, UnixTimestamp

    def features(name: str) -> dict:
        return {f.name: f.dtype for f in defs[name].features}

    assert features("customer_history") == {
        "recent_items": Array(String),
        "n_items": Int64,
        "country": String,
        "last_purchase_at": UnixTimestamp,
        "updated_at": UnixTimestamp,
    }
    assert features("item_popularity") == {"popularity": Int64, "price_band": Int64}
    assert features("item_text") == {"description": String, "text_embedding": Array(Float32)}
    assert defs["customer_history"].entities == ["customer"]
    assert defs["item_text"].entities == ["item"]


def test_sources_are_relative_to_the_repo(defs):
    paths = {
        defs[n].batch_source.path for n in ("customer_history", "item_popularity", "item_text")
    }
    assert paths == {
        "data/customer_history.parquet",
        "data/item_popularity.parquet",
        "data/item_text.parquet",
    }
    for name in ("feature_store.yaml", "feature_store.cluster.yaml"):
        config = yaml.safe_load((REPO / name).read_text())
        assert config["registry"] == "data/registry.db", name
        assert config["offline_store"] == {"type": "file"}, name
    local = yaml.safe_load((REPO / "feature_store.yaml").read_text())
    assert local["online_store"] == {"type": "sqlite", "path": "data/online_store.db"}


def test_cluster_config_takes_redis_from_the_environment():
    config = yaml.safe_load((REPO / "feature_store.cluster.yaml").read_text())
    assert config["online_store"] == {
        "type": "redis",
        "connection_string": "${" + logic.REDIS_ENV + "}",
    }


def test_feature_services_v1(defs):
    def projections(name: str) -> list:
        return [
            (p.name, sorted(f.name for f in p.features))
            for p in defs[name].feature_view_projections
        ]

    history = sorted(["country", "last_purchase_at", "n_items", "recent_items", "updated_at"])
    assert projections("recommender_online_v1") == [("customer_history", history)]
    assert projections("recommender_v1") == [
        ("customer_history", history),
        ("item_popularity", ["popularity", "price_band"]),
        ("item_text", ["description"]),
    ]


def test_customer_history_is_pushed_to_and_materialized_from_its_parquet(defs):
    from feast.data_source import PushSource

    view = defs["customer_history"]
    assert isinstance(view.stream_source, PushSource)
    assert view.stream_source.name == "customer_history_push"
    assert view.batch_source.path == "data/customer_history.parquet"
    assert defs["customer_history_push"].batch_source.name == "customer_history_source"


def test_ttls_default_and_follow_the_settings_file(defs, tmp_path):
    assert defs["customer_history"].ttl == timedelta(days=30)
    assert defs["item_popularity"].ttl == timedelta(days=30)
    assert defs["item_text"].ttl == timedelta(0)
    shutil.copyfile(REPO / "features.py", tmp_path / "features.py")
    (tmp_path / "feature_settings.json").write_text(json.dumps({"history_ttl_days": 30}))
    copied = _load(tmp_path)
    assert copied["customer_history"].ttl == timedelta(days=30)
    assert copied["item_text"].ttl == timedelta(0)


def test_every_object_has_a_comment_before_it():
    lines = (REPO / "features.py").read_text().splitlines()
    declared = [
        i
        for i, line in enumerate(lines)
        if any(
            f"= {kind}(" in line
            for kind in ("Entity", "FileSource", "PushSource", "FeatureView", "FeatureService")
        )
    ]
    assert len(declared) == 11
    for i in declared:
        assert lines[i - 1].startswith("#"), lines[i]
