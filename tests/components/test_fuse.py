"""Tests of the fuse step: crafted cleaned/ and synthetic/ inputs with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from components.common.errors import InputError
from components.common.ids import ItemMap
from components.fuse.config import FuseConfig
from components.fuse.embeddings import EMBEDDING_DIM, embed_texts
from components.fuse.logic import run

DESCRIPTIONS = {
    "10001": "WHITE HANGING HEART T-LIGHT HOLDER",
    "10002": "RED WOOLLY HOTTIE WHITE HEART",
    "10003": "SET OF 3 CAKE TINS PANTRY DESIGN",
    "10004": "JUMBO BAG RED RETROSPOT",
    "10005": "PACK OF 72 RETROSPOT CAKE CASES",
    "10006": "ASSORTED COLOUR BIRD ORNAMENT",
    "10007": "REGENCY CAKESTAND 3 TIER",
    "10008": "JUMBO BAG RED RETROSPOT",  # same text as 10004: must get the same vector
    "10009": "LUNCH BAG BLACK SKULL",
    "10010": "PARTY BUNTING",
}
# Customer sequences (distinct items in purchase order); the last two are held out when >= 3.
SEQUENCES = {
    "c1": ["10001", "10002", "10003", "10004", "10005"],
    "c2": ["10003", "10001", "10006"],
    "c3": ["10007", "10008"],  # too short to evaluate: all of it trains
    "c4": ["10002", "10009", "10010", "10001"],
    "c5": ["10005", "10004", "10003", "10002", "10001", "10006"],
}
SYNTHETIC = [
    ("s-keep", ["10001", "10003", "10005"]),  # kept as is
    ("s-unknown", ["10002", "XXXX", "10004", "YYYY"]),  # 2 unknown items dropped, kept
    ("s-short-unknown", ["10006", "ZZZZ"]),  # 1 unknown dropped, then too short
    ("s-short", ["10007"]),  # too short
    ("s-all-unknown", ["A", "B", "C"]),  # 3 unknown, then empty
    ("s-copy", ["10001", "10002", "10003"]),  # exact copy of c1's training part
    ("s-copy-c3", ["10007", "10008"]),  # exact copy of c3 (all of it trains)
    ("s-near-copy", ["10002", "10001", "10003"]),  # same items as c1's part, other order
    ("s-repeat", ["10006", "10009", "10006"]),  # repeats an item: invalid
    ("s-near-syn", ["10001", "10003", "10005", "10009"]),  # Jaccard 0.75 to s-keep: kept at 0.8
]


def _write_inputs(
    root: Path, *, sequences: dict[str, list[str]] | None = None
) -> tuple[Path, Path]:
    cleaned, synthetic = root / "cleaned", root / "synthetic"
    cleaned.mkdir(parents=True)
    synthetic.mkdir(parents=True)
    ids = list(DESCRIPTIONS)[::-1]  # unsorted on disk: fuse must sort
    ts = pd.Timestamp("2011-01-01", tz="UTC")
    pd.DataFrame(
        {
            "item_id": ids,
            "description": [DESCRIPTIONS[i] for i in ids],
            "unit_price": [1.0 + n for n in range(len(ids))],
            "price_band": [n % 3 for n in range(len(ids))],
            "n_events": [5] * len(ids),
            "first_seen": [ts] * len(ids),
        }
    ).to_parquet(cleaned / "items.parquet", index=False)
    seqs = sequences or SEQUENCES
    pd.DataFrame(
        {
            "customer_id": list(seqs),
            "country": ["United Kingdom"] * len(seqs),
            "items": list(seqs.values()),
            "ts": [[ts] * len(v) for v in seqs.values()],
        }
    ).to_parquet(cleaned / "sequences.parquet", index=False)
    pd.DataFrame(
        {
            "synthetic_id": [s for s, _ in SYNTHETIC],
            "country": ["France"] * len(SYNTHETIC),
            "items": [i for _, i in SYNTHETIC],
        }
    ).to_parquet(synthetic / "synthetic_sessions.parquet", index=False)
    return cleaned, synthetic


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("fuse")
    cleaned, synthetic = _write_inputs(root)
    summary = run(
        FuseConfig(synthetic_weight=0.25), cleaned, synthetic, root / "training_set", seed=0
    )
    return summary, root / "training_set"


def test_synthetic_drop_counts(fused: tuple[dict, Path]) -> None:
    summary, out = fused
    assert summary["synthetic_dropped"] == {
        "unknown_items": 6,
        "short": 3,
        "copies": 2,
        "repeats": 1,
        "near_duplicates": 1,
        "over_max": 0,
    }
    assert summary["n_synthetic_read"] == 10
    assert summary["n_synthetic_kept"] == 3
    seqs = pd.read_parquet(out / "train_sequences.parquet")
    item_map = ItemMap.load(out / "item_map.json")
    syn = seqs[seqs["source"] == "synthetic"].set_index("seq_id")
    assert sorted(syn.index) == ["syn-s-keep", "syn-s-near-syn", "syn-s-unknown"]
    assert item_map.decode(syn.loc["syn-s-unknown", "items"]) == ["10002", "10004"]
    assert syn["customer_id"].isna().all()
    assert syn["weight"].tolist() == [0.25, 0.25, 0.25]
    assert set(summary["feature_sources"]) >= {"popularity", "text_embedding", "price_band"}


def test_near_duplicate_threshold_and_amount(tmp_path: Path) -> None:
    cleaned, synthetic = _write_inputs(tmp_path)
    strict = run(
        FuseConfig(near_duplicate_jaccard=0.7, max_synthetic=1),
        cleaned,
        synthetic,
        tmp_path / "strict",
        seed=0,
    )
    # s-near-syn (0.75 to s-keep) is now a near-duplicate; s-unknown is over the cap of 1.
    assert strict["synthetic_dropped"]["near_duplicates"] == 2
    assert strict["synthetic_dropped"]["over_max"] == 1
    seqs = pd.read_parquet(tmp_path / "strict" / "train_sequences.parquet")
    assert seqs.loc[seqs["source"] == "synthetic", "seq_id"].tolist() == ["syn-s-keep"]


def test_cutoff_is_point_in_time(tmp_path: Path) -> None:
    """A customer's purchases after the cutoff (and an item only bought then) must not leak."""
    early, late = pd.Timestamp("2011-01-01", tz="UTC"), pd.Timestamp("2011-06-01", tz="UTC")
    cleaned, synthetic = _write_inputs(tmp_path)
    seqs = pd.read_parquet(cleaned / "sequences.parquet")
    # c1 buys 10001..10003 early and 10004, 10005 late; 10010 is bought only late, by c4.
    times = {
        "c1": [early, early, early, late, late],
        "c4": [early, early, late, early],
    }
    seqs["ts"] = [
        times.get(c, [early] * len(i))
        for c, i in zip(seqs["customer_id"], seqs["items"], strict=True)
    ]
    seqs.to_parquet(cleaned / "sequences.parquet", index=False)
    cutoff = pd.Timestamp("2011-03-01", tz="UTC").to_pydatetime()
    summary = run(FuseConfig(cutoff=cutoff), cleaned, synthetic, tmp_path / "ts", seed=0)
    out = tmp_path / "ts"
    item_map = ItemMap.load(out / "item_map.json")
    train = pd.read_parquet(out / "train_sequences.parquet")
    real = train[train["source"] == "real"].set_index("customer_id")
    # c1 keeps 3 early items, of which the last two are held out: only 10001 trains.
    assert item_map.decode(real.loc["c1", "items"]) == ["10001"]
    cases = pd.read_parquet(out / "eval_cases.parquet").set_index("customer_id")
    assert item_map.decode([cases.loc["c1", "valid_item"], cases.loc["c1", "test_item"]]) == [
        "10002",
        "10003",
    ]
    features = pd.read_parquet(out / "item_features.parquet").set_index("item_id")
    # 10010 was bought only after the cutoff: no popularity, no training sequence holds it.
    assert features.loc["10010", "popularity"] == 0
    assert item_map.index("10010") not in {i for s in real["items"] for i in s}
    assert summary["n_real_events_dropped_by_cutoff"] == 3


def test_cutoff_must_be_timezone_aware() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        FuseConfig(cutoff="2011-03-01T00:00:00")


def test_real_sequences_hold_no_held_out_item(fused: tuple[dict, Path]) -> None:
    _, out = fused
    item_map = ItemMap.load(out / "item_map.json")
    seqs = pd.read_parquet(out / "train_sequences.parquet")
    real = seqs[seqs["source"] == "real"].set_index("customer_id")
    assert sorted(real.index) == sorted(SEQUENCES)  # exactly one record per customer
    assert (real["weight"] == 1.0).all()
    cases = pd.read_parquet(out / "eval_cases.parquet").set_index("customer_id")
    assert sorted(cases.index) == ["c1", "c2", "c4", "c5"]
    for customer, items in SEQUENCES.items():
        train_items = item_map.decode(real.loc[customer, "items"])
        if len(items) >= 3:
            assert train_items == items[:-2]
            held_out = set(items[-2:])
            assert not held_out & set(train_items)
            case = cases.loc[customer]
            assert item_map.decode([case["valid_item"], case["test_item"]]) == items[-2:]
            assert item_map.decode(case["history"]) == items[:-2]
        else:
            assert train_items == items


def test_item_features_and_popularity(fused: tuple[dict, Path]) -> None:
    _, out = fused
    item_map = ItemMap.load(out / "item_map.json")
    assert item_map.item_ids == sorted(DESCRIPTIONS)
    feats = pd.read_parquet(out / "item_features.parquet").set_index("item_id")
    assert feats["item_index"].tolist() == list(range(1, 11))
    # Real training customers who bought each item: c1 {1,2,3}, c2 {3}, c3 {7,8}, c4 {2,9},
    # c5 {5,4,3,2}; synthetic sequences do not count.
    expected = {"10001": 1, "10002": 3, "10003": 3, "10004": 1, "10005": 1, "10006": 0}
    expected.update({"10007": 1, "10008": 1, "10009": 1, "10010": 0})
    assert feats["popularity"].to_dict() == expected
    assert feats.loc["10004", "description"] == DESCRIPTIONS["10004"]


def test_embeddings_unit_norm_and_text_identity(fused: tuple[dict, Path]) -> None:
    _, out = fused
    feats = pd.read_parquet(out / "item_features.parquet").set_index("item_id")
    vectors = np.stack(feats["text_embedding"].to_numpy())
    assert vectors.shape == (10, EMBEDDING_DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Identical texts: identical vectors; different texts: clearly different ones.
    np.testing.assert_array_equal(
        np.asarray(feats.loc["10004", "text_embedding"]),
        np.asarray(feats.loc["10008", "text_embedding"]),
    )
    cos = vectors @ vectors.T
    different = [
        (i, j) for i in range(10) for j in range(i + 1, 10) if {i, j} != {3, 7}
    ]  # rows 3 and 7 are the shared text
    assert max(cos[i, j] for i, j in different) < 0.95


def test_embedding_is_batch_independent() -> None:
    texts = ["PARTY BUNTING", "LUNCH BAG BLACK SKULL", "REGENCY CAKESTAND 3 TIER"]
    together = embed_texts(texts, batch_size=8)
    one_by_one = np.concatenate([embed_texts([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert float(together[0] @ together[1]) < 0.9


def test_unknown_real_item_is_an_input_error(tmp_path: Path) -> None:
    cleaned, synthetic = _write_inputs(tmp_path, sequences={"c1": ["10001", "NOPE", "10002"]})
    with pytest.raises(InputError, match="NOPE"):
        run(FuseConfig(), cleaned, synthetic, tmp_path / "out", seed=0)
    # A failed step leaves no output behind.
    assert not (tmp_path / "out").exists()


def test_missing_column_names_the_column(tmp_path: Path) -> None:
    cleaned, synthetic = _write_inputs(tmp_path)
    frame = pd.read_parquet(synthetic / "synthetic_sessions.parquet").drop(columns=["items"])
    frame.to_parquet(synthetic / "synthetic_sessions.parquet", index=False)
    with pytest.raises(InputError, match="column=items"):
        run(FuseConfig(), cleaned, synthetic, tmp_path / "out", seed=0)


@pytest.mark.parametrize(
    "bad", [{"synthetic_weight": -0.1}, {"embedding_batch_size": 0}, {"min_synthetic_length": 1}]
)
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises(ValidationError):
        FuseConfig(**bad)
