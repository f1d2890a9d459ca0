"""Settings of the fuse step (real + synthetic sequences and item features)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator

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
    # A synthetic sequence whose item set overlaps a real training sequence (or an already kept
    # synthetic one) with Jaccard similarity >= this is a near-duplicate and is dropped: it adds
    # little new signal and, near a real customer, only risk. 1.0 drops only same-set copies.
    near_duplicate_jaccard: float = Field(default=0.8, gt=0, le=1)
    # Most synthetic sequences kept (after the filters, in the generator's order); None keeps all.
    # The bench chooses it, with synthetic_weight, on the validation split.
    max_synthetic: int | None = Field(default=None, ge=0)
    # Point-in-time cut: when set, real events at or after this instant (UTC) are dropped before
    # anything else, so no sequence, split or item feature uses them. The temporal protocol
    # trains on the data before its cutoff this way.
    cutoff: datetime | None = None

    @field_validator("cutoff")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"cutoff={value.isoformat()} must carry a timezone (e.g. +00:00)")
        return value
