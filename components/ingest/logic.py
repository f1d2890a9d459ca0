"""The ingest step: read a shop log, clean it, and write the ``cleaned/`` artifacts.

``run`` reads the source named by the config's dataset, applies the cleaning rules (Online Retail
only; the other datasets are clean), the minimum-support filters, and writes events, items,
customers, sequences, the public country list (``countries.json``, see
:mod:`components.ingest.countries`) and the cleaning report through ``atomic_dir``, so a
failure at any point leaves no ``out_dir`` behind.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.common import artifacts
from components.common.artifacts import StepTimer, atomic_dir, write_json
from components.common.errors import InputError
from components.ingest import cleaning, loaders
from components.ingest import countries as public_countries
from components.ingest.config import IngestConfig

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_SAMPLE = REPO_ROOT / "data" / "online-retail-sample.parquet"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# Explicit, so list elements keep nanosecond UTC timestamps like every other ts column.
SEQUENCES_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("country", pa.string()),
        ("items", pa.list_(pa.string())),
        ("ts", pa.list_(pa.timestamp("ns", tz="UTC"))),
    ]
)
SHARED_SOURCES = {
    "online_retail": SHARED_DATA / "online-retail-uci" / "by-day",
    "diginetica": SHARED_DATA / "diginetica-sample",
    "amazon_beauty": SHARED_DATA / "amazon-beauty-sports-s3rec",
}


def resolve_source(dataset: str, source: str) -> Path:
    """Map ``source`` ("bundled", "shared" or a path) to the file or folder to read.

    Raises:
        InputError: "bundled" for a dataset other than online_retail (only that one may be
            redistributed), or a path that does not exist.
    """
    if source == "bundled":
        if dataset != "online_retail":
            raise InputError(
                f"source 'bundled' exists only for dataset online_retail, not {dataset!r}; "
                "pass 'shared' or a path"
            )
        path = BUNDLED_SAMPLE
    elif source == "shared":
        path = SHARED_SOURCES[dataset]
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"source for dataset {dataset!r} does not exist", file=str(path))
    return path


def _describe_source(path: Path) -> str:
    """The source as recorded in the report: relative to the repo when it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path.resolve())


def load_events(cfg: IngestConfig, path: Path) -> tuple[pd.DataFrame, int, dict[str, int]]:
    """Read and clean one dataset into standard events (before the minimum-support filters).

    Returns:
        (events with loaders.STANDARD_COLUMNS and any of loaders.OPTIONAL_COLUMNS the loader
        gives, rows read, rows dropped per cleaning rule).
    """
    if cfg.dataset == "online_retail":
        raw = loaders.read_online_retail(path)
        typed = cleaning.parse_online_retail(raw)
        rows_read = len(raw)
    elif cfg.dataset == "diginetica":
        typed = loaders.load_diginetica(path)
        rows_read = len(typed)
    else:
        typed = loaders.load_amazon_beauty(path)
        rows_read = len(typed)

    # the optional window comes first, so every later count is within the slice
    outside = cleaning.outside_max_days(typed["ts"], cfg.max_days)
    dropped = {cleaning.WINDOW_RULE: int(outside.sum())}
    typed = typed.loc[~outside]

    if cfg.dataset == "online_retail":
        kept, counts = cleaning.apply_rules(typed)
    else:
        # These datasets are clean; the one rule that can still apply is an exact repeat.
        dup = typed.duplicated(subset=["customer_id", "item_id", "invoice_id", "ts"])
        kept, counts = typed.loc[~dup], {"duplicate_row": int(dup.sum())}
    dropped.update(counts)
    optional = [c for c in loaders.OPTIONAL_COLUMNS if c in kept.columns]
    return kept.loc[:, [*loaders.STANDARD_COLUMNS, *optional]], rows_read, dropped


def build_items(events: pd.DataFrame, price_bands: int) -> pd.DataFrame:
    """One row per item: canonical description, median price, price band, events, first seen.

    After those, ``category``: the item's product category where the loader gives one (Amazon
    Beauty), else null (Online Retail, Diginetica).

    The band is the item's quantile of median unit price among all items: with ``n`` items and
    ``r`` the rank (ties share the lowest rank, 1-based), band = floor((r - 1) * bands / n).
    """
    grouped = events.groupby("item_id", sort=True)
    items = pd.DataFrame(
        {
            "unit_price": grouped["unit_price"].median().astype(np.float64),
            "n_events": grouped.size().astype(np.int64),
            "first_seen": grouped["ts"].min(),
        }
    )
    items["description"] = cleaning.canonical_descriptions(events).reindex(items.index)
    rank = items["unit_price"].rank(method="min").to_numpy()
    band = np.floor((rank - 1) * price_bands / max(len(items), 1)).astype(np.int64)
    items["price_band"] = np.clip(band, 0, price_bands - 1)
    if loaders.CATEGORY_COL in events.columns:
        category = grouped[loaders.CATEGORY_COL].first()  # one value per item in the source
    else:
        category = pd.Series(None, index=items.index, dtype=object)
    # The string dtype keeps the parquet column typed string even when every value is null.
    items[loaders.CATEGORY_COL] = category.astype("string")
    items = items.reset_index()
    return items.loc[:, [*artifacts.ITEM_COLUMNS, loaders.CATEGORY_COL]]


def build_customers(events: pd.DataFrame) -> pd.DataFrame:
    """One row per customer: most frequent country (ties: the earliest), events, first/last ts."""
    country = (
        events.groupby(["customer_id", "country"], sort=False)
        .agg(n=(loaders.ORDER_COL, "size"), first=(loaders.ORDER_COL, "min"))
        .reset_index()
        .sort_values(["customer_id", "n", "first"], ascending=[True, False, True], kind="stable")
        .drop_duplicates("customer_id")
        .set_index("customer_id")["country"]
    )
    grouped = events.groupby("customer_id", sort=True)
    customers = pd.DataFrame(
        {
            "n_events": grouped.size().astype(np.int64),
            "first_ts": grouped["ts"].min(),
            "last_ts": grouped["ts"].max(),
        }
    )
    customers["country"] = country.reindex(customers.index)
    customers = customers.reset_index()
    return customers.loc[:, list(artifacts.CUSTOMER_COLUMNS)]


def build_sequences(events: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    """One row per customer: distinct items in order of first purchase and the time of each.

    ``events`` must be in (ts, source order) order, so that items bought in one invoice (one
    timestamp) keep the order of their rows in the source.
    """
    first = events.drop_duplicates(["customer_id", "item_id"], keep="first")
    grouped = first.groupby("customer_id", sort=True)
    sequences = pd.DataFrame(
        {
            "items": grouped["item_id"].agg(list),
            "ts": grouped["ts"].agg(list),
        }
    )
    sequences["country"] = customers.set_index("customer_id")["country"].reindex(sequences.index)
    sequences = sequences.reset_index()
    return sequences.loc[:, list(artifacts.SEQUENCE_COLUMNS)]


def dataset_sha256(events: pd.DataFrame) -> str:
    """Hash the cleaned events' content, independently of how parquet encodes them.

    Each row becomes its fields in :data:`artifacts.EVENT_COLUMNS` order, joined by the unit
    separator (0x1F): strings as UTF-8, ts as integer nanoseconds since the epoch (UTC), quantity
    as a decimal integer and unit_price by ``repr`` (the shortest round-tripping decimal). Rows
    are joined by newlines, in the order of ``events``, after a header of the column names.
    """
    columns = list(artifacts.EVENT_COLUMNS)
    parts = []
    for col in columns:
        values = events[col]
        if col == "ts":
            text = pd.Series(values.astype("int64").astype(str).to_numpy())
        elif col == "unit_price":
            text = pd.Series([repr(float(v)) for v in values.to_numpy()])
        else:
            text = pd.Series(values.astype(str).to_numpy())
        parts.append(text)
    rows = parts[0].str.cat(parts[1:], sep="\x1f") if len(events) else pd.Series([], dtype=str)
    digest = hashlib.sha256("\x1f".join(columns).encode("utf-8"))
    for row in rows:
        digest.update(b"\n")
        digest.update(row.encode("utf-8"))
    return digest.hexdigest()


def _typed_events(events: pd.DataFrame) -> pd.DataFrame:
    """The events artifact: contract columns and dtypes, in (ts, source order) order."""
    events = events.sort_values(["ts", loaders.ORDER_COL], kind="stable")
    out = pd.DataFrame(
        {
            "customer_id": events["customer_id"].astype(str).to_numpy(),
            "item_id": events["item_id"].astype(str).to_numpy(),
            "invoice_id": events["invoice_id"].astype(str).to_numpy(),
            "ts": events["ts"].astype("datetime64[ns, UTC]").to_numpy(),
            "quantity": events["quantity"].astype(np.int64).to_numpy(),
            "unit_price": events["unit_price"].astype(np.float64).to_numpy(),
            "country": events["country"].astype(str).to_numpy(),
        }
    )
    out["ts"] = pd.to_datetime(out["ts"], utc=True).astype("datetime64[ns, UTC]")
    return out


def run(cfg: IngestConfig, source: str, out_dir: Path) -> dict[str, Any]:
    """Read, clean and write one shop log as the ``cleaned/`` artifacts.

    Args:
        cfg: the ingest section of the run config.
        source: "bundled" (the Online Retail sample in data/), "shared" (the dataset's default
            folder under ../shared/data) or a path: for online_retail a folder of by-day CSVs, a
            CSV or a parquet; for diginetica the sample CSV or its folder; for amazon_beauty
            Beauty.txt or the folder holding it and Beauty_item2attributes.json.
        out_dir: the ``cleaned/`` directory to write; replaced only when the step succeeds.

    Returns:
        The cleaning report (also written as cleaning_report.json, and in step.json).

    Raises:
        InputError: malformed input, naming the file, column and row; or nothing left after
            cleaning. Nothing is written then.
    """
    timer = StepTimer("ingest")
    path = resolve_source(cfg.dataset, source)
    logger.info("ingest dataset=%s source=%s", cfg.dataset, path)

    # read and clean, then enforce minimum support on what is left
    staged, rows_read, dropped = load_events(cfg, path)
    staged, support = cleaning.filter_min_support(
        staged,
        min_items_per_customer=cfg.min_items_per_customer,
        min_customers_per_item=cfg.min_customers_per_item,
    )
    dropped.update(support)
    if staged.empty:
        raise InputError(
            f"no events left after cleaning {rows_read} rows (dropped per rule: {dropped})",
            file=str(path),
        )

    # the staged frame keeps the description and source order for the item and sequence builds
    staged = staged.sort_values(["ts", loaders.ORDER_COL], kind="stable")
    events = _typed_events(staged)
    items = build_items(staged, cfg.price_bands)
    customers = build_customers(staged)
    # The public country vocabulary: customers outside it become the unknown country in
    # customers and sequences (what every later step reads). events.parquet keeps the country as
    # logged, so the dataset's content hash (the privacy ledger's key) does not depend on the list.
    vocab = public_countries.public_list(cfg.countries, customers["country"])
    mapped = public_countries.to_public(customers["country"], vocab["countries"])
    n_outside = int((mapped != customers["country"]).sum())
    customers["country"] = mapped
    sequences = build_sequences(staged, customers)

    report = {
        "source": _describe_source(path),
        "dataset": cfg.dataset,
        "rules": list(dropped),
        "rows_read": int(rows_read),
        "rows_kept": len(events),
        "dropped": dropped,
        "dataset_sha256": dataset_sha256(events),
        "n_customers": len(customers),
        "n_items": len(items),
        "n_events": len(events),
        "countries_source": vocab["source"],
        "n_countries": len(vocab["countries"]),
    }
    if report["rows_read"] != report["rows_kept"] + sum(dropped.values()):
        raise RuntimeError(f"cleaning counts do not add up: {report}")

    with atomic_dir(out_dir) as tmp:
        events.to_parquet(tmp / artifacts.EVENTS, index=False)
        items.to_parquet(tmp / artifacts.ITEMS, index=False)
        customers.to_parquet(tmp / artifacts.CUSTOMERS, index=False)
        table = pa.Table.from_pandas(sequences, schema=SEQUENCES_SCHEMA, preserve_index=False)
        pq.write_table(table, tmp / artifacts.SEQUENCES)
        write_json(tmp / public_countries.COUNTRIES_FILE, vocab)
        write_json(tmp / artifacts.CLEANING_REPORT, report)
        timer.write(tmp, report)
    logger.info(
        "ingest kept %d of %d rows: %d customers, %d items; %d public countries (source %s), "
        "%d customers mapped to the unknown country",
        report["rows_kept"],
        rows_read,
        report["n_customers"],
        report["n_items"],
        report["n_countries"],
        vocab["source"],
        n_outside,
    )
    return report
