"""Turning training_set/ into tensors: one record per sequence, histories left-padded with 0."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.common import artifacts as art
from components.common.errors import InputError
from components.common.ids import ItemMap
from components.common.recommender_model import COUNTRIES, UNKNOWN_COUNTRY, read_countries

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = ("seq_id", "source", "customer_id", "items", "weight")
EVAL_COLUMNS = ("customer_id", "history", "valid_item", "test_item")
FEATURE_COLUMNS = ("item_index", "item_id", "price_band", "popularity", "text_embedding")
# Written by fuse since customer features; a training set without it has every country unknown.
COUNTRY_COLUMN = "country_id"


@dataclass(frozen=True)
class TrainingSet:
    """Everything train reads from ``training_set/``."""

    item_map: ItemMap
    sequences: pd.DataFrame  # seq_id, source, customer_id, items, weight
    eval_cases: pd.DataFrame  # customer_id, history, valid_item, test_item
    text_embeddings: torch.Tensor  # [n_items + 1, 384], row 0 zeros
    price_bands: torch.Tensor  # [n_items + 1] int64, row 0 zero
    popularity: np.ndarray  # [n_items + 1] int64, row 0 zero
    n_price_bands: int
    # countries.json: index = country id, 0 = unknown. ["<unknown>"] for an older training set.
    countries: tuple[str, ...] = (UNKNOWN_COUNTRY,)

    @property
    def real(self) -> pd.DataFrame:
        return self.sequences[self.sequences["source"] == "real"]


def load_training_set(training_dir: Path) -> TrainingSet:
    """Read and cross-check fuse's outputs.

    Raises:
        InputError: a missing file or column, features that do not cover the item map, an item
            index outside the catalogue, or a real customer with more than one sequence.
    """
    training_dir = Path(training_dir)
    item_map = ItemMap.load(training_dir / art.ITEM_MAP)
    n = len(item_map)
    seq_file = training_dir / art.TRAIN_SEQUENCES
    sequences = art.read_parquet(seq_file, TRAIN_COLUMNS)
    eval_cases = art.read_parquet(training_dir / art.EVAL_CASES, EVAL_COLUMNS)
    feat_file = training_dir / art.ITEM_FEATURES
    features = art.read_parquet(feat_file, FEATURE_COLUMNS).sort_values("item_index")

    if features["item_index"].tolist() != list(range(1, n + 1)):
        raise InputError(
            f"item features must cover item indices 1..{n} exactly once",
            file=str(feat_file),
            column="item_index",
        )
    if features["item_id"].astype(str).tolist() != item_map.item_ids:
        raise InputError("item features disagree with item_map.json", file=str(feat_file))
    bad_source = set(sequences["source"]) - {"real", "synthetic"}
    if bad_source:
        raise InputError(
            f"source must be 'real' or 'synthetic', got {sorted(bad_source)}",
            file=str(seq_file),
            column="source",
        )
    for row, items in enumerate(sequences["items"]):
        arr = np.asarray(items, dtype=np.int64)
        if arr.size == 0 or arr.min() < 1 or arr.max() > n:
            raise InputError(
                f"a sequence must hold item indices in 1..{n}",
                file=str(seq_file),
                column="items",
                row=row,
            )
    real_ids = sequences.loc[sequences["source"] == "real", "customer_id"]
    if real_ids.isna().any() or real_ids.duplicated().any():
        raise InputError(
            "each real customer must have exactly one sequence (the unit of privacy)",
            file=str(seq_file),
            column="customer_id",
        )
    if (sequences["weight"] < 0).any():
        raise InputError("weights must be >= 0", file=str(seq_file), column="weight")
    country_file = training_dir / COUNTRIES
    countries = read_countries(country_file) if country_file.is_file() else [UNKNOWN_COUNTRY]
    sequences = _with_country_ids(sequences, len(countries), seq_file)
    eval_cases = _with_country_ids(eval_cases, len(countries), training_dir / art.EVAL_CASES)

    text = np.stack(features["text_embedding"].map(lambda v: np.asarray(v, dtype=np.float32)))
    text = np.concatenate([np.zeros((1, text.shape[1]), dtype=np.float32), text])
    bands = np.concatenate([[0], features["price_band"].to_numpy(dtype=np.int64)])
    pop = np.concatenate([[0], features["popularity"].to_numpy(dtype=np.int64)])
    return TrainingSet(
        item_map=item_map,
        sequences=sequences.reset_index(drop=True),
        eval_cases=eval_cases.reset_index(drop=True),
        text_embeddings=torch.from_numpy(text),
        price_bands=torch.from_numpy(bands),
        popularity=pop,
        n_price_bands=int(bands[1:].max()) + 1 if n else 1,
        countries=tuple(countries),
    )


def _with_country_ids(frame: pd.DataFrame, n_countries: int, file: Path) -> pd.DataFrame:
    """``frame`` with an int64 ``country_id`` column in 0..n_countries-1 (all 0 when absent)."""
    if COUNTRY_COLUMN not in frame.columns:
        return frame.assign(**{COUNTRY_COLUMN: np.zeros(len(frame), dtype=np.int64)})
    values = frame[COUNTRY_COLUMN]
    bad = values.isna() | (values < 0) | (values >= n_countries)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"country_id={values.iloc[row]} is outside 0..{n_countries - 1} (countries.json)",
            file=str(file),
            column=COUNTRY_COLUMN,
            row=row,
        )
    return frame.assign(**{COUNTRY_COLUMN: values.to_numpy(dtype=np.int64)})


def left_pad(histories: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """[len(histories), length] int64: the last ``length`` items of each history, left-padded."""
    out = torch.zeros((len(histories), length), dtype=torch.long)
    for row, history in enumerate(histories):
        tail = list(history)[-length:] if length else []
        if tail:
            out[row, length - len(tail) :] = torch.as_tensor(tail, dtype=torch.long)
    return out


def items_before_window(histories: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """[n] int64: how many items of each history fall before its last ``length`` (0 if it fits)."""
    return np.asarray([max(0, len(h) - length) for h in histories], dtype=np.int64)


def next_item_records(
    sequences: Sequence[Sequence[int]],
    weights: Sequence[float],
    max_history: int,
    country_ids: Sequence[int] | None = None,
) -> torch.utils.data.TensorDataset:
    """One record per sequence: inputs, next-item targets, weight, country id and ``n_before``.

    The dataset's tensors are ``(inputs [n, max_history], targets [n, max_history], weights [n],
    country_ids [n], n_before [n])``. A sequence longer than ``max_history + 1`` contributes its
    last ``max_history + 1`` items, and ``n_before`` counts the items cut off before them, so the
    model's activity count at each position is the purchases before it (never a later one).
    Target 0 marks a position with nothing to predict (padding, or a one-item sequence).

    Args:
        sequences: item index sequences, oldest first.
        weights: one loss weight per sequence.
        max_history: the model's window.
        country_ids: one country index per sequence (0 = unknown); None means all unknown.
    """
    windows = [list(s)[-(max_history + 1) :] for s in sequences]
    inputs = left_pad([w[:-1] if len(w) > 1 else w for w in windows], max_history)
    targets = left_pad([w[1:] for w in windows], max_history)
    n = len(windows)
    if country_ids is None:
        countries = np.zeros(n, dtype=np.int64)
    else:
        countries = np.asarray(country_ids, dtype=np.int64).reshape(-1)
        if countries.shape[0] != n:
            raise InputError(
                f"country_ids has {countries.shape[0]} values for {n} sequences",
                column="country_id",
            )
    # A one-item sequence has an input but no target; left_pad already aligns the rest.
    return torch.utils.data.TensorDataset(
        inputs,
        targets,
        torch.as_tensor(np.asarray(weights, dtype=np.float32)),
        torch.from_numpy(countries.copy()),
        torch.from_numpy(items_before_window(sequences, max_history + 1)),
    )
