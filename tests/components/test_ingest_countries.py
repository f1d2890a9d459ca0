"""The public country vocabulary: ingest.countries -> cleaned/countries.json -> both models.

A country present in the data but not in the configured list must reach neither the
recommender's countries.json nor the generator's country tokens; its customers get the unknown
country. Ingest runs on the first three days of the bundled sample (~210 customers).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from components.common import artifacts
from components.common.config import load_config
from components.common.errors import ConfigError
from components.fuse import logic as fuse
from components.fuse.config import FuseConfig
from components.generate import logic as generate
from components.generate.config import GenerateConfig
from components.ingest import countries, logic
from components.ingest.config import IngestConfig
from components.train import logic as train
from components.train.config import TrainConfig

# Germany has customers in those days but is not listed; Atlantis is listed and has none.
PUBLIC = ["United Kingdom", "France", "Atlantis"]
SLICE = {"max_days": 3, "min_customers_per_item": 3}


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("countries") / "cleaned"
    logic.run(IngestConfig(countries=PUBLIC, **SLICE), "bundled", out)
    return out


@pytest.fixture(scope="module")
def chain(cleaned: Path) -> dict[str, Path]:
    root = cleaned.parent
    gen_cfg = GenerateConfig.model_validate(
        {
            "size": "tiny",
            "max_length": 16,
            "epochs": 1,
            "batch_size": 32,
            "n_synthetic": 10,
            "quality_report": False,
            "canaries": {"count": 0, "holdout_fraction": 0.0},
            "dp": {"enabled": False},
        }
    )
    generate.run(gen_cfg, cleaned, root / "generator_model", root / "synthetic", seed=0)
    fuse.run(FuseConfig(), cleaned, root / "synthetic", root / "training_set", seed=0)
    return {
        "gen": root / "generator_model",
        "syn": root / "synthetic",
        "training": root / "training_set",
    }


def test_ingest_writes_the_configured_list_and_maps_the_rest_to_unknown(cleaned: Path) -> None:
    written = json.loads((cleaned / "countries.json").read_text())
    assert written == {"countries": sorted(PUBLIC), "source": "config"}
    events = pd.read_parquet(cleaned / artifacts.EVENTS)
    german = set(events.loc[events["country"] == "Germany", "customer_id"])
    assert german  # the slice does hold customers outside the list
    customers = pd.read_parquet(cleaned / artifacts.CUSTOMERS).set_index("customer_id")
    assert set(customers["country"]) <= {*PUBLIC, "unknown"}
    assert set(customers.loc[sorted(german), "country"]) == {"unknown"}
    sequences = pd.read_parquet(cleaned / artifacts.SEQUENCES).set_index("customer_id")
    assert sequences["country"].to_dict() == customers["country"].to_dict()
    report = json.loads((cleaned / artifacts.CLEANING_REPORT).read_text())
    assert (report["countries_source"], report["n_countries"]) == ("config", 3)


def test_without_a_list_the_observed_countries_are_used_with_a_warning(
    cleaned: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="components.ingest.countries"):
        report = logic.run(IngestConfig(**SLICE), "bundled", tmp_path / "cleaned")
    written = json.loads((tmp_path / "cleaned" / "countries.json").read_text())
    assert written["source"] == "data"
    assert "Germany" in written["countries"] and "Atlantis" not in written["countries"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "set ingest.countries" in warning.getMessage().lower()
    assert "reveals which countries have customers" in warning.getMessage()
    # The events (and so the ledger's dataset hash) do not depend on the list.
    configured = json.loads((cleaned / artifacts.CLEANING_REPORT).read_text())
    assert report["dataset_sha256"] == configured["dataset_sha256"]
    customers = pd.read_parquet(tmp_path / "cleaned" / artifacts.CUSTOMERS)
    assert "Germany" in set(customers["country"])


def test_an_unlisted_country_reaches_neither_vocabulary(chain: dict[str, Path]) -> None:
    vocab = json.loads((chain["gen"] / "vocab.json").read_text())
    assert sorted(vocab["countries"]) == sorted([*PUBLIC, "unknown"])
    assert "<country:Germany>" not in vocab["tokens"]
    assert "<country:Atlantis>" in vocab["tokens"]  # listed, though no customer lives there
    rec = json.loads((chain["training"] / "countries.json").read_text())
    assert rec == {"countries": ["<unknown>", *sorted(PUBLIC)], "source": "config"}
    seqs = pd.read_parquet(chain["training"] / "train_sequences.parquet")
    customers = pd.read_parquet(chain["training"].parent / "cleaned" / artifacts.CUSTOMERS)
    unknown = set(customers.loc[customers["country"] == "unknown", "customer_id"])
    real = seqs[seqs["source"] == "real"]
    assert set(real.loc[real["customer_id"].isin(unknown), "country_id"]) == {0}
    assert set(real.loc[~real["customer_id"].isin(unknown), "country_id"]) <= {2, 3}


def test_an_old_cleaned_without_the_list_still_fuses_and_trains(
    cleaned: Path, chain: dict[str, Path], tmp_path: Path
) -> None:
    old = tmp_path / "cleaned"
    shutil.copytree(cleaned, old)
    (old / "countries.json").unlink()
    fuse.run(FuseConfig(), old, chain["syn"], tmp_path / "training_set", seed=0)
    rec = json.loads((tmp_path / "training_set" / "countries.json").read_text())
    # The observed countries of the (already mapped) customers, marked as such.
    assert rec == {"countries": ["<unknown>", "France", "United Kingdom"], "source": "data"}
    cfg = TrainConfig.model_validate(
        {
            "d_model": 16,
            "n_layers": 1,
            "n_heads": 1,
            "max_history": 4,
            "epochs": 1,
            "batch_size": 64,
            "canaries": {"count": 0, "holdout_fraction": 0.0},
            "dp": {"enabled": False},
        }
    )
    train.run(cfg, tmp_path / "training_set", tmp_path / "recommender_model", seed=0)
    saved = json.loads((tmp_path / "recommender_model" / "countries.json").read_text())
    assert saved["countries"] == ["<unknown>", "France", "United Kingdom"]
    model_config = json.loads((tmp_path / "recommender_model" / "model_config.json").read_text())
    assert model_config["n_countries"] == 3


@pytest.mark.parametrize(
    ("countries_value", "message"),
    [
        (["France", "unknown"], "not 'unknown'"),
        (["France", " Spain"], "without surrounding spaces"),
        (["France", ""], "non-empty name"),
        (["France", "Spain", "France"], "repeats ['France']"),
    ],
)
def test_a_bad_country_list_is_a_config_error(
    tmp_path: Path, countries_value: list[str], message: str
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"ingest": {"countries": countries_value}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"ingest\.countries.*{re.escape(message)}"):
        load_config(path)


def test_the_shipped_configs_list_the_public_markets() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("demo.yaml", "test.yaml", "nonprivate-audit.yaml"):
        listed = load_config(root / name).ingest.countries
        assert listed is not None and "United Kingdom" in listed, name
        assert countries.UNKNOWN not in listed and "Unspecified" not in listed, name
