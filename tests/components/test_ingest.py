"""Tests of the ingest step: cleaning rules, loaders, artifacts and malformed input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common import artifacts
from components.common.errors import InputError
from components.ingest import cleaning, loaders, logic
from components.ingest.config import IngestConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
SHARED = logic.SHARED_DATA

BASE_ROW = {
    "InvoiceNo": "536365",
    "StockCode": "85123A",
    "Description": "WHITE HANGING HEART T-LIGHT HOLDER",
    "Quantity": "6",
    "InvoiceDate": "2010-12-01 08:26:00",
    "UnitPrice": "2.55",
    "CustomerID": "17850.0",
    "Country": "United Kingdom",
}


def raw_frame(*changes: dict[str, str | None]) -> pd.DataFrame:
    """Raw rows as read_online_retail returns them: BASE_ROW with each row's changes."""
    rows = [{**BASE_ROW, **change} for change in changes]
    frame = pd.DataFrame(rows, columns=list(loaders.RAW_COLUMNS)).astype(object)
    frame[loaders.FILE_COL] = "crafted.csv"
    frame[loaders.ROW_COL] = np.arange(1, len(frame) + 1)
    frame[loaders.ORDER_COL] = np.arange(len(frame))
    return frame


def typed(*changes: dict[str, str | None]) -> pd.DataFrame:
    return cleaning.parse_online_retail(raw_frame(*changes))


# ---- one test per drop rule ---------------------------------------------------------------------


def test_missing_customer_id_drops_blank_and_null_ids() -> None:
    frame = typed({}, {"CustomerID": None}, {"CustomerID": "  "}, {"CustomerID": "12583"})
    assert cleaning.missing_customer_id(frame).tolist() == [False, True, True, False]


def test_cancellation_drops_invoices_starting_with_c() -> None:
    frame = typed({}, {"InvoiceNo": "C536379", "Quantity": "-1"}, {"InvoiceNo": "536380"})
    assert cleaning.cancellation(frame).tolist() == [False, True, False]


def test_non_positive_quantity_drops_returns_and_zero() -> None:
    frame = typed({}, {"Quantity": "0"}, {"Quantity": "-12"}, {"Quantity": "1"})
    assert int(cleaning.non_positive_quantity(frame).sum()) == 2


def test_non_positive_price_drops_free_and_negative_prices() -> None:
    frame = typed({}, {"UnitPrice": "0.0"}, {"UnitPrice": "-11062.06"}, {"UnitPrice": "0.001"})
    assert cleaning.non_positive_price(frame).tolist() == [False, True, True, False]


def test_duplicate_row_keeps_the_first_copy_only() -> None:
    frame = typed({}, {}, {}, {"Quantity": "7"}, {"Quantity": "7"})
    assert cleaning.duplicate_row(frame).tolist() == [False, True, True, False, True]


def test_non_product_code_drops_fees_postage_and_vouchers() -> None:
    codes = ["POST", "DOT", "M", "m", "C2", "S", "D", "B", "AMAZONFEE", "BANK CHARGES", "CRUK"]
    codes += ["PADS", "gift_0001_40", "85123A", "22633", "15056bl", "DCGSSBOY"]
    frame = typed(*({"StockCode": c} for c in codes))
    mask = cleaning.non_product_code(frame)
    assert frame.loc[mask, "item_id"].tolist() == [c.upper() for c in codes[:13]]


def test_missing_description_drops_null_and_whitespace_only() -> None:
    frame = typed({}, {"Description": None}, {"Description": "   "}, {"Description": "?"})
    assert cleaning.missing_description(frame).tolist() == [False, True, True, False]


def test_apply_rules_counts_each_row_once_in_order() -> None:
    frame = typed(
        {},  # kept
        {"CustomerID": None, "InvoiceNo": "C1"},  # missing id wins over cancellation
        {"InvoiceNo": "C536379", "Quantity": "-1"},  # cancellation wins over the quantity rule
        {"Quantity": "-3"},
        {"UnitPrice": "0"},
        {},  # duplicate of the first row
        {"StockCode": "POST"},
        {"StockCode": "22633", "Description": None},
        {"StockCode": "22633", "Description": "HAND WARMER UNION JACK"},  # kept
    )
    kept, dropped = cleaning.apply_rules(frame)
    assert dropped == {
        "missing_customer_id": 1,
        "cancellation": 1,
        "non_positive_quantity": 1,
        "non_positive_price": 1,
        "duplicate_row": 1,
        "non_product_code": 1,
        "missing_description": 1,
    }
    assert kept[loaders.ORDER_COL].tolist() == [0, 8]


def _events(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["customer_id", "item_id"])


def test_min_customers_per_item_drops_rare_items() -> None:
    events = _events([("a", "1"), ("a", "2"), ("b", "1"), ("b", "3"), ("b", "3")])
    kept, dropped = cleaning.filter_min_support(
        events, min_items_per_customer=1, min_customers_per_item=2
    )
    assert kept["item_id"].tolist() == ["1", "1"]
    assert dropped == {"min_customers_per_item": 3, "min_items_per_customer": 0}


def test_min_items_per_customer_repeats_until_both_minimums_hold() -> None:
    # dropping the rare item "9" leaves customer "c" with one item, which is then dropped, and
    # with "c" gone item "2" has only one customer left
    events = _events([("a", "1"), ("a", "2"), ("b", "1"), ("b", "3"), ("c", "2"), ("c", "9")])
    events = pd.concat([events, _events([("d", "3"), ("d", "1"), ("e", "2"), ("e", "3")])])
    kept, dropped = cleaning.filter_min_support(
        events, min_items_per_customer=2, min_customers_per_item=2
    )
    assert sorted(kept["customer_id"].unique()) == ["a", "b", "d", "e"]
    assert dropped["min_customers_per_item"] == 1
    assert dropped["min_items_per_customer"] == 1
    assert len(kept) + sum(dropped.values()) == len(events)


# ---- normalisation without dropping -------------------------------------------------------------


def test_canonical_description_is_the_most_frequent_cleaned_text() -> None:
    frame = typed(
        {"StockCode": "1", "Description": "RED  BAG "},
        {"StockCode": "1", "Description": "RED BAG"},
        {"StockCode": "1", "Description": "red bag"},
        {"StockCode": "2", "Description": "BLUE\tCUP"},
        {"StockCode": "2", "Description": "BLUE MUG"},
        {"StockCode": "2", "Description": "BLUE MUG"},
        {"StockCode": "3", "Description": "FIRST"},
        {"StockCode": "3", "Description": "SECOND"},
    )
    descriptions = cleaning.canonical_descriptions(frame)
    assert descriptions.to_dict() == {"1": "RED BAG", "2": "BLUE MUG", "3": "FIRST"}


def test_float_formatted_ids_lose_their_decimal_part() -> None:
    frame = typed(
        {"CustomerID": "17850.0"},
        {"CustomerID": " 12583 "},
        {"CustomerID": "13047.00", "InvoiceNo": "536366.0"},
        {"CustomerID": "17850.5"},  # not an integer in disguise: kept as written
    )
    assert frame["customer_id"].tolist() == ["17850", "12583", "13047", "17850.5"]
    assert frame["invoice_id"].tolist() == ["536365", "536365", "536366", "536365"]


def test_stock_codes_stay_strings_and_are_upper_cased() -> None:
    frame = typed({"StockCode": "85123a"}, {"StockCode": "00123"}, {"StockCode": " 22633 "})
    assert frame["item_id"].tolist() == ["85123A", "00123", "22633"]


def test_non_ascii_text_is_kept() -> None:
    frame = typed({"Description": "Dotcomgiftshop Gift Voucher £40.00", "Country": "Côte"})
    assert frame.loc[0, "description"] == "Dotcomgiftshop Gift Voucher £40.00"
    assert frame.loc[0, "country"] == "Côte"


def test_csv_reader_keeps_quoted_commas_and_utf8() -> None:
    raw = loaders.read_online_retail(FIXTURES / "by_day" / "2010-12-01.csv")
    assert raw["Description"].tolist()[1] == "AIRLINE LOUNGE,METAL SIGN"
    assert raw["Description"].tolist()[3] == "Dotcomgiftshop Gift Voucher £40.00"
    assert raw["CustomerID"].tolist()[5] is None
    assert raw[loaders.ROW_COL].tolist() == [1, 2, 3, 4, 5, 6]


# ---- timestamps ---------------------------------------------------------------------------------


def test_invoice_dates_are_uk_local_time_converted_to_utc() -> None:
    ts = cleaning.parse_timestamps(
        pd.Series(
            [
                "2010-12-01 08:26:00",  # GMT, UTC+0
                "2011-06-01 12:00:00",  # BST, UTC+1
                "6/1/2011 12:00",  # the UCI workbook's format
                "2011-10-30 01:30:00",  # the repeated autumn hour: read as BST
                "2011-03-27 01:30:00",  # the skipped spring hour: moved forward
            ]
        )
    )
    assert str(ts.dtype) == "datetime64[ns, UTC]"
    assert [t.isoformat() for t in ts] == [
        "2010-12-01T08:26:00+00:00",
        "2011-06-01T11:00:00+00:00",
        "2011-06-01T11:00:00+00:00",
        "2011-10-30T00:30:00+00:00",
        "2011-03-27T01:00:00+00:00",
    ]


def test_timestamps_do_not_depend_on_the_machine_timezone() -> None:
    code = (
        "import pandas as pd;"
        "from components.ingest.cleaning import parse_timestamps;"
        "ts = parse_timestamps(pd.Series(['2011-06-01 12:00:00', '2010-12-01 08:26:00']));"
        "print(' '.join(t.isoformat() for t in ts))"
    )
    env = {**os.environ, "TZ": "America/New_York"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["2011-06-01T11:00:00+00:00", "2010-12-01T08:26:00+00:00"]


# ---- run() on crafted and bundled inputs --------------------------------------------------------


def test_run_on_by_day_folder(tmp_path: Path) -> None:
    out = tmp_path / "cleaned"
    report = logic.run(IngestConfig(), str(FIXTURES / "by_day"), out)

    assert report["rows_read"] == 10
    assert report["dropped"]["missing_customer_id"] == 1
    assert report["dropped"]["cancellation"] == 1
    assert report["dropped"]["non_product_code"] == 1
    assert report["rows_kept"] == 7
    sequences = pd.read_parquet(out / artifacts.SEQUENCES).set_index("customer_id")
    assert {k: list(v) for k, v in sequences["items"].items()} == {
        "12583": ["71053", "85123A"],
        "13047": ["22633", "85123A"],  # same invoice: source row order
        "17850": ["85123A", "71053", "22633"],
    }
    assert sequences.loc["13047", "country"] == "France"
    items = pd.read_parquet(out / artifacts.ITEMS).set_index("item_id")
    assert items.loc["22633", "description"] == "HAND WARMER UNION JACK"
    assert items.loc["71053", "description"] == "AIRLINE LOUNGE,METAL SIGN"
    assert items.loc["85123A", "n_events"] == 3
    events = pd.read_parquet(out / artifacts.EVENTS)
    assert events["ts"].iloc[0] == pd.Timestamp("2010-12-01 08:26", tz="UTC")


@pytest.fixture(scope="module")
def bundled_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20,000 raw rows of the bundled sample (about two weeks), as a parquet file."""
    table = pq.read_table(logic.BUNDLED_SAMPLE).slice(0, 20_000)
    path = tmp_path_factory.mktemp("bundled") / "slice.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def cleaned_slice(bundled_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "cleaned"
    logic.run(IngestConfig(price_bands=4), str(bundled_slice), out)
    return out


def test_bundled_sample_is_raw_and_small() -> None:
    assert logic.BUNDLED_SAMPLE.stat().st_size <= 5_000_000
    schema = pq.read_schema(logic.BUNDLED_SAMPLE)
    assert schema.names == list(loaders.RAW_COLUMNS)
    assert all(t == pa.string() for t in schema.types)


def test_run_writes_the_contract_schema(cleaned_slice: Path) -> None:
    ts = pa.timestamp("ns", tz="UTC")
    expected = {
        artifacts.EVENTS: [
            ("customer_id", pa.string()),
            ("item_id", pa.string()),
            ("invoice_id", pa.string()),
            ("ts", ts),
            ("quantity", pa.int64()),
            ("unit_price", pa.float64()),
            ("country", pa.string()),
        ],
        artifacts.ITEMS: [
            ("item_id", pa.string()),
            ("description", pa.string()),
            ("unit_price", pa.float64()),
            ("price_band", pa.int64()),
            ("n_events", pa.int64()),
            ("first_seen", ts),
            ("category", pa.string()),  # nullable: Online Retail has no categories
        ],
        artifacts.CUSTOMERS: [
            ("customer_id", pa.string()),
            ("country", pa.string()),
            ("n_events", pa.int64()),
            ("first_ts", ts),
            ("last_ts", ts),
        ],
        artifacts.SEQUENCES: [
            ("customer_id", pa.string()),
            ("country", pa.string()),
            ("items", pa.list_(pa.string())),
            ("ts", pa.list_(ts)),
        ],
    }
    for name, fields in expected.items():
        schema = pq.read_schema(cleaned_slice / name)
        assert [(f.name, f.type) for f in schema] == fields, name
    step = json.loads((cleaned_slice / artifacts.STEP_RECORD).read_text())
    assert step["step"] == "ingest"


def test_run_report_counts_add_up(cleaned_slice: Path, bundled_slice: Path) -> None:
    report = json.loads((cleaned_slice / artifacts.CLEANING_REPORT).read_text())
    events = pd.read_parquet(cleaned_slice / artifacts.EVENTS)
    items = pd.read_parquet(cleaned_slice / artifacts.ITEMS)
    customers = pd.read_parquet(cleaned_slice / artifacts.CUSTOMERS)
    sequences = pd.read_parquet(cleaned_slice / artifacts.SEQUENCES)

    assert report["rows_read"] == 20_000
    assert report["rows_read"] == report["rows_kept"] + sum(report["dropped"].values())
    assert set(report["dropped"]) == {name for name, _ in cleaning.RULES} | {
        cleaning.WINDOW_RULE,
        cleaning.MIN_ITEMS_RULE,
        cleaning.MIN_CUSTOMERS_RULE,
    }
    assert report["rules"][0] == cleaning.WINDOW_RULE
    assert report["dropped"]["missing_customer_id"] > 0
    assert report["dropped"]["cancellation"] > 0
    assert report["n_events"] == report["rows_kept"] == len(events)
    assert report["n_items"] == len(items) == events["item_id"].nunique()
    assert report["n_customers"] == len(customers) == len(sequences)
    assert customers["n_events"].sum() == items["n_events"].sum() == len(events)
    assert set(items["price_band"]) == {0, 1, 2, 3}
    assert sequences["items"].map(len).min() >= IngestConfig().min_items_per_customer
    assert (sequences["items"].map(len) == sequences["ts"].map(len)).all()
    assert not events["item_id"].isin(["POST", "DOT", "M", "C2"]).any()
    assert not events["customer_id"].str.endswith(".0").any()
    assert not events["invoice_id"].str.startswith("C").any()
    assert (events["quantity"] > 0).all() and (events["unit_price"] > 0).all()
    assert events["ts"].is_monotonic_increasing


def test_max_days_keeps_a_contiguous_slice(bundled_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "cleaned"
    report = logic.run(IngestConfig(max_days=3), str(bundled_slice), out)
    events = pd.read_parquet(out / artifacts.EVENTS)
    assert events["ts"].min() >= pd.Timestamp("2010-12-01", tz="UTC")
    assert events["ts"].max() < pd.Timestamp("2010-12-04", tz="UTC")
    assert report["dropped"][cleaning.WINDOW_RULE] > 0
    assert report["rows_read"] == report["rows_kept"] + sum(report["dropped"].values())


def test_sequences_follow_first_purchase_order(cleaned_slice: Path) -> None:
    events = pd.read_parquet(cleaned_slice / artifacts.EVENTS)
    sequences = pd.read_parquet(cleaned_slice / artifacts.SEQUENCES).set_index("customer_id")
    customer = sequences["items"].map(len).idxmax()
    mine = events[events["customer_id"] == customer].drop_duplicates("item_id")
    assert list(sequences.loc[customer, "items"]) == mine["item_id"].tolist()
    first_ts = pd.to_datetime(pd.Series(sequences.loc[customer, "ts"]), utc=True)
    assert first_ts.tolist() == mine["ts"].tolist()


def test_dataset_hash_ignores_parquet_encoding(cleaned_slice: Path, tmp_path: Path) -> None:
    report = json.loads((cleaned_slice / artifacts.CLEANING_REPORT).read_text())
    table = pq.read_table(cleaned_slice / artifacts.EVENTS)
    pq.write_table(table, tmp_path / "e.parquet", compression="gzip", use_dictionary=False)
    again = pd.read_parquet(tmp_path / "e.parquet")
    assert logic.dataset_sha256(again) == report["dataset_sha256"]
    changed = again.copy()
    changed.loc[0, "quantity"] += 1
    assert logic.dataset_sha256(changed) != report["dataset_sha256"]


def test_price_bands_are_quantiles_of_median_price() -> None:
    prices = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    staged = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(8)],
            "unit_price": prices,
            "ts": pd.Timestamp("2011-01-01", tz="UTC"),
            "description": "x",
            loaders.ORDER_COL: range(8),
        }
    )
    items = logic.build_items(staged, price_bands=4)
    assert items["price_band"].tolist() == [0, 0, 0, 1, 2, 2, 3, 3]


# ---- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "column", "row"),
    [
        ("missing_column.csv", "UnitPrice", None),
        ("bad_date.csv", "InvoiceDate", 2),
        ("bad_quantity.csv", "Quantity", 3),
        ("empty.csv", None, None),
        ("header_only.csv", None, None),
    ],
)
def test_malformed_input_raises_and_writes_nothing(
    tmp_path: Path, name: str, column: str | None, row: int | None
) -> None:
    out = tmp_path / "cleaned"
    with pytest.raises(InputError) as caught:
        logic.run(IngestConfig(), str(FIXTURES / name), out)
    assert caught.value.file == str(FIXTURES / name)
    assert caught.value.column == column
    assert caught.value.row == row
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_malformed_row_is_numbered_within_its_day_file(tmp_path: Path) -> None:
    folder = tmp_path / "by_day"
    folder.mkdir()
    for src in (FIXTURES / "by_day").iterdir():
        (folder / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    day2 = folder / "2010-12-02.csv"
    lines = day2.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace(",3.39,", ",three,")
    day2.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        logic.run(IngestConfig(), str(folder), tmp_path / "cleaned")
    assert (caught.value.file, caught.value.column, caught.value.row) == (
        str(day2),
        "UnitPrice",
        3,
    )
    assert "'three'" in str(caught.value)
    assert not (tmp_path / "cleaned").exists()


def test_missing_source_and_bundled_for_other_datasets_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        logic.run(IngestConfig(), str(tmp_path / "nope"), tmp_path / "out")
    with pytest.raises(InputError, match="only for dataset online_retail"):
        logic.run(IngestConfig(dataset="diginetica"), "bundled", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- the other datasets -------------------------------------------------------------------------


def test_amazon_beauty_loader_on_crafted_files(tmp_path: Path) -> None:
    (tmp_path / "Beauty.txt").write_text("1 4 83 7\n2 83 4\n3 5 4\n", encoding="utf-8")
    attrs = {"4": [1, 2, 3], "83": [4, 5], "7": [9]}
    (tmp_path / "Beauty_item2attributes.json").write_text(json.dumps(attrs), encoding="utf-8")
    out = tmp_path / "cleaned"
    report = logic.run(IngestConfig(dataset="amazon_beauty"), str(tmp_path), out)

    assert report["rows_read"] == 7 and report["rows_kept"] == 7
    items = pd.read_parquet(out / artifacts.ITEMS).set_index("item_id")
    assert items["description"].to_dict() == {
        "4": "attributes 1 2 3",
        "5": "item 5",
        "7": "attributes 9",
        "83": "attributes 4 5",
    }
    # the attribute held by most items is each item's category; item 5 has no attributes
    assert items["category"].to_dict() == {"4": "1", "5": None, "7": "9", "83": "4"}
    events = pd.read_parquet(out / artifacts.EVENTS)
    user1 = events[events["customer_id"] == "1"]
    assert user1["item_id"].tolist() == ["4", "83", "7"]
    assert user1["ts"].tolist() == [
        pd.Timestamp("2000-01-01 00:00", tz="UTC"),
        pd.Timestamp("2000-01-01 01:00", tz="UTC"),
        pd.Timestamp("2000-01-01 02:00", tz="UTC"),
    ]
    assert set(events["country"]) == {"unknown"}


def test_amazon_beauty_bad_id_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "Beauty.txt").write_text("1 4 83\n2 x9 4\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        loaders.load_amazon_beauty(tmp_path)
    assert (caught.value.column, caught.value.row) == ("item_id", 2)
    assert "'x9'" in str(caught.value)


@pytest.mark.skipif(not (SHARED / "diginetica-sample").is_dir(), reason="no ../shared/data")
def test_diginetica_loader_on_shared_sample() -> None:
    events = loaders.load_diginetica(SHARED / "diginetica-sample")
    assert len(events) == 12_391
    assert events["customer_id"].str.fullmatch(r"s\d+").all()
    first = events[(events["customer_id"] == "s1") & (events["item_id"] == "81766")].iloc[0]
    assert first["ts"] == pd.Timestamp("2016-05-09 00:08:46.309", tz="UTC")
    assert first["description"] == "item 81766"
    # sorted by (session, timeframe): within each session the source order follows time
    by_session = events.assign(s=events["customer_id"].str[1:].astype(int))
    assert by_session["s"].is_monotonic_increasing
    day_one = by_session.groupby("s")["ts"].apply(lambda t: t.dt.normalize().nunique() == 1)
    assert (
        by_session[by_session["s"].isin(day_one[day_one].index)]
        .groupby("s")["ts"]
        .apply(lambda t: t.is_monotonic_increasing)
        .all()
    )


@pytest.mark.skipif(not (SHARED / "diginetica-sample").is_dir(), reason="no ../shared/data")
def test_diginetica_run_drops_single_item_sessions(tmp_path: Path) -> None:
    report = logic.run(IngestConfig(dataset="diginetica"), "shared", tmp_path / "c")
    sequences = pd.read_parquet(tmp_path / "c" / artifacts.SEQUENCES)
    assert report["rows_read"] == 12_391
    assert report["rows_read"] == report["rows_kept"] + sum(report["dropped"].values())
    assert report["dropped"]["min_items_per_customer"] > 0
    assert sequences["items"].map(len).min() >= 2
    assert sequences["customer_id"].str.startswith("s").all()


@pytest.mark.skipif(not (SHARED / "amazon-beauty-sports-s3rec").is_dir(), reason="no shared data")
def test_amazon_beauty_loader_on_shared_files() -> None:
    events = loaders.load_amazon_beauty(SHARED / "amazon-beauty-sports-s3rec" / "Beauty.txt")
    assert len(events) == 198_502
    assert events["customer_id"].nunique() == 22_363
    assert events["item_id"].nunique() == 12_101
    steps = events.groupby("customer_id", sort=False)["ts"].diff().dropna()
    assert (steps > pd.Timedelta(0)).all()
    assert events["description"].str.startswith("attributes ").all()
    # every Beauty item has attributes, so a category: the 7 coarsest attribute groups
    assert events["category"].notna().all()
    assert events.groupby("category")["item_id"].nunique().to_dict() == {
        "1": 2627,
        "15": 354,
        "17": 3814,
        "31": 330,
        "4": 3262,
        "64": 1222,
        "8": 492,
    }


def test_parquet_with_natural_types_reads_like_the_raw_strings(
    cleaned_slice: Path, bundled_slice: Path, tmp_path: Path
) -> None:
    # the same rows as a pandas export with numbers and datetimes instead of text
    raw = pd.read_parquet(bundled_slice)
    natural = raw.assign(
        Quantity=raw["Quantity"].astype("int64"),
        UnitPrice=raw["UnitPrice"].astype("float64"),
        CustomerID=raw["CustomerID"].astype("float64"),
        InvoiceDate=pd.to_datetime(raw["InvoiceDate"]),
    )
    natural.to_parquet(tmp_path / "natural.parquet", index=False)
    report = logic.run(
        IngestConfig(price_bands=4), str(tmp_path / "natural.parquet"), tmp_path / "c"
    )
    expected = json.loads((cleaned_slice / artifacts.CLEANING_REPORT).read_text())
    assert report["dataset_sha256"] == expected["dataset_sha256"]
    assert report["dropped"] == expected["dropped"]
