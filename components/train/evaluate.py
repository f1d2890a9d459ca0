"""Ranking metrics of one held-out item per customer.

Full-catalogue mode (the one the pipeline reports): every item of the catalogue is ranked except
padding and the items already in the customer's history (a shop does not recommend what the
customer has just bought). Ties are broken by item index, lower first, so a constant scorer
still gets a well-defined rank. HR@k, NDCG@k, MRR and catalogue coverage (the share of items
that appear in at least one top-k list).

Sampled mode (only for comparison with papers that use it, e.g. SASRec / S3-Rec on Amazon
Beauty): the held-out item is ranked against ``n_negatives`` items drawn uniformly without
replacement from the catalogue items the customer never interacted with (history, validation
and test items all excluded). A negative that ties with the target counts as ranked above it,
so ties never flatter a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from components.train.data import items_before_window, left_pad


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
    country_ids: Sequence[int] | None = None,
    n_before: Sequence[int] | None = None,
    max_history: int,
    batch_size: int,
) -> np.ndarray:
    """Next-item scores [n, n_items + 1] of a recommender for each history (last max_history).

    Args:
        model: a :class:`SequentialRecommender` (or anything with its ``score_next``).
        histories: item indices per case, oldest first.
        country_ids: country index per case (0 = unknown); None: all unknown.
        n_before: purchases per case before the first item of ``histories`` (None: 0). The items
            of a history beyond the last ``max_history`` are added to it, so the model always
            gets the count of purchases before its window.
        max_history: the window the model reads.
        batch_size: cases per forward pass.
    """
    n = len(histories)
    countries = np.zeros(n, np.int64) if country_ids is None else np.asarray(country_ids, np.int64)
    before = np.zeros(n, np.int64) if n_before is None else np.asarray(n_before, np.int64)
    if countries.shape != (n,) or before.shape != (n,):
        raise ValueError(
            f"country_ids {countries.shape} and n_before {before.shape} need one value per "
            f"history ({n})"
        )
    before = before + items_before_window(histories, max_history)
    was_training = model.training
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = start + batch_size
            batch = left_pad(histories[start:stop], max_history)
            scores = model.score_next(
                batch,
                torch.from_numpy(countries[start:stop].copy()),
                torch.from_numpy(before[start:stop].copy()),
            )
            parts.append(scores.float().numpy())
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


def ranking_metrics(rank: np.ndarray, k: int) -> dict[str, float]:
    """HR@k, NDCG@k and MRR (mean of 1 / (rank + 1), misses included) from 0-based ranks."""
    rank = np.asarray(rank)
    out = hit_rate_ndcg(rank, k)
    out["mrr"] = float((1.0 / (rank + 1.0)).mean()) if rank.size else 0.0
    return out


def top_k(scores: np.ndarray, histories: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """[n, k] item indices each case would be shown (padding and history excluded)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    n, vocab = scores.shape
    scores[:, 0] = -np.inf
    for row in range(n):
        scores[row, np.asarray(list(histories[row]), dtype=np.int64)] = -np.inf
    k = min(k, vocab - 1)
    # Stable order: higher score first, then lower index, as ranks() breaks ties.
    part = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k] if k < vocab else None
    out = np.empty((n, k), dtype=np.int64)
    for row in range(n):
        cand = part[row] if part is not None else np.arange(vocab)
        order = np.lexsort((cand, -scores[row, cand]))
        out[row] = cand[order][:k]
    return out


def coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the catalogue's ``n_items`` items that appear in at least one top-k list."""
    if n_items <= 0:
        return 0.0
    shown = np.unique(np.asarray(recommended).reshape(-1))
    return float(np.count_nonzero(shown > 0) / n_items)


def full_metrics(
    scores: np.ndarray,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    k: int,
    *,
    rank: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-catalogue HR@k, NDCG@k, MRR and coverage of precomputed scores."""
    if rank is None:
        rank = ranks(scores, histories, targets)
    out = ranking_metrics(rank, k)
    n_items = scores.shape[1] - 1
    out["coverage"] = coverage(top_k(scores, histories, k), n_items) if len(rank) else 0.0
    return out


def sample_negatives(
    seen: Sequence[Sequence[int]], n_items: int, n_negatives: int, *, seed: int
) -> np.ndarray:
    """[n, n_negatives] items drawn uniformly without replacement from each case's unseen items.

    Args:
        seen: per case, every item index the customer interacted with (targets included).
        n_items: catalogue size (items are 1..n_items).
        n_negatives: negatives per case.
        seed: seeds the draw, so models compared in one run see the same negatives.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((len(seen), n_negatives), dtype=np.int64)
    for row, items in enumerate(seen):
        excluded = set(int(i) for i in items)
        if n_items - len(excluded) < n_negatives:
            raise ValueError(
                f"case {row} has only {n_items - len(excluded)} unseen items; "
                f"{n_negatives} negatives requested"
            )
        picked: list[int] = []
        chosen: set[int] = set()
        # Rejection sampling: histories are tiny next to the catalogue, so few draws are wasted.
        while len(picked) < n_negatives:
            for c in rng.integers(1, n_items + 1, size=2 * n_negatives):
                c = int(c)
                if c not in excluded and c not in chosen:
                    chosen.add(c)
                    picked.append(c)
                    if len(picked) == n_negatives:
                        break
        out[row] = picked
    return out


def sampled_ranks(scores: np.ndarray, targets: Sequence[int], negatives: np.ndarray) -> np.ndarray:
    """0-based rank of each target among itself and its negatives (ties count against it)."""
    scores = np.asarray(scores)
    rows = np.arange(scores.shape[0])
    target_scores = scores[rows, np.asarray(targets, dtype=np.int64)]
    neg_scores = np.take_along_axis(scores, negatives, axis=1)
    return np.count_nonzero(neg_scores >= target_scores[:, None], axis=1).astype(np.int64)
