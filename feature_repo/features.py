"""Feast definitions of what the shop knows about its customers and products, for online serving.

register_features copies this file into each run's feature_store/ folder, writes the parquet
sources under that folder's data/, then applies and materializes these objects there.

Source paths are relative to the feature repo, i.e. to the folder this file is copied into: Feast
0.67 resolves a relative FileSource path against the repo path (the folder that holds
feature_store.yaml and this file), and stores it relative in the registry. So every run's copy
reads its own data/, independent of the working directory, and the finished folder can be renamed
or moved (atomic rename, KFP artifact copy, container image) without rewriting the registry.

Event timestamps and TTLs: a customer_history row is stamped with the moment the shop's knowledge
of that customer was last confirmed: register_features stamps every row with the registration
time (the bundled purchases end in 2011, so stamping them with their own times would make every
history years older than any realistic TTL), and a pushed purchase restamps the row. The real time
of the customer's last purchase travels as the feature ``last_purchase_at``. The stamp is also
kept as the feature ``updated_at``, because Feast 0.67 neither applies a view's TTL to online reads
nor stores the sqlite online store's event timestamps independently of the machine's timezone
(tests/feature_repo/test_feast_ttl.py pins both); serving.features checks ``updated_at`` against
this view's TTL and treats an older row as missing.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String, UnixTimestamp

# Run settings that register_features writes beside this file (history TTL). Without the file,
# e.g. when this folder is applied by hand, the defaults below match FeaturesConfig's defaults.
_SETTINGS_FILE = Path(__file__).resolve().parent / "feature_settings.json"
_SETTINGS = (
    json.loads(_SETTINGS_FILE.read_text(encoding="utf-8")) if _SETTINGS_FILE.is_file() else {}
)

# A history neither re-registered nor updated by a purchase for 30 days is stale: the feature
# pipeline has stopped, and serving falls back to the anonymous path rather than guess.
DEFAULT_HISTORY_TTL_DAYS = 30
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

# One row per customer: the shop's current knowledge of them, stamped (UTC) with the time that
# knowledge was registered (see the module docstring). Written by register_features from the
# cleaned purchase sequences.
customer_history_source = FileSource(
    name="customer_history_source",
    path="data/customer_history.parquet",
    timestamp_field="event_timestamp",
    description="Per-customer history snapshot, one row per customer.",
)

# New purchases, pushed by the online server the moment they happen (serving.features
# CustomerHistory.push_purchase), so the next recommendation sees them without a new
# materialization. Pushes go to the online store only: the offline truth stays the shop's own
# purchase log, from which the next registration rebuilds every row. The batch source is what
# materialization and training-set joins read.
customer_history_push = PushSource(
    name="customer_history_push",
    batch_source=customer_history_source,
    description="Online updates of a customer's history after a purchase.",
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
# how many distinct items they have bought in all, their country, when they last bought, and when
# this row was last confirmed (its event timestamp, as a timezone-independent feature).
# TTL: how long a row stays current without being re-registered or updated by a purchase. Served
# rows older than that are treated as missing (serving.features checks updated_at against it).
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
        Field(
            name="last_purchase_at",
            dtype=UnixTimestamp,
            description="Time of the customer's last purchase (UTC).",
        ),
        Field(
            name="updated_at",
            dtype=UnixTimestamp,
            description="When this row was registered or last updated by a push (UTC).",
        ),
    ],
    source=customer_history_push,
    online=True,
    description="A customer's purchase history as the shop knows it now.",
)

# How popular a product is and how expensive it is relative to the catalogue (price band 0 is the
# cheapest). Used to break ties and to fall back to popular items for customers without history.
# TTL: the counts are registered together with the histories, so they go stale together.
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

# Version 1 of the recommender's features, all of them: the customer's history and the facts of
# a candidate item. Rows carry both keys (customer_id and item_id), as in a training-set join or
# when scoring candidates one by one; each view joins on its own key.
recommender_v1 = FeatureService(
    name="recommender_v1",
    features=[
        customer_history,
        item_popularity,
        item_text[["description"]],
    ],
    description="All features of recommender v1 (customer history and item facts).",
)

# What the online recommender reads per request, keyed by customer_id only: the history. Item
# facts travel with the exported model's catalogue, so the request path needs one lookup.
recommender_online_v1 = FeatureService(
    name="recommender_online_v1",
    features=[customer_history],
    description="Features the online recommender reads per request (keyed by customer_id).",
)
