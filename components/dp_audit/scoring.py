"""Per-record scores of the saved models: how well a model fits one customer's record.

A higher score means the model fits the record better, which is what both the canary audit and
the membership attack read as evidence of membership:

- generator: the mean log-likelihood of the record's tokens after bos (the negative of the
  per-sequence training loss);
- recommender: the negative mean next-item cross-entropy over the record's training window (the
  last ``max_history + 1`` items), exactly the per-sequence loss train minimises, at weight 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from components.train.data import next_item_records

logger = logging.getLogger(__name__)

PAD_ID = 0


@torch.inference_mode()
def generator_scores(
    model: torch.nn.Module, records: Sequence[Sequence[int]], *, batch_size: int = 256
) -> np.ndarray:
    """Mean token log-likelihood of each token record (``[bos, ..., eos]``) under ``model``.

    Args:
        model: a transformers causal LM in eval mode.
        records: token id lists, at most the model's positions long.
        batch_size: records per forward pass.

    Returns:
        [len(records)] float64 scores.
    """
    model.eval()
    out = np.zeros(len(records), dtype=np.float64)
    for start in range(0, len(records), batch_size):
        chunk = [list(r) for r in records[start : start + batch_size]]
        longest = max(len(r) for r in chunk)
        batch = torch.full((len(chunk), longest), PAD_ID, dtype=torch.long)
        for row, rec in enumerate(chunk):
            batch[row, : len(rec)] = torch.as_tensor(rec, dtype=torch.long)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        positions = torch.arange(inputs.shape[1]).repeat(inputs.shape[0], 1)
        logits = model(input_ids=inputs, position_ids=positions).logits.float()
        logp = torch.log_softmax(logits, dim=-1).gather(2, targets[..., None]).squeeze(2)
        mask = targets != PAD_ID
        mean = (logp * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        out[start : start + len(chunk)] = mean.double().numpy()
    return out


@torch.inference_mode()
def recommender_scores(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    max_history: int,
    country_ids: Sequence[int] | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """Negative mean next-item cross-entropy of each item-index sequence under ``model``.

    The records are built by train's own :func:`~components.train.data.next_item_records`, so a
    record's window, country id and ``n_before`` (the purchases cut off before the window) are
    exactly what the training loss saw for it.

    Args:
        model: a ``SequentialRecommender`` in eval mode (forward gives [batch, T, n_items + 1]).
        sequences: item indices (1..n_items), one list per record.
        max_history: the window train used; longer sequences score their last max_history + 1.
        country_ids: one country index per sequence, as in training_set/'s ``country_id`` column
            (0 = unknown); None means all unknown, as train does for canaries.
        batch_size: records per forward pass.

    Returns:
        [len(sequences)] float64 scores; a one-item sequence (nothing to predict) scores 0.
    """
    model.eval()
    records = next_item_records(
        sequences, np.ones(len(sequences)), max_history, country_ids=country_ids
    )
    inputs_all, targets_all, _, countries_all, n_before_all = records.tensors
    out = np.zeros(len(sequences), dtype=np.float64)
    for start in range(0, len(sequences), batch_size):
        rows = slice(start, start + batch_size)
        targets = targets_all[rows]
        logits = model(inputs_all[rows], countries_all[rows], n_before_all[rows]).float()
        b, t, v = logits.shape
        ce = F.cross_entropy(
            logits.reshape(b * t, v), targets.reshape(b * t), reduction="none", ignore_index=0
        ).view(b, t)
        n_targets = (targets != 0).sum(dim=1)
        mean = ce.sum(dim=1) / n_targets.clamp(min=1)
        out[start : start + b] = (-mean).double().numpy()
    return out
