"""The public country vocabulary: which countries the models may name, fixed before any data.

A vocabulary built from the training customers' countries is itself a release outside DP: a
country that only one customer lives in shows that customer's presence in every exported model
(the recommender's ``countries.json``, the generator's country tokens). So the operator lists the
shop's markets in ``ingest.countries``; ingest writes that list to ``cleaned/countries.json``
and maps every customer outside it to the unknown country, and fuse and generate build their
vocabularies from the file, never from the customers.

The unknown country is one representation throughout ``cleaned/``: the string ``"unknown"``
(:data:`components.ingest.loaders.UNKNOWN_COUNTRY`, also what a dataset without countries and a
row without a Country get). It is never an entry of the public list. The recommender gives it
index 0 (``"<unknown>"`` in its ``countries.json``); the generator always has a
``<country:unknown>`` token beside the listed countries, whether or not any customer needs it, so
its presence says nothing about the data.

``cleaned/countries.json`` is ``{"countries": [sorted names], "source": "config" | "data"}``;
"data" means the list is the observed countries (no ``ingest.countries``), which the audit's
``country_vocabulary_public`` check fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from components.common.artifacts import read_json
from components.common.errors import InputError
from components.ingest.loaders import UNKNOWN_COUNTRY

logger = logging.getLogger(__name__)

COUNTRIES_FILE = "countries.json"
SOURCE_CONFIG, SOURCE_DATA = "config", "data"
SOURCES = (SOURCE_CONFIG, SOURCE_DATA)
UNKNOWN = UNKNOWN_COUNTRY
DATA_WARNING = (
    "the country vocabulary is the observed countries (source 'data'): every exported model then "
    "reveals which countries have customers, outside DP (a country with one customer reveals "
    "that customer). Set ingest.countries to the operator's public list of markets"
)


def observed_countries(countries: Iterable[Any]) -> list[str]:
    """Sorted distinct country names of ``countries``, without the unknown country or blanks."""
    return sorted({c for c in countries if isinstance(c, str) and c and c != UNKNOWN})


def public_list(configured: Sequence[str] | None, observed: Iterable[Any]) -> dict[str, Any]:
    """The content of ``cleaned/countries.json``: the configured list, or the observed one.

    Args:
        configured: ``ingest.countries`` (None: not set).
        observed: the customers' countries (used only when ``configured`` is None; a WARNING
            is logged then).
    """
    if configured is not None:
        return {"countries": sorted(set(configured)), "source": SOURCE_CONFIG}
    logger.warning("%s", DATA_WARNING)
    return {"countries": observed_countries(observed), "source": SOURCE_DATA}


def to_public(countries: pd.Series, public: Sequence[str]) -> pd.Series:
    """``countries`` with every value outside ``public`` (or missing) replaced by ``"unknown"``."""
    allowed = set(public)
    return countries.map(lambda c: c if isinstance(c, str) and c in allowed else UNKNOWN).astype(
        object
    )


def read(cleaned_dir: str | Path) -> dict[str, Any] | None:
    """``cleaned/countries.json`` validated, or None for an older ``cleaned/`` without it.

    Raises:
        InputError: the file is not ``{"countries": [distinct non-empty names other than
            "unknown"], "source": "config" | "data"}``.
    """
    path = Path(cleaned_dir) / COUNTRIES_FILE
    if not path.is_file():
        return None
    raw = read_json(path)
    names = raw.get("countries") if isinstance(raw, dict) else None
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) and n and n != UNKNOWN for n in names)
        or len(set(names)) != len(names)
    ):
        raise InputError(
            f'countries must be a list of distinct non-empty names other than "{UNKNOWN}", '
            f"got {names!r}",
            file=str(path),
            column="countries",
        )
    source = raw.get("source")
    if source not in SOURCES:
        raise InputError(
            f"source={source!r} is not one of {list(SOURCES)}", file=str(path), column="source"
        )
    return {"countries": sorted(names), "source": source}


def vocabulary(cleaned_dir: str | Path, observed: Iterable[Any]) -> dict[str, Any]:
    """The public list a step builds its vocabulary from: the file's, else the observed one.

    An older ``cleaned/`` without ``countries.json`` falls back to ``observed`` (source "data",
    with the same WARNING ingest logs).
    """
    found = read(cleaned_dir)
    if found is not None:
        return found
    logger.warning("%s has no %s: %s", cleaned_dir, COUNTRIES_FILE, DATA_WARNING)
    return {"countries": observed_countries(observed), "source": SOURCE_DATA}


def generator_countries(cleaned_dir: str | Path, observed: Iterable[Any]) -> list[str]:
    """The generator's country tokens: the public list and always the unknown country.

    An older ``cleaned/`` without ``countries.json`` keeps the former vocabulary, the distinct
    observed countries (``"unknown"`` only where a customer has it), with the WARNING.
    """
    found = read(cleaned_dir)
    if found is not None:
        return sorted({*found["countries"], UNKNOWN})
    logger.warning("%s has no %s: %s", cleaned_dir, COUNTRIES_FILE, DATA_WARNING)
    return sorted({str(c) for c in observed})
