"""The fuse step: real training sequences + synthetic sessions + item features -> training_set/.

Real sequences are the training parts of the shared leave-last-out split, so held-out (valid and
test) items of real customers never enter a training sequence. Synthetic sessions are mapped to
item indices; unknown items are dropped, then sequences that are too short or exact copies of a
real training sequence (a memorised customer carries no new information, only risk) are dropped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.common import artifacts as art
from components.common.errors import InputError
from components.common.ids import ItemMap
from components.common.recommender_model import COUNTRIES, UNKNOWN_COUNTRY
from components.common.splits import leave_last_out
from components.fuse.config import FuseConfig
from components.fuse.embeddings import EMBEDDING_DIM, embed_texts
from components.ingest import countries as public_countries

logger = logging.getLogger(__name__)

SYNTHETIC_COLUMNS = ("synthetic_id", "country", "items")
REAL, SYNTHETIC = "real", "synthetic"


# Which item features come from real data, synthetic data or both, and why (the report shows it).
FEATURE_SOURCES = {
    "popularity": "real: counts of real training customers; synthetic sessions would count "
    "the generator's own preferences twice and drift towards what it over-samples",
    "text_embedding": "catalogue: MiniLM vectors of the item descriptions, the same whatever "
    "the purchase data",
    "price_band": "catalogue: quantile band of the item's median real unit price",
    "item_id_embedding": "both: learned by the recommender from real and synthetic sequences "
    "(synthetic ones down-weighted by synthetic_weight)",
    "sequence_transitions": "both: next-item targets from real and synthetic sequences",
}
# Customer features of the recommender and where they come from (the report shows it).
CUSTOMER_FEATURE_SOURCES = {
    "country": "real: the customer's country in the cleaned sequences (Feast `country` when "
    "serving); the vocabulary is the public list of cleaned/countries.json (ingest.countries), "
    "never the customers' countries, a synthetic sequence carries its generated country mapped "
    "with it (outside the list -> unknown)",
    "activity": "real and synthetic: the number of purchases before each position of the "
    "sequence itself, log2-bucketed (Feast `n_items` minus the history passed when serving)",
}


def country_vocabulary(public: list[str]) -> list[str]:
    """``["<unknown>", sorted public countries]``: index 0 is the unknown country.

    Args:
        public: the public country list (``cleaned/countries.json``), never the customers'
            countries, so that the vocabulary reveals nothing about who is in the data.
    """
    names = sorted(set(public) - {UNKNOWN_COUNTRY, public_countries.UNKNOWN})
    return [UNKNOWN_COUNTRY, *names]


def country_ids(vocab: list[str], countries: pd.Series) -> np.ndarray:
    """int64 index of each country in ``vocab``; missing or unseen countries map to 0."""
    index = {name: i for i, name in enumerate(vocab)}
    return np.asarray(
        [index.get(c, 0) if isinstance(c, str) else 0 for c in countries], dtype=np.int64
    )


def events_before(sequences: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Each customer's sequence cut to the items first bought strictly before ``cutoff``.

    Customers with nothing left are dropped. Needs the ``ts`` column (time of each item).
    """
    keep_items, keep_ts = [], []
    for items, times in zip(sequences["items"], sequences["ts"], strict=True):
        times = pd.to_datetime(pd.Series(list(times)), utc=True)
        mask = (times < cutoff).to_numpy()
        keep_items.append([i for i, m in zip(items, mask, strict=True) if m])
        keep_ts.append(list(times[mask]))
    out = sequences.assign(items=keep_items, ts=keep_ts)
    return out[out["items"].map(len) > 0].reset_index(drop=True)


def build_item_map(items: pd.DataFrame) -> ItemMap:
    """The item map over the cleaned catalogue, in sorted item id order (stable across runs)."""
    ids = items["item_id"].astype(str)
    dupes = ids[ids.duplicated()].tolist()
    if dupes:
        raise InputError(f"items.parquet repeats item ids {dupes[:5]}", column="item_id")
    return ItemMap(sorted(ids))


def encode_real(item_map: ItemMap, sequences: pd.Series, *, file: str) -> list[list[int]]:
    """Indices of real sequences; a real item missing from the catalogue is an input error."""
    out = []
    for row, items in enumerate(sequences):
        try:
            out.append(item_map.encode([str(i) for i in items]))
        except InputError as exc:
            raise InputError(
                f"sequence item is not in items.parquet: {exc}", file=file, column="items", row=row
            ) from exc
    return out


def map_synthetic(
    item_map: ItemMap,
    synthetic: pd.DataFrame,
    real_train: list[list[int]],
    *,
    min_length: int,
    near_duplicate_jaccard: float = 1.0,
    max_synthetic: int | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Synthetic sessions as index sequences, with the counts of what was dropped and why.

    In order: unknown items are dropped from a sequence; then a sequence is dropped when it
    repeats an item (real sequences hold distinct items, so a repeat is an invalid sample), is
    shorter than ``min_length``, is an exact copy of a real training sequence, or is a
    near-duplicate (item-set Jaccard >= ``near_duplicate_jaccard``) of a real training sequence
    or of a synthetic sequence kept before it. At most ``max_synthetic`` are kept.
    """
    real_set = {tuple(s) for s in real_train}
    index = _SetIndex()
    for seq in real_train:
        index.add(frozenset(seq))
    kept: list[tuple[str, list[int], Any]] = []
    counts = {
        "unknown_items": 0,
        "short": 0,
        "copies": 0,
        "repeats": 0,
        "near_duplicates": 0,
        "over_max": 0,
    }
    country = synthetic["country"] if "country" in synthetic.columns else [None] * len(synthetic)
    rows = zip(synthetic["synthetic_id"], synthetic["items"], country, strict=True)
    for sid, items, cty in rows:
        raw = [str(i) for i in items]
        encoded = item_map.encode(raw, skip_unknown=True)
        counts["unknown_items"] += len(raw) - len(encoded)
        if len(set(encoded)) != len(encoded):
            counts["repeats"] += 1
        elif len(encoded) < min_length:
            counts["short"] += 1
        elif tuple(encoded) in real_set:
            counts["copies"] += 1
        elif index.max_jaccard(frozenset(encoded)) >= near_duplicate_jaccard:
            counts["near_duplicates"] += 1
        elif max_synthetic is not None and len(kept) >= max_synthetic:
            counts["over_max"] += 1
        else:
            kept.append((str(sid), encoded, cty))
            index.add(frozenset(encoded))
    frame = pd.DataFrame(kept, columns=["synthetic_id", "items", "country"])
    return frame, counts


class _SetIndex:
    """Item sets with an inverted index, for the largest Jaccard similarity to a new set."""

    def __init__(self) -> None:
        self.sets: list[frozenset[int]] = []
        self.by_item: dict[int, list[int]] = {}

    def add(self, items: frozenset[int]) -> None:
        ref = len(self.sets)
        self.sets.append(items)
        for item in items:
            self.by_item.setdefault(item, []).append(ref)

    def max_jaccard(self, items: frozenset[int]) -> float:
        shared: dict[int, int] = {}
        for item in items:
            for ref in self.by_item.get(item, ()):
                shared[ref] = shared.get(ref, 0) + 1
        best = 0.0
        for ref, inter in shared.items():
            best = max(best, inter / (len(items) + len(self.sets[ref]) - inter))
        return best


def popularity(item_map: ItemMap, real_train: list[list[int]]) -> np.ndarray:
    """Number of real training customers who bought each item, by item index (0 for padding)."""
    counts = np.zeros(item_map.vocab_size, dtype=np.int64)
    for seq in real_train:
        counts[np.unique(np.asarray(seq, dtype=np.int64))] += 1
    counts[0] = 0
    return counts


def _write_train_sequences(path: Path, frame: pd.DataFrame) -> None:
    schema = pa.schema(
        [
            ("seq_id", pa.string()),
            ("source", pa.string()),
            ("customer_id", pa.string()),
            ("items", pa.list_(pa.int64())),
            ("weight", pa.float64()),
            ("country_id", pa.int64()),
        ]
    )
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


def _write_eval_cases(path: Path, frame: pd.DataFrame) -> None:
    schema = pa.schema(
        [
            ("customer_id", pa.string()),
            ("history", pa.list_(pa.int64())),
            ("valid_item", pa.int64()),
            ("test_item", pa.int64()),
            ("country_id", pa.int64()),
        ]
    )
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


def _write_item_features(path: Path, frame: pd.DataFrame, vectors: np.ndarray) -> None:
    flat = pa.array(vectors.astype(np.float32).reshape(-1), type=pa.float32())
    embedding = pa.FixedSizeListArray.from_arrays(flat, EMBEDDING_DIM).cast(pa.list_(pa.float32()))
    table = pa.table(
        {
            "item_index": pa.array(frame["item_index"], type=pa.int64()),
            "item_id": pa.array(frame["item_id"], type=pa.string()),
            "description": pa.array(frame["description"], type=pa.string()),
            "price_band": pa.array(frame["price_band"], type=pa.int64()),
            "popularity": pa.array(frame["popularity"], type=pa.int64()),
            "text_embedding": embedding,
        }
    )
    pq.write_table(table, path)


def run(
    cfg: FuseConfig, cleaned_dir: Path, synthetic_dir: Path, out_dir: Path, *, seed: int
) -> dict[str, Any]:
    """Build ``training_set/`` from ``cleaned/`` and ``synthetic/``.

    Args:
        cfg: the fuse settings.
        cleaned_dir: ingest's output (items.parquet, sequences.parquet).
        synthetic_dir: generate's output (synthetic_sessions.parquet).
        out_dir: where training_set/ is written (atomically).
        seed: the run seed; fuse is deterministic and only records it.

    Returns:
        A summary: counts of real and synthetic sequences, what was dropped, eval cases, items.

    Raises:
        InputError: a missing file or column, or a real sequence naming an unknown item.
    """
    timer = art.StepTimer("fuse")
    cleaned_dir, synthetic_dir = Path(cleaned_dir), Path(synthetic_dir)
    items_file = cleaned_dir / art.ITEMS
    seq_file = cleaned_dir / art.SEQUENCES
    syn_file = synthetic_dir / art.SYNTHETIC_SESSIONS
    items = art.read_parquet(items_file, ("item_id", "description", "price_band"))
    sequences = art.read_parquet(seq_file, ("customer_id", "country", "items", "ts"))
    synthetic = art.read_parquet(syn_file, SYNTHETIC_COLUMNS)
    if items.empty:
        raise InputError("the catalogue is empty", file=str(items_file))
    if items["description"].isna().any():
        row = int(np.flatnonzero(items["description"].isna().to_numpy())[0])
        raise InputError(
            "an item has no description", file=str(items_file), column="description", row=row
        )

    # 1. Catalogue: sorted ids -> indices 1..N.
    item_map = build_item_map(items)
    items = items.assign(item_id=items["item_id"].astype(str)).set_index("item_id")
    items = items.loc[item_map.item_ids].reset_index()

    # 2. Point in time: with a cutoff, later events vanish before any split or feature.
    n_before_cutoff = int(sequences["items"].map(len).sum())
    if cfg.cutoff is not None:
        sequences = events_before(sequences, pd.Timestamp(cfg.cutoff))

    # 3. Real sequences: training parts only, so held-out items stay out of training.
    split = leave_last_out(sequences[["customer_id", "country", "items"]])
    real_train = encode_real(item_map, split.train["items"], file=str(seq_file))
    # Customer features: the country vocabulary is the public list ingest wrote (an older
    # cleaned/ without it falls back to the observed countries, with a warning).
    public = public_countries.vocabulary(cleaned_dir, sequences["country"])
    countries = country_vocabulary(public["countries"])
    real = pd.DataFrame(
        {
            "seq_id": [f"real-{c}" for c in split.train["customer_id"]],
            "source": REAL,
            "customer_id": split.train["customer_id"].astype(str).to_numpy(),
            "items": real_train,
            "weight": 1.0,
            "country_id": country_ids(countries, split.train["country"]),
        }
    )
    if real["customer_id"].duplicated().any():
        dup = real.loc[real["customer_id"].duplicated(), "customer_id"].iloc[0]
        raise InputError(
            f"customer {dup!r} has more than one sequence; user-level DP needs one per customer",
            file=str(seq_file),
            column="customer_id",
        )

    # 4. Synthetic sessions: known items only, valid, long enough, and neither a copy nor a
    # near-duplicate of a real customer or of another synthetic session.
    syn, dropped = map_synthetic(
        item_map,
        synthetic,
        real_train,
        min_length=cfg.min_synthetic_length,
        near_duplicate_jaccard=cfg.near_duplicate_jaccard,
        max_synthetic=cfg.max_synthetic,
    )
    syn_frame = pd.DataFrame(
        {
            "seq_id": [f"syn-{s}" for s in syn["synthetic_id"]],
            "source": SYNTHETIC,
            "customer_id": None,
            "items": list(syn["items"]),
            "weight": float(cfg.synthetic_weight),
            "country_id": country_ids(countries, syn["country"]),
        }
    )
    train = pd.concat([real, syn_frame], ignore_index=True)

    # 5. Eval cases from the same split.
    ev = split.eval
    eval_cases = pd.DataFrame(
        {
            "customer_id": ev["customer_id"].astype(str).to_numpy(),
            "history": encode_real(item_map, ev["history"], file=str(seq_file)),
            "valid_item": encode_real(
                item_map, [[v] for v in ev["valid_item"]], file=str(seq_file)
            ),
            "test_item": encode_real(item_map, [[t] for t in ev["test_item"]], file=str(seq_file)),
            "country_id": country_ids(countries, ev["country"]),
        }
    )
    eval_cases["valid_item"] = [v[0] for v in eval_cases["valid_item"]]
    eval_cases["test_item"] = [t[0] for t in eval_cases["test_item"]]

    # 6. Item features: popularity among real training customers and MiniLM text vectors.
    pop = popularity(item_map, real_train)
    embed_started = time.perf_counter()
    vectors = embed_texts(
        items["description"].astype(str).tolist(), batch_size=cfg.embedding_batch_size
    )
    embed_seconds = time.perf_counter() - embed_started
    features = pd.DataFrame(
        {
            "item_index": np.arange(1, len(item_map) + 1, dtype=np.int64),
            "item_id": item_map.item_ids,
            "description": items["description"].astype(str).to_numpy(),
            "price_band": items["price_band"].astype(np.int64).to_numpy(),
            "popularity": pop[1:],
        }
    )

    summary: dict[str, Any] = {
        "seed": seed,
        "n_items": len(item_map),
        "n_real_sequences": len(real),
        "n_synthetic_read": len(synthetic),
        "n_synthetic_kept": len(syn_frame),
        "synthetic_dropped": dropped,
        "n_train_sequences": len(train),
        "n_eval_cases": len(eval_cases),
        "synthetic_weight": float(cfg.synthetic_weight),
        "embedding_dim": EMBEDDING_DIM,
        "cutoff": cfg.cutoff.isoformat() if cfg.cutoff is not None else None,
        "n_real_events_dropped_by_cutoff": n_before_cutoff - int(sequences["items"].map(len).sum()),
        "feature_sources": FEATURE_SOURCES,
        "customer_feature_sources": CUSTOMER_FEATURE_SOURCES,
        "n_countries": len(countries),
        "countries_source": public["source"],
        "embedding_seconds": round(embed_seconds, 3),
    }
    with art.atomic_dir(out_dir) as tmp:
        item_map.save(tmp / art.ITEM_MAP)
        _write_train_sequences(tmp / art.TRAIN_SEQUENCES, train)
        _write_eval_cases(tmp / art.EVAL_CASES, eval_cases)
        _write_item_features(tmp / art.ITEM_FEATURES, features, vectors)
        art.write_json(tmp / COUNTRIES, {"countries": countries, "source": public["source"]})
        timer.write(tmp, summary)
    logger.info(
        "fuse: %d items, %d real + %d synthetic sequences (dropped %s), %d eval cases",
        len(item_map),
        len(real),
        len(syn_frame),
        dropped,
        len(eval_cases),
    )
    return summary
