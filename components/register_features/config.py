"""Settings of the register_features step (Feast)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.common.strict import StrictModel


class FeaturesConfig(StrictModel):
    # Length of the online history: the last N distinct items of each customer's sequence. The
    # recommender truncates longer inputs to its own max history, so a larger N only costs bytes.
    recent_items: int = Field(default=50, ge=1)
    # What a customer_history row's event timestamp means. "registered": the time this step runs
    # (the shop confirms its knowledge of every customer now); the real last purchase time is the
    # feature last_purchase_at. This is what lets the 2010-2011 data serve under a realistic TTL.
    # "last_purchase": the customer's last purchase time, for a live shop whose data is current;
    # with the bundled data every history is then older than the TTL and served as missing.
    history_stamp: Literal["registered", "last_purchase"] = "registered"
    # How long a customer's history counts as current after its event timestamp (registration or
    # the last pushed purchase). Feast 0.67 does not apply a TTL to online reads, so
    # serving.features treats an older row as missing (the anonymous path).
    history_ttl_days: int = Field(default=30, ge=1)
    # "sqlite": the local store of feature_repo/feature_store.yaml. "redis": the cluster store of
    # feature_repo/feature_store.cluster.yaml; the connection string comes from the environment
    # variable RECSYNTH_REDIS_CONNECTION_STRING ("host:port" or "host:port,db=0").
    online_store: Literal["sqlite", "redis"] = "sqlite"
    # Customers (and as many items) read back online after materializing, to check the store
    # serves what was written; the step fails if any differs.
    check_rows: int = Field(default=5, ge=1, le=1000)
