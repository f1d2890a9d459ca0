"""Readers for the shop logs that ingest understands.

Every reader names the file, the column and the 1-based data row (the header is not counted)
when its input is malformed, by raising :class:`components.common.errors.InputError`.

- Online Retail (UCI): :func:`read_online_retail` returns the raw rows as strings, untouched, so
  that the cleaning rules in :mod:`components.ingest.cleaning` see the dirty data.
- Diginetica and Amazon Beauty are clean already; :func:`load_diginetica` and
  :func:`load_amazon_beauty` return events in the standard shape (:data:`STANDARD_COLUMNS`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.errors import InputError

logger = logging.getLogger(__name__)

# The eight columns of the UCI Online Retail export, in file order.
RAW_COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
# Where each raw row came from, so that errors and tie-breaks can point at it.
FILE_COL = "_file"
ROW_COL = "_row"  # 1-based data row within its file
ORDER_COL = "_order"  # global source order, 0-based

# What every loader hands to the shared artifact builder: one row per event plus its text.
STANDARD_COLUMNS = (
    "customer_id",
    "item_id",
    "invoice_id",
    "ts",
    "quantity",
    "unit_price",
    "country",
    "description",
    ORDER_COL,
)
# Columns a loader may add after STANDARD_COLUMNS: the item's product category (Amazon Beauty).
CATEGORY_COL = "category"
OPTIONAL_COLUMNS = (CATEGORY_COL,)

UNKNOWN_COUNTRY = "unknown"
# Amazon Beauty has no timestamps; synthetic ones start here and step by this much per event.
BEAUTY_EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
BEAUTY_STEP = pd.Timedelta(hours=1)

DIGINETICA_COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
DIGINETICA_FILE = "sample_train-item-views.csv"
BEAUTY_FILE = "Beauty.txt"
BEAUTY_ATTRIBUTES = "Beauty_item2attributes.json"


def _read_csv_strings(path: Path, columns: tuple[str, ...], sep: str = ",") -> pd.DataFrame:
    """Read a CSV with a real parser (quoted commas survive), every field as a string.

    Only an empty field is missing (None); "NA" and the like stay text, because a product could
    be called that. Columns beyond ``columns`` are ignored.
    """
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
        )
    except pd.errors.EmptyDataError as exc:
        raise InputError("file is empty: expected a header and data rows", file=str(path)) from exc
    except pd.errors.ParserError as exc:
        raise InputError(f"file is not valid CSV: {exc}", file=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"file is not UTF-8 text: {exc.reason}", file=str(path)) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"missing column {missing[0]!r}; expected {list(columns)}, found {list(frame.columns)}",
            file=str(path),
            column=missing[0],
        )
    if frame.empty:
        raise InputError("file has a header but no data rows", file=str(path))
    frame = frame.loc[:, list(columns)]
    return frame.astype(object).where(frame.notna(), None)


def _as_raw_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn a parquet frame with natural types back into the raw string form of the CSV."""
    out = pd.DataFrame(index=frame.index)
    for col in RAW_COLUMNS:
        values = frame[col]
        if pd.api.types.is_datetime64_any_dtype(values):
            text = values.dt.strftime("%Y-%m-%d %H:%M:%S")
        elif pd.api.types.is_string_dtype(values) or values.dtype == object:
            text = values
        else:
            text = values.astype(str)
        out[col] = text.astype(object).where(values.notna(), None)
    return out


def read_online_retail(path: Path) -> pd.DataFrame:
    """Read Online Retail rows from a folder of by-day CSVs, one CSV, or a parquet file.

    Args:
        path: a folder (every ``*.csv`` in it, in name order, i.e. by day), a ``.csv`` file or a
            ``.parquet`` file with the eight original columns.

    Returns:
        The raw rows: the eight columns of :data:`RAW_COLUMNS` as strings (None where empty), plus
        ``_file``, ``_row`` (1-based data row within the file) and ``_order`` (source order).

    Raises:
        InputError: the path does not exist, a file is empty or lacks a column.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise InputError("folder holds no .csv files", file=str(path))
    elif path.is_file():
        files = [path]
    else:
        raise InputError("input path does not exist", file=str(path))

    parts = []
    for file in files:
        if file.suffix.lower() == ".parquet":
            try:
                table = pd.read_parquet(file)
            except Exception as exc:  # pyarrow raises several types for a broken file
                raise InputError(f"cannot read parquet: {exc}", file=str(file)) from exc
            missing = [c for c in RAW_COLUMNS if c not in table.columns]
            if missing:
                raise InputError(
                    f"missing column {missing[0]!r}; expected {list(RAW_COLUMNS)}",
                    file=str(file),
                    column=missing[0],
                )
            if table.empty:
                raise InputError("file has no data rows", file=str(file))
            frame = _as_raw_strings(table.reset_index(drop=True))
        else:
            frame = _read_csv_strings(file, RAW_COLUMNS)
        frame[FILE_COL] = str(file)
        frame[ROW_COL] = np.arange(1, len(frame) + 1, dtype=np.int64)
        parts.append(frame)
    raw = pd.concat(parts, ignore_index=True)
    raw[ORDER_COL] = np.arange(len(raw), dtype=np.int64)
    logger.info("read %d online retail rows from %d file(s) under %s", len(raw), len(files), path)
    return raw


def _int_column(frame: pd.DataFrame, column: str, file: Path) -> pd.Series:
    """Parse a column of integer text, naming the first row that is not an integer."""
    text = frame[column].astype(object)
    ok = text.notna() & text.astype(str).str.strip().str.fullmatch(r"[+-]?\d+")
    if not ok.all():
        pos = int(np.flatnonzero(~ok.to_numpy())[0])
        raise InputError(
            f"value {text.iloc[pos]!r} is not an integer",
            file=str(file),
            column=column,
            row=pos + 1,
        )
    return text.astype(str).str.strip().astype(np.int64)


def _resolve_file(path: Path, name: str) -> Path:
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise InputError(f"input file does not exist (expected {name})", file=str(path))
    return path


def coarse_categories(attributes: dict[str, list[int]]) -> dict[str, str]:
    """One category per item: its attribute shared by the most items (ties: the smallest id).

    S3-Rec's attribute ids mix categories and brands at every level, without names. The
    attribute held by the most items is the coarsest grouping an item belongs to (on Beauty:
    7 groups, the largest of 3,814 items out of 12,101), which is what a session-level
    condition needs: few values, each with enough sessions to learn from. The name is the
    attribute id as text (``"17"``). Items with an empty attribute list have no category.
    """
    counts: dict[int, int] = {}
    for attrs in attributes.values():
        for attr in set(attrs):
            counts[attr] = counts.get(attr, 0) + 1
    return {
        item: str(min(attrs, key=lambda a: (-counts[a], a)))
        for item, attrs in attributes.items()
        if attrs
    }


def _check_attributes(raw: object, file: Path) -> dict[str, list[int]]:
    """``{item_id: [attribute_id, ...]}`` or an InputError naming the first bad entry."""
    if not isinstance(raw, dict):
        raise InputError(
            f"attributes must be an object of item id -> list of ids, got {type(raw).__name__}",
            file=str(file),
        )
    for item, attrs in raw.items():
        if not isinstance(attrs, list) or not all(
            isinstance(a, int) and not isinstance(a, bool) for a in attrs
        ):
            raise InputError(
                f"attributes of item {item!r} must be a list of integer ids, got {attrs!r}",
                file=str(file),
                column="attributes",
            )
    return raw


def load_diginetica(path: Path) -> pd.DataFrame:
    """Read the DIGINETICA item-view sample as standard events.

    The session is the unit there (most views are anonymous), so ``customer_id`` is
    ``"s<session_id>"`` and so is ``invoice_id``. ``ts`` is the event date at UTC midnight plus
    ``timeframe`` milliseconds. Rows are sorted by (session_id, timeframe) because the file is not.
    The sample has no item text and no prices: ``description`` is ``"item <id>"``, ``unit_price``
    is 0.0 (one price band) and ``country`` is ``"unknown"``.

    Args:
        path: ``sample_train-item-views.csv`` or the folder holding it.

    Returns:
        A frame with :data:`STANDARD_COLUMNS`.
    """
    file = _resolve_file(Path(path), DIGINETICA_FILE)
    raw = _read_csv_strings(file, DIGINETICA_COLUMNS, sep=";")
    session = _int_column(raw, "session_id", file)
    timeframe = _int_column(raw, "timeframe", file)
    item = raw["item_id"].astype(object)
    bad_item = item.isna() | (item.astype(str).str.strip() == "")
    if bad_item.any():
        pos = int(np.flatnonzero(bad_item.to_numpy())[0])
        raise InputError("item_id is empty", file=str(file), column="item_id", row=pos + 1)
    day = pd.to_datetime(raw["eventdate"], format="%Y-%m-%d", errors="coerce", utc=True)
    if day.isna().any():
        pos = int(np.flatnonzero(day.isna().to_numpy())[0])
        raise InputError(
            f"value {raw['eventdate'].iloc[pos]!r} is not a date YYYY-MM-DD",
            file=str(file),
            column="eventdate",
            row=pos + 1,
        )
    item_id = item.astype(str).str.strip()
    events = pd.DataFrame(
        {
            "customer_id": "s" + session.astype(str),
            "item_id": item_id,
            "invoice_id": "s" + session.astype(str),
            "ts": (day + pd.to_timedelta(timeframe, unit="ms")).astype("datetime64[ns, UTC]"),
            "quantity": np.ones(len(raw), dtype=np.int64),
            "unit_price": np.zeros(len(raw), dtype=np.float64),
            "country": UNKNOWN_COUNTRY,
            "description": "item " + item_id,
            "_session": session,
            "_timeframe": timeframe,
            "_file_row": np.arange(len(raw)),
        }
    )
    events = events.sort_values(["_session", "_timeframe", "_file_row"], kind="stable")
    events[ORDER_COL] = np.arange(len(events), dtype=np.int64)
    logger.info("read %d diginetica views from %s", len(events), file)
    return events.loc[:, list(STANDARD_COLUMNS)].reset_index(drop=True)


def load_amazon_beauty(path: Path) -> pd.DataFrame:
    """Read the S3-Rec Amazon Beauty sequences as standard events.

    The files carry **no timestamps**. This loader synthesises them: the n-th item (0-based) of
    each user's sequence gets ``2000-01-01 00:00 UTC + n hours``, so time is strictly increasing
    per user in the file's (review-time) order but says nothing about real time, and times of
    different users are not comparable. Do not derive time-based features from them.

    ``customer_id`` is the user id, ``invoice_id`` is ``"<user>:<position>"``, ``description`` is
    built from the attribute ids (``"attributes 12 45"``; ``"item <id>"`` when an item has none),
    ``unit_price`` is 0.0 and ``country`` is ``"unknown"``. ``category`` (after the standard
    columns) is :func:`coarse_categories`'s pick, None for an item without attributes.

    Args:
        path: ``Beauty.txt`` or the folder holding it and ``Beauty_item2attributes.json``.

    Returns:
        A frame with :data:`STANDARD_COLUMNS` and ``category``.
    """
    file = _resolve_file(Path(path), BEAUTY_FILE)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"file is not UTF-8 text: {exc.reason}", file=str(file)) from exc
    users, items, positions = [], [], []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        bad = next((pos for pos, f in enumerate(fields) if not f.isdigit()), None)
        if bad is not None:
            raise InputError(
                f"value {fields[bad]!r} is not an integer id",
                file=str(file),
                column="user_id" if bad == 0 else "item_id",
                row=lineno,
            )
        user, seq = fields[0], fields[1:]
        users.extend([user] * len(seq))
        items.extend(seq)
        positions.extend(range(len(seq)))
    if not items:
        raise InputError("file holds no user sequences", file=str(file))

    attributes: dict[str, list[int]] = {}
    attr_file = file.parent / BEAUTY_ATTRIBUTES
    if attr_file.is_file():
        try:
            attributes = _check_attributes(
                json.loads(attr_file.read_text(encoding="utf-8")), attr_file
            )
        except json.JSONDecodeError as exc:
            raise InputError(
                f"attributes are not valid JSON: {exc.msg}", file=str(attr_file), row=exc.lineno
            ) from exc
    else:
        logger.warning("no %s beside %s: descriptions are placeholders", BEAUTY_ATTRIBUTES, file)

    def describe(item_id: str) -> str:
        attrs = attributes.get(item_id)
        if attrs:
            return "attributes " + " ".join(str(a) for a in attrs)
        return f"item {item_id}"

    pos = np.asarray(positions, dtype=np.int64)
    descriptions = {i: describe(i) for i in set(items)}
    category_of = coarse_categories(attributes)
    events = pd.DataFrame(
        {
            "customer_id": users,
            "item_id": items,
            "invoice_id": [f"{u}:{p}" for u, p in zip(users, positions, strict=True)],
            "ts": BEAUTY_EPOCH + pd.to_timedelta(pos * BEAUTY_STEP.value, unit="ns"),
            "quantity": np.ones(len(items), dtype=np.int64),
            "unit_price": np.zeros(len(items), dtype=np.float64),
            "country": UNKNOWN_COUNTRY,
            "description": [descriptions[i] for i in items],
            ORDER_COL: np.arange(len(items), dtype=np.int64),
            CATEGORY_COL: pd.Series([category_of.get(i) for i in items], dtype=object),
        }
    )
    logger.info(
        "read %d amazon beauty interactions from %s (%d categories)",
        len(events),
        file,
        len(set(category_of.values())),
    )
    return events.loc[:, [*STANDARD_COLUMNS, CATEGORY_COL]]
