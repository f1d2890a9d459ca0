"""Fuse's customer features: the country vocabulary and the country_id columns."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from components.common.errors import InputError
from components.fuse.config import FuseConfig
from components.fuse.logic import run
from components.train.data import load_training_set

ITEMS = [f"2000{i}" for i in range(1, 10)]
# customer -> (country, items); the last two items of a sequence of >= 3 are held out.
CUSTOMERS = {
    "c1": ("France", ["20001", "20002", "20003", "20004"]),
    "c2": ("Germany", ["20003", "20005", "20006"]),
    "c3": ("France", ["20007", "20008"]),
    "c4": (None, ["20002", "20009", "20001"]),
}
SYNTHETIC = [
    ("s-fr", "France", ["20005", "20007", "20009"]),
    ("s-unseen", "Atlantis", ["20006", "20008", "20004"]),  # no real customer lives there
    ("s-none", None, ["20009", "20003", "20008"]),
]


def _write(root: Path) -> tuple[Path, Path]:
    cleaned, synthetic = root / "cleaned", root / "synthetic"
    cleaned.mkdir()
    synthetic.mkdir()
    ts = pd.Timestamp("2011-03-01", tz="UTC")
    pd.DataFrame(
        {
            "item_id": ITEMS,
            "description": [f"THING {i}" for i in ITEMS],
            "unit_price": [1.0] * len(ITEMS),
            "price_band": [0] * len(ITEMS),
            "n_events": [3] * len(ITEMS),
            "first_seen": [ts] * len(ITEMS),
        }
    ).to_parquet(cleaned / "items.parquet", index=False)
    pd.DataFrame(
        {
            "customer_id": list(CUSTOMERS),
            "country": [c for c, _ in CUSTOMERS.values()],
            "items": [i for _, i in CUSTOMERS.values()],
            "ts": [[ts] * len(i) for _, i in CUSTOMERS.values()],
        }
    ).to_parquet(cleaned / "sequences.parquet", index=False)
    pd.DataFrame(
        {
            "synthetic_id": [s for s, _, _ in SYNTHETIC],
            "country": [c for _, c, _ in SYNTHETIC],
            "items": [i for _, _, i in SYNTHETIC],
        }
    ).to_parquet(synthetic / "synthetic_sessions.parquet", index=False)
    return cleaned, synthetic


def test_country_vocabulary_and_ids(tmp_path: Path) -> None:
    # An older cleaned/ without countries.json: the vocabulary falls back to the observed one.
    cleaned, synthetic = _write(tmp_path)
    out = tmp_path / "training_set"
    cfg = FuseConfig(near_duplicate_jaccard=1.0)
    summary = run(cfg, cleaned, synthetic, out, seed=0)
    # Real training customers' countries only: the synthetic-only "Atlantis" is not in it.
    written = json.loads((out / "countries.json").read_text())
    assert written == {"countries": ["<unknown>", "France", "Germany"], "source": "data"}
    assert summary["n_countries"] == 3
    assert set(summary["customer_feature_sources"]) == {"country", "activity"}

    seqs = pd.read_parquet(out / "train_sequences.parquet").set_index("seq_id")
    assert seqs["country_id"].dtype == "int64"
    assert seqs.loc["real-c1", "country_id"] == 1
    assert seqs.loc["real-c2", "country_id"] == 2
    assert seqs.loc["real-c4", "country_id"] == 0  # no country: unknown
    assert seqs.loc["syn-s-fr", "country_id"] == 1
    assert seqs.loc["syn-s-unseen", "country_id"] == 0  # unseen in real data: unknown
    assert seqs.loc["syn-s-none", "country_id"] == 0
    cases = pd.read_parquet(out / "eval_cases.parquet").set_index("customer_id")
    assert cases["country_id"].to_dict() == {"c1": 1, "c2": 2, "c4": 0}

    ts = load_training_set(out)
    assert ts.countries == ("<unknown>", "France", "Germany")
    assert ts.sequences["country_id"].tolist() == seqs["country_id"].tolist()


def test_vocabulary_is_the_public_list_not_the_customers(tmp_path: Path) -> None:
    cleaned, synthetic = _write(tmp_path)
    # The operator's list: Germany (c2's country) is not in it, Spain has no customer at all.
    (cleaned / "countries.json").write_text(
        json.dumps({"countries": ["Spain", "Atlantis", "France"], "source": "config"})
    )
    out = tmp_path / "training_set"
    summary = run(FuseConfig(near_duplicate_jaccard=1.0), cleaned, synthetic, out, seed=0)
    written = json.loads((out / "countries.json").read_text())
    assert written == {
        "countries": ["<unknown>", "Atlantis", "France", "Spain"],
        "source": "config",
    }
    assert summary["countries_source"] == "config"
    seqs = pd.read_parquet(out / "train_sequences.parquet").set_index("seq_id")
    assert seqs.loc["real-c1", "country_id"] == 2
    assert seqs.loc["real-c2", "country_id"] == 0  # Germany is not public: unknown
    assert seqs.loc["syn-s-unseen", "country_id"] == 1  # Atlantis is listed
    cases = pd.read_parquet(out / "eval_cases.parquet").set_index("customer_id")
    assert cases["country_id"].to_dict() == {"c1": 2, "c2": 0, "c4": 0}
    assert load_training_set(out).countries == ("<unknown>", "Atlantis", "France", "Spain")


def test_a_malformed_public_list_is_an_input_error(tmp_path: Path) -> None:
    cleaned, synthetic = _write(tmp_path)
    (cleaned / "countries.json").write_text(
        json.dumps({"countries": ["France"], "source": "guess"})
    )
    with pytest.raises(InputError, match="source='guess' is not one of"):
        run(FuseConfig(), cleaned, synthetic, tmp_path / "training_set", seed=0)
    assert not (tmp_path / "training_set").exists()
