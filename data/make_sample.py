"""Recreate data/online-retail-sample.parquet from the shared by-day Online Retail CSVs.

The sample is RAW: the eight original columns exactly as the CSVs spell them (strings; an empty
field is null), dirty rows included, in file (day) order then row order, so that ingest's
cleaning rules have something to do. It takes the longest run of consecutive trading days,
starting at the first, whose zstd-compressed parquet fits in ``--max-mb``.

Usage (from the repository root)::

    python data/make_sample.py [--source ../shared/data/online-retail-uci/by-day] [--max-mb 5]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "online-retail-uci" / "by-day"
DEFAULT_OUT = REPO_ROOT / "data" / "online-retail-sample.parquet"
COLUMNS = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]


def read_day(path: Path) -> pd.DataFrame:
    """One day's rows as raw strings; only an empty field becomes null."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    return frame.loc[:, COLUMNS]


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=19)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-mb", type=float, default=5.0)
    args = parser.parse_args(argv)

    files = sorted(args.source.glob("*.csv"))
    if not files:
        print(f"no CSV files under {args.source}", file=sys.stderr)
        return 1
    days = [read_day(f) for f in files]

    # binary search for the most leading days that fit the size limit
    limit = int(args.max_mb * 1_000_000)
    lo, hi, best = 1, len(days), None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = to_parquet_bytes(pd.concat(days[:mid], ignore_index=True))
        if len(data) <= limit:
            lo, best = mid + 1, (mid, data)
        else:
            hi = mid - 1
    if best is None:
        print(f"even one day does not fit in {args.max_mb} MB", file=sys.stderr)
        return 1
    n_days, data = best
    args.out.write_bytes(data)
    sample = pd.concat(days[:n_days], ignore_index=True)
    n_customers, n_codes = sample["CustomerID"].nunique(), sample["StockCode"].nunique()
    print(
        f"wrote {args.out} ({len(data) / 1e6:.2f} MB): {n_days} days "
        f"{files[0].stem} .. {files[n_days - 1].stem}, {len(sample)} rows, "
        f"{n_customers} customer ids, {n_codes} stock codes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
