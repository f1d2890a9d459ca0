"""Non-neural baselines the recommenders are compared with.

- Popularity (:func:`components.train.evaluate.popularity_scores`): the same ranking for everyone.
- Item-to-item co-occurrence kNN (:class:`CooccurrenceKNN`): two items are similar when the same
  training customers bought both (cosine over customer sets); a customer's score for an item is
  the recency-weighted sum of its similarity to the items of their history, each item keeping
  only its ``neighbours`` most similar items. Items no training customer bought score 0, and
  ties fall back to popularity (a tiny tie-break term), so a customer with an unknown history
  still gets the popular items.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)


class CooccurrenceKNN:
    """Item-to-item cosine kNN over customer co-occurrence.

    Args:
        sequences: training item-index sequences (one per customer or session).
        n_items: catalogue size (items are 1..n_items; 0 is padding).
        neighbours: similar items kept per item (the kNN's k).
        recent: how many of a customer's latest items vote (older ones count for nothing).
        decay: vote weight of the j-th most recent item is ``decay ** j``.
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        n_items: int,
        *,
        neighbours: int = 100,
        recent: int = 20,
        decay: float = 0.8,
    ) -> None:
        self.n_items = n_items
        self.recent = recent
        self.decay = decay
        rows, cols = [], []
        for row, seq in enumerate(sequences):
            items = np.unique(np.asarray(seq, dtype=np.int64))
            rows.extend([row] * len(items))
            cols.extend(items.tolist())
        vocab = n_items + 1
        x = sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sequences), vocab)
        )
        counts = np.asarray(x.sum(axis=0)).ravel()
        co = (x.T @ x).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        norm = np.sqrt(np.maximum(counts, 1.0))
        inv = sparse.diags(1.0 / norm)
        sim = (inv @ co @ inv).tocsr()
        self.similarity = _keep_top(sim, neighbours)
        # Popularity tie-break: far below any co-occurrence similarity (>= 1 / n_customers).
        self.tie_break = counts / (counts.max() + 1.0) * 1e-6
        logger.info(
            "co-occurrence kNN: %d items, %d similarity entries (k=%d)",
            n_items,
            self.similarity.nnz,
            neighbours,
        )

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """[len(histories), n_items + 1] scores (column 0 is padding and scores lowest)."""
        vocab = self.n_items + 1
        rows, cols, vals = [], [], []
        for row, history in enumerate(histories):
            tail = list(history)[-self.recent :][::-1]
            for age, item in enumerate(tail):
                rows.append(row)
                cols.append(int(item))
                vals.append(self.decay**age)
        votes = sparse.csr_matrix((vals, (rows, cols)), shape=(len(histories), vocab))
        out = np.asarray((votes @ self.similarity).todense(), dtype=np.float64)
        out += self.tie_break[None, :]
        out[:, 0] = -np.inf
        return out


def _keep_top(matrix: sparse.csr_matrix, k: int) -> sparse.csr_matrix:
    """Keep the ``k`` largest entries of each row of a CSR matrix."""
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    new_rows, new_cols, new_vals = [], [], []
    for row in range(matrix.shape[0]):
        start, end = indptr[row], indptr[row + 1]
        if start == end:
            continue
        vals = data[start:end]
        cols = indices[start:end]
        if end - start > k:
            keep = np.argpartition(-vals, k - 1)[:k]
            vals, cols = vals[keep], cols[keep]
        new_rows.extend([row] * len(vals))
        new_cols.extend(cols.tolist())
        new_vals.extend(vals.tolist())
    return sparse.csr_matrix((new_vals, (new_rows, new_cols)), shape=matrix.shape)
