"""Feast definitions of what the shop knows about its customers and products, for online serving.

register_features copies this file into each run's feature_store/ folder, writes the parquet
sources under that folder's data/, then applies and materializes these objects there.

Source paths are relative to the feature repo, i.e. to the folder this file is copied into: Feast
0.67 resolves a relative FileSource path against the repo path (the folder that holds
feature_store.yaml and this file), and stores it relative in the registry. So every run's copy
reads its own data/, independent of the working directory, and the finished folder can be renamed
or moved (atomic rename, KFP artifact copy, container image) without rewriting the registry.

TTLs and 2011 data: the Online Retail purchases end in 2011, years before any run. In Feast 0.67
a feature view's TTL (1) bounds how far back a point-in-time join for a training set looks, and
(2) sets the start of the first materialize_incremental window (now - TTL). It is not applied to
sqlite or Redis online reads (tests/feature_repo pins that). register_features materializes with
an explicit window taken from the data, so the TTL decides nothing there either; the default TTL
is still chosen long enough that every path treats the 2011 histories as current.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

# Run settings that register_features writes beside this file (history TTL). Without the file,
# e.g. when this folder is applied by hand, the defaults below match FeaturesConfig's defaults.
_SETTINGS_FILE = Path(__file__).resolve().parent / "feature_settings.json"
_SETTINGS = (
    json.loads(_SETTINGS_FILE.read_text(encoding="utf-8")) if _SETTINGS_FILE.is_file() else {}
)

# About 27 years: covers purchases from 2010 for runs up to about 2037 (see the module docstring).
DEFAULT_HISTORY_TTL_DAYS = 10_000
HISTORY_TTL = timedelta(days=int(_SETTINGS.get("history_ttl_days", DEFAULT_HISTORY_TTL_DAYS)))

# A customer of the shop, as identified at checkout (the CustomerID of the logs, e.g. "17850").
# Only registered customers have one; guest checkouts have no history to serve.
customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A registered shop customer, keyed by the string customer id of the logs.",
)

# A product of the catalogue, identified by its stock code (e.g. "85123A"). The code is the key,
# never the description: the same code has several spellings of its description in the logs.
item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalogue product, keyed by its stock code.",
)

# One row per customer: the shop's current knowledge of them, stamped with their last purchase
# time (UTC). Written by register_features from the cleaned purchase sequences.
customer_history_source = FileSource(
    name="customer_history_source",
    path="data/customer_history.parquet",
    timestamp_field="event_timestamp",
    description="Per-customer history snapshot, one row per customer.",
)

# One row per product: how often real customers bought it in the training data and its price
# band, stamped with the time of the newest purchase in the data the counts come from.
item_popularity_source = FileSource(
    name="item_popularity_source",
    path="data/item_popularity.parquet",
    timestamp_field="event_timestamp",
    description="Per-product purchase counts and price band.",
)

# One row per product: its cleaned description and its MiniLM text embedding.
item_text_source = FileSource(
    name="item_text_source",
    path="data/item_text.parquet",
    timestamp_field="event_timestamp",
    description="Per-product description and text embedding.",
)

# What the recommender needs to answer "what next?" for a returning customer: the last items
# they bought (distinct stock codes in order of first purchase, oldest first, the last N of them),
# how many distinct items they have bought in all, and their country.
# TTL: how long after a customer's last purchase their history still counts as current. A shop
# would rather recommend from an old history than from none, so it is long; with the 2011 data it
# must also exceed the data's age, or training-set joins and incremental materialization would
# treat every customer as expired.
customer_history = FeatureView(
    name="customer_history",
    entities=[customer],
    ttl=HISTORY_TTL,
    schema=[
        Field(name="customer_id", dtype=String),
        Field(
            name="recent_items",
            dtype=Array(String),
            description="Last N distinct stock codes, in order of first purchase, oldest first.",
        ),
        Field(name="n_items", dtype=Int64, description="Distinct items bought in all."),
        Field(name="country", dtype=String, description="The customer's most frequent country."),
    ],
    source=customer_history_source,
    online=True,
    description="A customer's purchase history as the shop knows it now.",
)

# How popular a product is and how expensive it is relative to the catalogue (price band 0 is the
# cheapest). Used to break ties and to fall back to popular items for customers without history.
# TTL: the counts come from the same purchases as the histories, so they stay current as long as
# the histories do.
item_popularity = FeatureView(
    name="item_popularity",
    entities=[item],
    ttl=HISTORY_TTL,
    schema=[
        Field(name="item_id", dtype=String),
        Field(name="popularity", dtype=Int64, description="Real training purchases of the item."),
        Field(name="price_band", dtype=Int64, description="Price band, 0 = cheapest."),
    ],
    source=item_popularity_source,
    online=True,
    description="Product popularity and price band.",
)

# What a product is, in words and as a 384-dimensional MiniLM vector, for showing results and for
# text-similarity lookups.
# TTL 0 means "never expires" in Feast: a product's description does not go stale with time.
item_text = FeatureView(
    name="item_text",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_id", dtype=String),
        Field(name="description", dtype=String, description="Cleaned product description."),
        Field(
            name="text_embedding",
            dtype=Array(Float32),
            description="MiniLM embedding of the description (L2-normalised, float32).",
        ),
    ],
    source=item_text_source,
    online=True,
    description="Product text and its embedding.",
)

# What the online recommender reads per request: the customer's history. Item facts travel with
# the exported model's catalogue, so the request path needs one lookup keyed by customer_id only.
recommender = FeatureService(
    name="recommender",
    features=[customer_history],
    description="Features the online recommender reads per request (keyed by customer_id).",
)
