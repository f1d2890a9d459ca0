"""The audit's country_vocabulary_public check: a public list from config, and nothing beyond it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.dp_audit.logic import COUNTRY_CHECK, country_vocabulary_check
from components.generate.tokenizer import ItemVocab

PUBLIC = ["France", "Germany", "Spain"]


def _dirs(
    tmp_path: Path,
    *,
    source: str | None = "config",
    recommender: list[str] | None = None,
    generator: list[str] | None = None,
) -> dict[str, Path]:
    """cleaned/ (countries.json unless source is None) and the two model dirs with vocabularies."""
    dirs = {name: tmp_path / name for name in ("cleaned", "gen", "rec", "training")}
    for path in dirs.values():
        path.mkdir()
    if source is not None:
        (dirs["cleaned"] / "countries.json").write_text(
            json.dumps({"countries": PUBLIC, "source": source})
        )
    rec = ["<unknown>", *(PUBLIC if recommender is None else recommender)]
    (dirs["rec"] / "countries.json").write_text(json.dumps({"countries": rec}))
    gen = [*PUBLIC, "unknown"] if generator is None else generator
    ItemVocab.build(["A1", "B2"], gen, 16).save(dirs["gen"])
    return dirs


def _check(dirs: dict[str, Path], *, cleaned: bool = True, training: bool = False) -> dict:
    return country_vocabulary_check(
        dirs["gen"],
        dirs["rec"],
        cleaned_dir=dirs["cleaned"] if cleaned else None,
        training_dir=dirs["training"] if training else None,
    )


def test_config_list_passes(tmp_path: Path) -> None:
    check = _check(_dirs(tmp_path))
    assert check["name"] == COUNTRY_CHECK
    assert check["passed"] is True
    assert check["figures"] == {"source": "config", "n_countries": 3}
    assert "generator, recommender" in check["detail"]


def test_list_from_data_fails_and_names_the_fix(tmp_path: Path) -> None:
    check = _check(_dirs(tmp_path, source="data"))
    assert check["passed"] is False
    assert "'data'" in check["detail"]
    assert "set ingest.countries" in check["detail"]
    assert check["figures"]["source"] == "data"


def test_old_cleaned_without_the_list_fails(tmp_path: Path) -> None:
    check = _check(_dirs(tmp_path, source=None))
    assert check["passed"] is False
    assert "does not say where the country list came from" in check["detail"]
    assert "set ingest.countries" in check["detail"]


@pytest.mark.parametrize(
    ("model", "vocab"),
    [
        ("recommender", {"recommender": ["France", "Iceland"]}),
        ("generator", {"generator": ["France", "Iceland", "unknown"]}),
    ],
)
def test_a_country_outside_the_list_fails(tmp_path: Path, model: str, vocab: dict) -> None:
    check = _check(_dirs(tmp_path, **vocab))
    assert check["passed"] is False
    assert f"{model}: ['Iceland']" in check["detail"]


def test_without_cleaned_the_training_set_source_is_read(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    path = dirs["training"] / "countries.json"
    path.write_text(json.dumps({"countries": ["<unknown>", *PUBLIC], "source": "config"}))
    assert _check(dirs, cleaned=False, training=True)["passed"] is True
    path.write_text(json.dumps({"countries": ["<unknown>", *PUBLIC], "source": "data"}))
    assert _check(dirs, cleaned=False, training=True)["passed"] is False
    # Written before sources existed: it cannot be told public.
    path.write_text(json.dumps({"countries": ["<unknown>", *PUBLIC]}))
    assert _check(dirs, cleaned=False, training=True)["passed"] is False


def test_without_cleaned_or_training_set_it_is_skipped(tmp_path: Path) -> None:
    check = _check(_dirs(tmp_path), cleaned=False)
    assert check["passed"] is True
    assert check["skipped"] is True
