"""Canary customers and the held-out split: seeded, half included, no real data, counted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common import canaries
from components.common.canaries import CanaryConfig
from components.common.errors import InputError
from components.common.ids import ItemMap

FIRST_ITEM = 10  # specials 0-3, countries 4-6, months or bands 7-9, items from 10
VOCAB = 60
EOS = 2


def _records(n: int = 300, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        frame = [1, int(rng.integers(4, 7)), int(rng.integers(7, 10))]
        items = rng.choice(
            np.arange(FIRST_ITEM, VOCAB), size=int(rng.integers(2, 9)), replace=False
        )
        out.append([*frame, *(int(i) for i in items), EOS])
    return out


def _add(records: list[list[int]], cfg: CanaryConfig, seed: int = 0):
    return canaries.add_generator_canaries(
        records,
        first_item_id=FIRST_ITEM,
        vocab_size=VOCAB,
        eos_id=EOS,
        max_length=16,
        cfg=cfg,
        seed=seed,
    )


def test_held_out_is_a_seeded_hash_of_the_id() -> None:
    ids = [f"{12000 + i}" for i in range(4000)]
    mask = canaries.held_out(ids, 0.1, seed=3)
    assert 0.08 < mask.mean() < 0.12
    # The same customer gets the same answer in any order and any call...
    again = canaries.held_out(ids[::-1], 0.1, seed=3)[::-1]
    assert (mask == again).all()
    # ...and another seed holds out other customers.
    assert (mask != canaries.held_out(ids, 0.1, seed=4)).sum() > 200
    assert not canaries.held_out(ids, 0.0, seed=3).any()


def test_drop_held_out_keeps_members_only() -> None:
    part = pd.DataFrame({"customer_id": [f"c{i}" for i in range(500)], "items": [["a"]] * 500})
    kept, n_out = canaries.drop_held_out(part, CanaryConfig(holdout_fraction=0.2), seed=1)
    mask = canaries.held_out(part["customer_id"].tolist(), 0.2, 1)
    assert n_out == int(mask.sum()) and 60 < n_out < 140
    assert kept["customer_id"].tolist() == part.loc[~mask, "customer_id"].tolist()
    same, none_out = canaries.drop_held_out(part, CanaryConfig(enabled=False), seed=1)
    assert none_out == 0 and same is part


def test_holdout_of_everyone_is_refused() -> None:
    part = pd.DataFrame({"customer_id": ["a"], "items": [["x"]]})
    cfg = CanaryConfig(holdout_fraction=0.5)
    seed = next(s for s in range(100) if canaries.held_out(["a"], 0.5, s)[0])
    with pytest.raises(InputError, match="keeps all 1 customers out"):
        canaries.drop_held_out(part, cfg, seed=seed)


def test_generator_canaries_are_random_catalogue_sequences() -> None:
    records = _records()
    out, canary_set = _add(records, CanaryConfig(count=400))
    assert len(canary_set.canaries) == 400
    included = [c for c in canary_set.canaries if c["included"]]
    # Each included with probability 1/2: 400 draws land well inside 200 +- 40.
    assert 160 < len(included) < 240
    assert canary_set.n_included == len(included)
    # The real records come first, unchanged; then exactly the included canaries.
    assert out[: len(records)] == records
    assert out[len(records) :] == [c["tokens"] for c in included]
    lengths = sorted(len(r) - 4 for r in records)
    median = int(np.median(lengths))
    frames_seen = [{r[pos] for r in records} for pos in range(3)]
    for canary in canary_set.canaries:
        tokens = canary["tokens"]
        frame, items = tokens[:3], tokens[3:-1]
        assert tokens[-1] == EOS
        assert all(t in seen for t, seen in zip(frame, frames_seen, strict=True))
        assert len(items) == median
        assert len(set(items)) == len(items)
        assert all(FIRST_ITEM <= t < VOCAB for t in items)
    # Random, not copies of real customers.
    real = {tuple(r) for r in records}
    assert not any(tuple(c["tokens"]) in real for c in canary_set.canaries)


def test_generator_canaries_are_seeded_and_configurable() -> None:
    records = _records()
    _, first = _add(records, CanaryConfig(count=50, length=4), seed=7)
    _, again = _add(records, CanaryConfig(count=50, length=4), seed=7)
    _, other = _add(records, CanaryConfig(count=50, length=4), seed=8)
    assert first.canaries == again.canaries
    assert first.canaries != other.canaries
    assert {len(c["tokens"]) for c in first.canaries} == {3 + 4 + 1}
    out, empty = _add(records, CanaryConfig(enabled=False))
    assert out == records and empty.canaries == []


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    _, canary_set = _add(_records(), CanaryConfig(count=20))
    canaries.save(tmp_path, canary_set)
    loaded = canaries.load(tmp_path)
    assert loaded["count"] == 20
    assert loaded["n_included"] == canary_set.n_included
    assert loaded["canaries"] == canary_set.canaries
    assert loaded["holdout"]["fraction"] == 0.1
    assert canaries.load(tmp_path / "nowhere") is None


def test_load_refuses_a_canary_without_its_flag(tmp_path: Path) -> None:
    payload = {"training": "generator", "seed": 0, "holdout": {}, "canaries": [{"tokens": [1]}]}
    (tmp_path / canaries.CANARIES_FILE).write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(InputError, match="boolean 'included'"):
        canaries.load(tmp_path)


@dataclasses.dataclass(frozen=True)
class _TrainingSet:
    item_map: ItemMap
    sequences: pd.DataFrame


def _training_set(n_real: int = 400, n_items: int = 40) -> _TrainingSet:
    rng = np.random.default_rng(0)
    rows = [
        (
            f"real-{i}",
            "real",
            f"c{i}",
            [int(v) for v in rng.choice(n_items, 5, replace=False) + 1],
            1.0,
        )
        for i in range(n_real)
    ]
    rows += [(f"syn-{i}", "synthetic", None, [1, 2, 3], 0.5) for i in range(50)]
    frame = pd.DataFrame(rows, columns=["seq_id", "source", "customer_id", "items", "weight"])
    return _TrainingSet(ItemMap([f"{30000 + i}" for i in range(n_items)]), frame)


def test_recommender_holds_out_real_customers_and_adds_included_canaries() -> None:
    ts = _training_set()
    cfg = CanaryConfig(count=60, holdout_fraction=0.1)
    out, canary_set = canaries.prepare_recommender(ts, cfg, seed=5, max_history=3)
    seq = out.sequences
    held = canaries.held_out([f"c{i}" for i in range(400)], 0.1, 5)
    assert canary_set.n_held_out == int(held.sum())
    assert canary_set.n_members == 400 - int(held.sum())
    real = seq[seq["source"] == "real"]
    canary_rows = real[real["customer_id"].str.startswith(canaries.CANARY_PREFIX)]
    assert len(canary_rows) == canary_set.n_included
    assert 15 < canary_set.n_included < 45
    # The held-out customers are gone; synthetic rows stay.
    kept_ids = set(real["customer_id"])
    assert not any(f"c{i}" in kept_ids for i in np.nonzero(held)[0])
    assert (seq["source"] == "synthetic").sum() == 50
    # Canaries: max_history + 1 = 4 distinct catalogue items, weight of a real customer.
    for canary in canary_set.canaries:
        assert len(canary["items"]) == 4 == len(set(canary["items"]))
        assert all(1 <= v <= 40 for v in canary["items"])
        assert canary["item_ids"] == [ts.item_map.item_ids[v - 1] for v in canary["items"]]
    assert set(canary_rows["weight"]) == {1.0}
    unchanged, none = canaries.prepare_recommender(
        ts, CanaryConfig(enabled=False), seed=5, max_history=3
    )
    assert unchanged is ts and none.canaries == []
