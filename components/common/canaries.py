"""Canary customers and held-out customers for the empirical privacy audit.

Two things let the dp_audit step test the privacy claim on the trained models themselves:

- **Canaries** (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run",
  NeurIPS 2023). ``count`` made-up customers, each a random sequence of real catalogue items of a
  typical length, each independently included in the training data with probability 1/2. An
  included canary is one more customer: it is one record of the DP training and the accountant's
  ``n_units`` counts it. The full list with the inclusion flags is saved beside the model as
  ``canaries.json``; it holds no real data (random catalogue items, and frame tokens drawn from
  the marginal of each frame position), so it needs no more protection than the model. The audit
  then guesses membership from the model's scores and turns the correct guesses into a lower
  bound on epsilon.
- **Held-out customers**: a seeded share of the real customers (``holdout_fraction``) that neither
  the generator nor the recommender trains on, decided by a hash of the customer id and the run
  seed. They are the non-members of the membership-inference attack and the baseline of the
  copy check. Only the rule and the counts are saved, never the ids: the audit recomputes the
  split from ``cleaned/`` with :func:`held_out`.

The steps call :func:`drop_held_out` and :func:`add_generator_canaries` (generate) or
:func:`prepare_recommender` (train), and :func:`save` inside their ``atomic_dir``. Export copies
only named files, so ``canaries.json`` never ships with a served model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from components.common.artifacts import read_json, write_json
from components.common.errors import InputError
from components.common.strict import StrictModel

logger = logging.getLogger(__name__)

CANARIES_FILE = "canaries.json"
CANARY_PREFIX = "canary-"
# Separate random streams for the two trainings' canaries and for the hash of the held-out split.
_GENERATOR_STREAM, _RECOMMENDER_STREAM = 1, 2
_HOLDOUT_SALT = "recsynth-holdout"
HOLDOUT_RULE = f"first 8 bytes of sha256('{_HOLDOUT_SALT}:<seed>:<customer_id>') / 2**64 < fraction"


class CanaryConfig(StrictModel):
    """Audit data of one training: canaries and the held-out share of real customers.

    ``count`` is m of the one-run audit. The empirical bound it can reach grows with m: with every
    guess right, the 95 % bound over the audit's default guess grid is at most 3.7 at m = 200,
    4.7 at m = 500 and 5.3 at m = 1000, so a claimed epsilon above that cannot be refuted by this
    audit (it still catches gross leaks, e.g. a training that silently ran without noise). About
    m/2 random customers join the training: 200 adds ~100 random customers to the demo's ~3,000
    (3 %), which leaves the deployed models' quality as it was.
    ``holdout_fraction`` customers are kept out of both trainings so that the membership attack
    has real non-members; 0.1 gives ~300 of them on the demo data (a TPR at 0.1 % FPR is then
    resolved to 1/300 at best, which the audit reports with its sample sizes).
    """

    enabled: bool = True
    count: int = Field(default=200, ge=0, le=100_000)
    # Items per canary; None takes the median number of items of the real training records.
    length: int | None = Field(default=None, ge=1)
    holdout_fraction: float = Field(default=0.1, ge=0, le=0.5)


@dataclasses.dataclass(frozen=True)
class CanarySet:
    """The canaries of one training and the held-out split it used (``canaries.json``)."""

    training: str
    seed: int
    holdout_fraction: float
    n_held_out: int
    n_members: int
    canaries: list[dict[str, Any]]

    @property
    def n_included(self) -> int:
        return sum(1 for c in self.canaries if c["included"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "training": self.training,
            "seed": self.seed,
            "count": len(self.canaries),
            "n_included": self.n_included,
            "holdout": {
                "rule": HOLDOUT_RULE,
                "fraction": self.holdout_fraction,
                "n_held_out": self.n_held_out,
                "n_members": self.n_members,
            },
            "canaries": self.canaries,
        }


def held_out(customer_ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the customers kept out of training (the same in every step and the audit).

    A hash of the run seed and the customer id, not a random draw, so that generate, train and
    dp_audit agree without sharing a list of ids.
    """
    if fraction <= 0:
        return np.zeros(len(customer_ids), dtype=bool)
    out = np.empty(len(customer_ids), dtype=bool)
    for row, customer in enumerate(customer_ids):
        digest = hashlib.sha256(f"{_HOLDOUT_SALT}:{seed}:{customer}".encode()).digest()
        out[row] = int.from_bytes(digest[:8], "big") / 2.0**64 < fraction
    return out


def drop_held_out(
    train_part: pd.DataFrame, cfg: CanaryConfig, *, seed: int
) -> tuple[pd.DataFrame, int]:
    """The rows of ``train_part`` (one per customer, column customer_id) that may be trained on.

    Returns:
        The member rows and the number of held-out customers.
    """
    if not cfg.enabled or cfg.holdout_fraction <= 0:
        return train_part, 0
    mask = held_out(train_part["customer_id"].astype(str).tolist(), cfg.holdout_fraction, seed)
    n_out = int(mask.sum())
    if n_out == len(train_part):
        raise InputError(
            f"holdout_fraction={cfg.holdout_fraction} keeps all {n_out} customers out of training",
            column="customer_id",
        )
    logger.info("audit holdout: %d of %d customers kept out of training", n_out, len(train_part))
    return train_part.loc[~mask].reset_index(drop=True), n_out


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stream])


def _length(cfg: CanaryConfig, typical: int, longest: int, n_items: int) -> int:
    wanted = cfg.length if cfg.length is not None else typical
    return max(1, min(wanted, longest, n_items))


def _draw(rng: np.random.Generator, count: int) -> np.ndarray:
    """Independent inclusion flags, each True with probability 1/2."""
    return rng.random(count) < 0.5


def add_generator_canaries(
    records: list[list[int]],
    *,
    first_item_id: int,
    vocab_size: int,
    eos_id: int,
    max_length: int,
    cfg: CanaryConfig,
    seed: int,
    n_held_out: int = 0,
) -> tuple[list[list[int]], CanarySet]:
    """Append the included generator canaries to the token records of the real customers.

    A canary record has the frame of a real record (``[bos, <country>, ...]``: every token before
    the first item) with each frame position drawn from that position's tokens over all records,
    then ``length`` distinct catalogue items drawn uniformly, then eos.

    Args:
        records: one token record per real (member) customer.
        first_item_id: the first item token id; ids from it to ``vocab_size - 1`` are items.
        vocab_size: number of tokens.
        eos_id: the end token.
        max_length: most tokens per record.
        cfg: canary settings.
        seed: the run seed.
        n_held_out: customers the caller kept out of training (recorded, not used).

    Returns:
        The records to train on (the real ones, then the included canaries) and the canary set.
    """
    n_members = len(records)
    if not cfg.enabled or cfg.count == 0 or not records:
        return records, CanarySet("generator", seed, _fraction(cfg), n_held_out, n_members, [])
    rng = _rng(seed, _GENERATOR_STREAM)
    frames = [_frame_length(rec, first_item_id) for rec in records]
    frame_len = Counter(frames).most_common(1)[0][0]
    framed = [rec for rec, n in zip(records, frames, strict=True) if n == frame_len]
    items_per_record = [len(rec) - frame_len - 1 for rec in framed]
    n_items = vocab_size - first_item_id
    length = _length(
        cfg, int(np.median(items_per_record)), max_length - frame_len - 1, max(n_items, 1)
    )
    included = _draw(rng, cfg.count)
    canaries, extra = [], []
    for i in range(cfg.count):
        frame = [int(framed[int(rng.integers(len(framed)))][pos]) for pos in range(frame_len)]
        items = rng.choice(n_items, size=length, replace=False) + first_item_id
        tokens = [*frame, *(int(t) for t in items), int(eos_id)]
        canaries.append(
            {"id": f"{CANARY_PREFIX}{i + 1:05d}", "included": bool(included[i]), "tokens": tokens}
        )
        if included[i]:
            extra.append(tokens)
    canary_set = CanarySet("generator", seed, _fraction(cfg), n_held_out, n_members, canaries)
    logger.info(
        "generator canaries: %d of %d included, %d items each",
        canary_set.n_included,
        cfg.count,
        length,
    )
    return [*records, *extra], canary_set


def prepare_recommender(ts: Any, cfg: CanaryConfig, *, seed: int, max_history: int) -> tuple:
    """Drop the held-out real customers from a training set and add the included canaries.

    ``ts`` is train's ``TrainingSet``; its ``sequences`` (seq_id, source, customer_id, items,
    weight) lose the held-out real rows and gain one row per included canary (source "real",
    customer_id and seq_id ``canary-NNNNN``, weight 1), so both the per-customer record count and
    the accountant's ``n_units`` count them. A canary is ``length`` distinct item indices drawn
    uniformly from the catalogue (at most ``max_history + 1``, the window a record trains on).

    Returns:
        ``(training set, CanarySet)``.
    """
    sequences = ts.sequences
    if not cfg.enabled:
        real = int((sequences["source"] == "real").sum())
        return ts, CanarySet("recommender", seed, 0.0, 0, real, [])
    is_real = (sequences["source"] == "real").to_numpy()
    mask = np.zeros(len(sequences), dtype=bool)
    if cfg.holdout_fraction > 0:
        ids = sequences["customer_id"].astype(str).tolist()
        mask = held_out(ids, cfg.holdout_fraction, seed) & is_real
    n_out = int(mask.sum())
    if n_out == int(is_real.sum()):
        raise InputError(
            f"holdout_fraction={cfg.holdout_fraction} keeps all {n_out} real customers out of "
            "training",
            column="customer_id",
        )
    kept = sequences.loc[~mask]
    real_lengths = [len(s) for s in kept.loc[kept["source"] == "real", "items"]]
    n_items = len(ts.item_map)
    rng = _rng(seed, _RECOMMENDER_STREAM)
    canaries, rows = [], []
    if cfg.count and real_lengths:
        length = _length(cfg, int(np.median(real_lengths)), max_history + 1, n_items)
        included = _draw(rng, cfg.count)
        weight = float(kept.loc[kept["source"] == "real", "weight"].median())
        for i in range(cfg.count):
            items = [int(v) for v in rng.choice(n_items, size=length, replace=False) + 1]
            canary_id = f"{CANARY_PREFIX}{i + 1:05d}"
            canaries.append(
                {
                    "id": canary_id,
                    "included": bool(included[i]),
                    "items": items,
                    "item_ids": [ts.item_map.item_ids[v - 1] for v in items],
                }
            )
            if included[i]:
                rows.append(
                    {
                        "seq_id": canary_id,
                        "source": "real",
                        "customer_id": canary_id,
                        "items": items,
                        "weight": weight,
                    }
                )
    n_members = int((kept["source"] == "real").sum())
    if rows:
        kept = pd.concat([kept, pd.DataFrame(rows, columns=list(kept.columns))], ignore_index=True)
    canary_set = CanarySet("recommender", seed, cfg.holdout_fraction, n_out, n_members, canaries)
    logger.info(
        "recommender audit data: %d real customers held out, %d of %d canaries included",
        n_out,
        canary_set.n_included,
        len(canaries),
    )
    return dataclasses.replace(ts, sequences=kept.reset_index(drop=True)), canary_set


def save(directory: str | os.PathLike[str], canary_set: CanarySet) -> None:
    """Write ``canaries.json`` into a model directory."""
    write_json(Path(directory) / CANARIES_FILE, canary_set.to_dict())


def load(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The canary set saved beside a model, or None when the training had none.

    Raises:
        InputError: the file exists but lacks its keys or a canary lacks its flag.
    """
    path = Path(directory) / CANARIES_FILE
    if not path.is_file():
        return None
    raw = read_json(path)
    missing = [k for k in ("training", "seed", "holdout", "canaries") if k not in raw]
    if missing:
        raise InputError(f"canary file lacks keys {missing}", file=str(path))
    for row, canary in enumerate(raw["canaries"]):
        if not isinstance(canary, dict) or not isinstance(canary.get("included"), bool):
            raise InputError("canary lacks a boolean 'included'", file=str(path), row=row)
    return raw


def _fraction(cfg: CanaryConfig) -> float:
    return cfg.holdout_fraction if cfg.enabled else 0.0


def _frame_length(record: Sequence[int], first_item_id: int) -> int:
    """Tokens before the first item token (bos, country and any condition tokens)."""
    for pos, token in enumerate(record):
        if token >= first_item_id:
            return pos
    return len(record)
