"""Settings of the fuse step (real + synthetic sequences and item features)."""

from __future__ import annotations

from pydantic import Field

from components.common.strict import StrictModel


class FuseConfig(StrictModel):
    """How real and synthetic sequences are combined into the recommender's training set."""

    # Loss weight of a synthetic sequence relative to a real one (real sequences weigh 1.0).
    synthetic_weight: float = Field(default=0.5, ge=0)
    # Descriptions per MiniLM forward pass; larger is faster until memory runs short.
    embedding_batch_size: int = Field(default=64, ge=1)
    # Synthetic sequences shorter than this (after unknown items are dropped) carry no
    # next-item signal and are dropped.
    min_synthetic_length: int = Field(default=2, ge=2)
