"""Settings of the ingest step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from components.common.strict import StrictModel
from components.ingest.loaders import UNKNOWN_COUNTRY


class IngestConfig(StrictModel):
    """Which shop log to read and how to clean it.

    ``dataset`` picks the reader: ``online_retail`` reads the bundled parquet sample or a folder
    of by-day CSV files; ``diginetica`` and ``amazon_beauty`` read those public datasets.
    """

    dataset: Literal["online_retail", "diginetica", "amazon_beauty"] = "online_retail"
    # Customers with fewer distinct items than this are dropped: they carry no sequence signal.
    min_items_per_customer: int = Field(default=2, ge=1)
    # Items bought by fewer customers than this are dropped from the catalogue and the sequences.
    min_customers_per_item: int = Field(default=1, ge=1)
    # Number of price bands (quantiles of the median unit price) used as an item feature.
    price_bands: int = Field(default=5, ge=1, le=20)
    # Keep only the first N calendar days (UTC) from the earliest event, before any other rule:
    # a small, contiguous slice for fast tests. None keeps everything. Rows outside the window
    # are reported under the rule "outside_max_days".
    max_days: int | None = Field(default=None, ge=1)
    # The operator's public list of markets: the only countries any model's vocabulary holds
    # (cleaned/countries.json, source "config"); a customer elsewhere gets the unknown country.
    # None uses the observed countries (source "data"), which reveals which countries have
    # customers: ingest warns and the DP audit's country_vocabulary_public check fails.
    countries: list[str] | None = None

    @field_validator("countries")
    @classmethod
    def _public_countries(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [c for c in value if not c.strip() or c != c.strip() or c == UNKNOWN_COUNTRY]
        if bad:
            raise ValueError(
                f"ingest.countries has {bad[:3]!r}: each entry must be a non-empty name without "
                f"surrounding spaces and not {UNKNOWN_COUNTRY!r} (the unknown country is implied)"
            )
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"ingest.countries repeats {repeated[:3]!r}: list each country once")
        return value
