"""Train on synthetic, test on real, with the recommender the pipeline deploys.

The quality report's first-order next-item model says whether synthetic sessions keep real
transitions; this module asks the question platform users care about: is the SASRec-style
recommender of the train step (``components.common.recommender_model``) any good when it learns
from synthetic sessions alone? The same model, with the same settings, seed and epochs, is
trained once on the synthetic sessions and once on the real training sessions, and both are
scored on the held-out customers' last item given the rest (full catalogue, history excluded),
beside the popularity of the real training sessions for scale.

The generate step has no item features yet (fuse builds them), so this recommender runs without
the MiniLM content part and without customer features: item ids, positions and the price band.
Both trainings run without DP and without early stopping, so neither looks at held-out items;
the real-only row is a reference figure of the report, never a shipped model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.common.ids import ItemMap
from components.common.recommender_model import TEXT_DIM
from components.fuse.logic import popularity
from components.generate.tokenizer import Session
from components.train.config import TrainConfig
from components.train.data import TrainingSet, next_item_records
from components.train.evaluate import evaluate_scorer, model_scores, popularity_scores
from components.train.logic import fit

logger = logging.getLogger(__name__)

K = 10


def _training_set(catalogue: Sequence[str], bands: dict[str, int] | None) -> TrainingSet:
    """The catalogue side of a TrainingSet: ids, price bands, no text and no customers."""
    item_map = ItemMap(list(catalogue))
    n = len(item_map)
    band_of = bands or {}
    price_bands = torch.zeros(n + 1, dtype=torch.long)
    for index, item in enumerate(item_map.item_ids, start=1):
        price_bands[index] = int(band_of.get(item, 0))
    return TrainingSet(
        item_map=item_map,
        sequences=pd.DataFrame(columns=["items", "weight"]),
        eval_cases=pd.DataFrame(columns=["customer_id", "history", "valid_item", "test_item"]),
        text_embeddings=torch.zeros(n + 1, TEXT_DIM),
        price_bands=price_bands,
        popularity=np.zeros(n + 1, dtype=np.int64),
        n_price_bands=max(int(price_bands.max()) + 1, 1),
        countries=(),
    )


def _config(epochs: int) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "epochs": epochs,
            "content_dim": 0,
            "customer_features": False,
            "id_dropout": 0.0,
            "dp": {"enabled": False},
            "canaries": {"enabled": False},
        }
    )


def recommender_utility(
    synthetic: Sequence[Session],
    train: Sequence[Session],
    cases: Sequence[tuple[list[str], str]],
    *,
    catalogue: Sequence[str],
    bands: dict[str, int] | None,
    epochs: int,
    seed: int,
) -> dict[str, Any]:
    """HR@10 and NDCG@10 of the recommender trained on each source, and of popularity.

    Args:
        synthetic: the synthetic sessions.
        train: the real training sessions (what the generator learnt from).
        cases: held-out (history, next item) pairs, as item ids.
        catalogue: the item ids the generator knows; anything else in a case is dropped.
        bands: price band per item (None: one band).
        epochs: epochs of each training (the same for both sources).
        seed: seeds both trainings alike.
    """
    started = time.perf_counter()
    ts = _training_set(catalogue, bands)
    cfg = _config(epochs)
    item_map = ts.item_map
    histories, targets = [], []
    for history, target in cases:
        encoded = item_map.encode(history, skip_unknown=True)
        if encoded and target in item_map:
            histories.append(encoded)
            targets.append(item_map.index(target))
    out: dict[str, Any] = {
        "model": f"the train step's recommender without content or customer features, "
        f"{epochs} epochs, no DP, the same seed for both sources",
        "n_cases": len(targets),
        "epochs": epochs,
    }

    encoded_sources = {
        name: [item_map.encode(s.items, skip_unknown=True) for s in sessions]
        for name, sessions in (("synthetic_only", synthetic), ("real_only", train))
    }
    # Sessions never repeat an item, so sessions holding an item = its count in them.
    counts = popularity(item_map, encoded_sources["real_only"])
    out["popularity"] = evaluate_scorer(
        popularity_scores(counts, len(targets)), histories, targets, K
    )

    for name, encoded in encoded_sources.items():
        sequences = [s for s in encoded if len(s) >= 2]
        if not sequences or not targets:
            out[name] = {f"hr@{K}": 0.0, f"ndcg@{K}": 0.0, "n_sequences": len(sequences)}
            continue
        data = next_item_records(sequences, [1.0] * len(sequences), cfg.max_history)
        fitted = fit(
            f"utility-{name}",
            data,
            ts,
            cfg,
            seed=seed,
            n_units=len(sequences),
            delta=1.0 / (10 * len(sequences)),
            training=f"utility_{name}",
        )
        scores = model_scores(
            fitted.model, histories, max_history=cfg.max_history, batch_size=cfg.eval_batch_size
        )
        out[name] = {
            **evaluate_scorer(scores, histories, targets, K),
            "n_sequences": len(sequences),
        }
    real = out["real_only"][f"hr@{K}"]
    out["hr_ratio"] = out["synthetic_only"][f"hr@{K}"] / real if real > 0 else None
    out["wall_s"] = round(time.perf_counter() - started, 3)
    logger.info(
        "recommender utility on %d held-out cases: HR@10 synthetic %.4f, real %.4f, "
        "popularity %.4f (%.1f s)",
        len(targets),
        out["synthetic_only"][f"hr@{K}"],
        real,
        out["popularity"][f"hr@{K}"],
        out["wall_s"],
    )
    return out
