"""Leave-last-out split of customer sequences, shared by generate, fuse and train.

Each customer with at least ``min_length`` items keeps all but the last two for training, the
second-to-last for validation and the last for test. The generator is trained on the training
parts only, so synthetic data never carries a held-out item of a real customer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

MIN_EVAL_LENGTH = 3


@dataclass(frozen=True)
class SplitSequences:
    """Per-customer training prefixes and held-out targets.

    ``train`` has one row per customer (every customer, evaluated or not) with columns
    customer_id, country, items. ``eval`` has one row per evaluated customer with columns
    customer_id, country, history (items before the valid target), valid_item, test_item.
    """

    train: pd.DataFrame
    eval: pd.DataFrame


def leave_last_out(sequences: pd.DataFrame, min_length: int = MIN_EVAL_LENGTH) -> SplitSequences:
    """Split ``sequences`` (columns customer_id, country, items) into train and eval parts."""
    train_rows, eval_rows = [], []
    for row in sequences.itertuples(index=False):
        items = list(row.items)
        if len(items) >= min_length:
            train_rows.append((row.customer_id, row.country, items[:-2]))
            eval_rows.append((row.customer_id, row.country, items[:-2], items[-2], items[-1]))
        else:
            train_rows.append((row.customer_id, row.country, items))
    train = pd.DataFrame(train_rows, columns=["customer_id", "country", "items"])
    evals = pd.DataFrame(
        eval_rows, columns=["customer_id", "country", "history", "valid_item", "test_item"]
    )
    return SplitSequences(train=train, eval=evals)
