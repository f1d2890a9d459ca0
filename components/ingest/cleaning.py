"""Cleaning rules for the UCI Online Retail log.

The raw rows (strings, see :func:`components.ingest.loaders.read_online_retail`) go through:

1. :func:`parse_online_retail`: checks and types every field. A value that cannot be read
   (a non-numeric Quantity, an unparsable date) is malformed input, not dirty data, so it raises
   :class:`InputError` naming the file, column and row instead of dropping the row.
   It also normalises without dropping: float-formatted ids ("17850.0" -> "17850"), upper-case
   stock codes ("85123a" -> "85123A", the same product in this shop), whitespace in descriptions,
   and UK local time -> UTC.
2. The drop rules of :data:`RULES`, in that fixed order. Each is a function from the typed frame
   to a boolean mask of the rows it drops; :func:`apply_rules` records how many rows each one
   removed (a row is counted by the first rule that drops it).
3. :func:`filter_min_support`: the minimum-support filters on customers and items.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from components.common.errors import InputError
from components.ingest.loaders import FILE_COL, ORDER_COL, RAW_COLUMNS, ROW_COL, UNKNOWN_COUNTRY

logger = logging.getLogger(__name__)

SHOP_TIMEZONE = "Europe/London"
# The by-day export writes ISO times; the original UCI workbook writes "12/1/2010 8:26".
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")

# Stock codes that are fees, postage, discounts, vouchers or manual adjustments, not products.
# Found in the data: POST/DOT (postage), C2 (carriage), M (manual), S (samples), D (discount),
# B (adjust bad debt), AMAZONFEE, BANK CHARGES, CRUK (commission), PADS (a 0.001 price
# adjustment); the full UCI file adds ADJUST*, TEST* and the gift voucher codes gift_0001_*.
NON_PRODUCT_CODES = frozenset(
    {
        "POST",
        "DOT",
        "M",
        "C2",
        "S",
        "D",
        "B",
        "AMAZONFEE",
        "BANK CHARGES",
        "CRUK",
        "PADS",
        "ADJUST",
        "ADJUST2",
        "CARRIAGE",
    }
)
NON_PRODUCT_PREFIXES = ("GIFT_0001_", "TEST")

_FLOAT_ID = re.compile(r"^([+-]?\d+)\.0*$")
_SPACES = re.compile(r"\s+")


def _map_unique(values: pd.Series, fn: Callable[[str | None], str | None]) -> pd.Series:
    """Apply ``fn`` once per distinct value (ids and descriptions repeat a lot); NaN is None."""
    values = values.astype(object).where(values.notna(), None)
    mapping = {value: fn(value) for value in pd.unique(values)}
    return values.map(mapping).astype(object)


def _normalise_one_id(value: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return _FLOAT_ID.sub(r"\1", text) if text else None


def normalise_id(values: pd.Series) -> pd.Series:
    """Strip ids and drop a float export's ``.0`` ("17850.0" -> "17850"); blanks become None."""
    return _map_unique(values, _normalise_one_id)


def _clean_one_text(value: str | None) -> str | None:
    if value is None:
        return None
    text = _SPACES.sub(" ", str(value)).strip()
    return text or None


def clean_text(values: pd.Series) -> pd.Series:
    """Collapse runs of whitespace to one space and strip; empty text becomes None.

    Case and non-ASCII characters ("£") are kept: they are part of the product text.
    """
    return _map_unique(values, _clean_one_text)


def _fail(raw: pd.DataFrame, mask: pd.Series, column: str, allowed: str) -> None:
    """Raise for the first row in ``mask``, naming its file, column, row and value."""
    pos = int(np.flatnonzero(mask.to_numpy())[0])
    row = raw.iloc[pos]
    raise InputError(
        f"value {row[column]!r} is not {allowed}",
        file=str(row[FILE_COL]),
        column=column,
        row=int(row[ROW_COL]),
    )


def parse_timestamps(text: pd.Series) -> pd.Series:
    """Parse shop-local (UK) wall-clock times and convert them to UTC.

    Unparsable values become NaT (the caller reports them). Times in the autumn hour that occurs
    twice are read as British Summer Time (the first occurrence) and times in the spring hour
    that does not exist are moved forward; the shop's trading hours never fall there.
    """
    stripped = text.astype(object).map(lambda v: None if v is None else str(v).strip())
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    for fmt in DATE_FORMATS:
        todo = parsed.isna() & stripped.notna()
        if not todo.any():
            break
        parsed[todo] = pd.to_datetime(stripped[todo], format=fmt, errors="coerce")
    local = parsed.dt.tz_localize(
        SHOP_TIMEZONE,
        ambiguous=np.ones(len(parsed), dtype=bool),
        nonexistent="shift_forward",
    )
    return local.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def parse_online_retail(raw: pd.DataFrame) -> pd.DataFrame:
    """Check and type the raw Online Retail rows.

    Args:
        raw: the frame from :func:`components.ingest.loaders.read_online_retail`.

    Returns:
        The raw columns, plus typed and normalised ones: ``customer_id``, ``item_id``,
        ``invoice_id``, ``ts`` (UTC), ``quantity`` int64, ``unit_price`` float64, ``country``,
        ``description`` (whitespace-cleaned, None when missing).

    Raises:
        InputError: a Quantity that is not an integer, a UnitPrice that is not a number, an
            InvoiceDate that is not a date, or an empty InvoiceNo/StockCode.
    """
    frame = raw.copy()

    qty_text = raw["Quantity"].astype(object).map(lambda v: None if v is None else str(v).strip())
    qty_ok = qty_text.notna() & qty_text.fillna("").str.fullmatch(r"[+-]?\d+(\.0*)?")
    if not qty_ok.all():
        _fail(raw, ~qty_ok, "Quantity", "an integer")
    frame["quantity"] = qty_text.str.replace(r"\.0*$", "", regex=True).astype(np.int64)

    price = pd.to_numeric(raw["UnitPrice"].astype(object), errors="coerce").astype(np.float64)
    price_ok = price.notna() & np.isfinite(price)
    if not price_ok.all():
        _fail(raw, ~price_ok, "UnitPrice", "a finite number")
    frame["unit_price"] = price

    ts = parse_timestamps(raw["InvoiceDate"])
    if ts.isna().any():
        _fail(raw, ts.isna(), "InvoiceDate", f"a date in one of the formats {list(DATE_FORMATS)}")
    frame["ts"] = ts

    frame["invoice_id"] = normalise_id(raw["InvoiceNo"])
    if frame["invoice_id"].isna().any():
        _fail(raw, frame["invoice_id"].isna(), "InvoiceNo", "a non-empty invoice number")
    stock = normalise_id(raw["StockCode"])
    if stock.isna().any():
        _fail(raw, stock.isna(), "StockCode", "a non-empty stock code")
    frame["item_id"] = stock.str.upper()
    frame["customer_id"] = normalise_id(raw["CustomerID"])
    frame["description"] = clean_text(raw["Description"])
    country = clean_text(raw["Country"])
    frame["country"] = country.where(country.notna(), UNKNOWN_COUNTRY)
    return frame


# ---- drop rules: each returns the mask of rows it drops ---------------------------------------


def missing_customer_id(frame: pd.DataFrame) -> pd.Series:
    """Guest checkouts: no CustomerID, so the row cannot join a customer's sequence."""
    return frame["customer_id"].isna()


def cancellation(frame: pd.DataFrame) -> pd.Series:
    """Cancelled invoices: InvoiceNo starts with "C"."""
    return frame["invoice_id"].str.upper().str.startswith("C")


def non_positive_quantity(frame: pd.DataFrame) -> pd.Series:
    """Returns and stock corrections: Quantity <= 0."""
    return frame["quantity"] <= 0


def non_positive_price(frame: pd.DataFrame) -> pd.Series:
    """Free samples, write-offs and bad-debt adjustments: UnitPrice <= 0."""
    return frame["unit_price"] <= 0


def duplicate_row(frame: pd.DataFrame) -> pd.Series:
    """Exact repeats of an earlier row (all eight raw fields equal); the first one is kept."""
    return frame.duplicated(subset=list(RAW_COLUMNS), keep="first")


def non_product_code(frame: pd.DataFrame) -> pd.Series:
    """Postage, fees, discounts, vouchers and manual adjustments (see NON_PRODUCT_CODES)."""
    codes = frame["item_id"].str.upper()
    mask = codes.isin(NON_PRODUCT_CODES)
    for prefix in NON_PRODUCT_PREFIXES:
        mask |= codes.str.startswith(prefix)
    return mask


def missing_description(frame: pd.DataFrame) -> pd.Series:
    """No product text: these are stock adjustments, and every item needs a description."""
    return frame["description"].isna()


Rule = Callable[[pd.DataFrame], pd.Series]
# The fixed order; a row dropped by an earlier rule is not counted again by a later one.
RULES: tuple[tuple[str, Rule], ...] = (
    ("missing_customer_id", missing_customer_id),
    ("cancellation", cancellation),
    ("non_positive_quantity", non_positive_quantity),
    ("non_positive_price", non_positive_price),
    ("duplicate_row", duplicate_row),
    ("non_product_code", non_product_code),
    ("missing_description", missing_description),
)
WINDOW_RULE = "outside_max_days"
MIN_ITEMS_RULE = "min_items_per_customer"
MIN_CUSTOMERS_RULE = "min_customers_per_item"


def outside_max_days(ts: pd.Series, max_days: int | None) -> pd.Series:
    """Rows after the first ``max_days`` UTC calendar days from the earliest one (None: none)."""
    if max_days is None or ts.empty:
        return pd.Series(False, index=ts.index)
    days = ts.dt.tz_convert("UTC").dt.floor("D")
    return days >= days.min() + pd.Timedelta(days=max_days)


def apply_rules(
    frame: pd.DataFrame, rules: tuple[tuple[str, Rule], ...] = RULES
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply drop rules in order.

    Returns:
        The kept rows (original order) and ``{rule name: rows it dropped}``.
    """
    dropped: dict[str, int] = {}
    for name, rule in rules:
        mask = rule(frame).fillna(False).astype(bool)
        dropped[name] = int(mask.sum())
        frame = frame.loc[~mask]
        logger.info("rule %s dropped %d rows, %d left", name, dropped[name], len(frame))
    return frame, dropped


def filter_min_support(
    events: pd.DataFrame, *, min_items_per_customer: int, min_customers_per_item: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop rare items and short customers until both minimums hold.

    Items bought by fewer than ``min_customers_per_item`` distinct customers go first, then
    customers with fewer than ``min_items_per_customer`` distinct items; dropping one can break
    the other, so this repeats until nothing changes. Every kept customer and item meets both.

    Returns:
        The kept events and the rows each filter dropped, summed over the rounds.
    """
    dropped = {MIN_CUSTOMERS_RULE: 0, MIN_ITEMS_RULE: 0}
    while True:
        pairs = events.drop_duplicates(["customer_id", "item_id"])
        per_item = pairs.groupby("item_id").size()
        rare = events["item_id"].map(per_item) < min_customers_per_item
        dropped[MIN_CUSTOMERS_RULE] += int(rare.sum())
        events = events.loc[~rare]

        pairs = events.drop_duplicates(["customer_id", "item_id"])
        per_customer = pairs.groupby("customer_id").size()
        short = events["customer_id"].map(per_customer) < min_items_per_customer
        dropped[MIN_ITEMS_RULE] += int(short.sum())
        events = events.loc[~short]
        if not rare.any() and not short.any():
            return events, dropped


def canonical_descriptions(events: pd.DataFrame) -> pd.Series:
    """Pick one description per item: the most frequent cleaned one among its kept rows.

    Ties go to the description seen first in source order, so the choice is reproducible.

    Returns:
        A series indexed by item_id.
    """
    counts = (
        events.groupby(["item_id", "description"], sort=False)
        .agg(n=(ORDER_COL, "size"), first=(ORDER_COL, "min"))
        .reset_index()
        .sort_values(["item_id", "n", "first"], ascending=[True, False, True], kind="stable")
    )
    return counts.drop_duplicates("item_id").set_index("item_id")["description"]
