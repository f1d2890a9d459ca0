"""Settings of the register_features step (Feast)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.common.strict import StrictModel


class FeaturesConfig(StrictModel):
    # Length of the online history: the last N distinct items of each customer's sequence. The
    # recommender truncates longer inputs to its own max history, so a larger N only costs bytes.
    recent_items: int = Field(default=50, ge=1)
    # How long a customer's history counts as current after their last purchase. The Online Retail
    # purchases end in 2011, and Feast treats a row older than now - TTL as expired in training-set
    # joins and in the first materialize_incremental window, so the default must exceed the data's
    # age: 10,000 days (about 27 years) serves the 2010-2011 histories to runs until about 2037.
    # Feast 0.67 does not apply this TTL to sqlite or Redis online reads (tested in
    # tests/feature_repo), and register_features materializes the data's own time window.
    history_ttl_days: int = Field(default=10_000, ge=1)
    # "sqlite": the local store of feature_repo/feature_store.yaml. "redis": the cluster store of
    # feature_repo/feature_store.cluster.yaml; the connection string comes from the environment
    # variable RECSYNTH_REDIS_CONNECTION_STRING ("host:port" or "host:port,db=0").
    online_store: Literal["sqlite", "redis"] = "sqlite"
    # Customers (and as many items) read back online after materializing, to check the store
    # serves what was written; the step fails if any differs.
    check_rows: int = Field(default=5, ge=1, le=1000)
