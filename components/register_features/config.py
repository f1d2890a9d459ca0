"""Settings of the register_features step (Feast)."""

from __future__ import annotations

from pydantic import Field

from components.common.strict import StrictModel


class FeaturesConfig(StrictModel):
    recent_items: int = Field(default=50, ge=1)
    # How long a customer's online history stays valid without a new purchase.
    history_ttl_days: int = Field(default=3650, ge=1)
