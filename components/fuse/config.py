"""Settings of the fuse step (real + synthetic sequences and item features)."""

from __future__ import annotations

from pydantic import Field

from components.common.strict import StrictModel


class FuseConfig(StrictModel):
    # Loss weight of a synthetic sequence relative to a real one.
    synthetic_weight: float = Field(default=0.5, ge=0)
    embedding_batch_size: int = Field(default=64, ge=1)
