"""Full-catalogue ranking metrics: HR@k and NDCG@k of one held-out item per customer.

Every item of the catalogue is ranked except padding and the items already in the customer's
history (a shop does not recommend what the customer has just bought). Ties are broken by item
index, lower first, so a constant scorer still gets a well-defined rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from components.train.data import left_pad


def ranks(
    scores: np.ndarray, histories: Sequence[Sequence[int]], targets: Sequence[int]
) -> np.ndarray:
    """0-based rank of each target among the non-excluded items ([n] int64).

    Args:
        scores: [n, n_items + 1] scores; column 0 is padding.
        histories: per case, the item indices to exclude.
        targets: per case, the held-out item index.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, vocab = scores.shape
    out = np.empty(n, dtype=np.int64)
    index = np.arange(vocab)
    for row in range(n):
        target = int(targets[row])
        excluded = np.zeros(vocab, dtype=bool)
        excluded[0] = True
        excluded[np.asarray(list(histories[row]), dtype=np.int64)] = True
        if excluded[target]:
            # A target the customer already has cannot be recommended: count it as a miss.
            out[row] = vocab
            continue
        s = scores[row]
        t = s[target]
        better = (s > t) | ((s == t) & (index < target))
        out[row] = int(np.count_nonzero(better & ~excluded))
    return out


def hit_rate_ndcg(rank: np.ndarray, k: int) -> dict[str, float]:
    """HR@k and NDCG@k (one relevant item, so the ideal DCG is 1) from 0-based ranks."""
    rank = np.asarray(rank)
    if rank.size == 0:
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0}
    hit = rank < k
    gains = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float(gains.mean())}


def model_scores(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    *,
    max_history: int,
    batch_size: int,
) -> np.ndarray:
    """Next-item scores [n, n_items + 1] of a recommender for each history (last max_history)."""
    was_training = model.training
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(histories), batch_size):
            batch = left_pad(histories[start : start + batch_size], max_history)
            parts.append(model.score_next(batch).float().numpy())
    model.train(was_training)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts)


def evaluate_scorer(
    scores: np.ndarray, histories: Sequence[Sequence[int]], targets: Sequence[int], k: int
) -> dict[str, float]:
    """HR@k and NDCG@k of precomputed scores."""
    return hit_rate_ndcg(ranks(scores, histories, targets), k)


def popularity_scores(popularity: np.ndarray, n_cases: int) -> np.ndarray:
    """The popularity baseline's scores: the same catalogue ranking for every case."""
    return np.broadcast_to(np.asarray(popularity, dtype=np.float64), (n_cases, len(popularity)))
