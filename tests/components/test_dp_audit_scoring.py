"""The audit's recommender score replays the training record: window, country and n_before."""

from __future__ import annotations

import pytest
import torch

from components.common.recommender_model import RecommenderConfig, SequentialRecommender
from components.dp_audit.scoring import recommender_scores
from components.train.data import next_item_records
from components.train.logic import SequenceLoss, gathered_loss, trim_padding

N_ITEMS = 12
MAX_HISTORY = 4
# A short one, one that fills the window exactly and two longer than the window + 1 (n_before
# 3 and 6), and a one-item sequence (nothing to predict).
SEQUENCES = [[1, 2, 3], [4, 5, 6, 7, 8], [1, 3, 5, 7, 9, 11, 2, 4], [2] + list(range(3, 13)), [6]]


def _model(*, scale: float = 5.0) -> SequentialRecommender:
    torch.manual_seed(0)
    cfg = RecommenderConfig(
        n_items=N_ITEMS,
        n_price_bands=2,
        d_model=16,
        n_layers=1,
        n_heads=2,
        max_history=MAX_HISTORY,
        dropout=0.0,
        n_countries=3,
    )
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 384), dim=1)
    model = SequentialRecommender(cfg, text, torch.arange(N_ITEMS + 1) % 2).eval()
    with torch.no_grad():  # large customer embeddings, so they visibly move the scores
        model.country_emb.weight.mul_(scale)
        model.activity_emb.weight.mul_(scale)
    return model


def _training_losses(model: SequentialRecommender, countries: list[int]) -> list[float]:
    """Each record's loss as train computes it: its records, trimmed, one record per batch."""
    data = next_item_records(SEQUENCES, [1.0] * len(SEQUENCES), MAX_HISTORY, countries)
    out = []
    with torch.no_grad():
        for inputs, targets, weights, country_ids, n_before in data:
            inputs, targets = trim_padding(inputs[None], targets[None])
            args = (weights[None], None, country_ids[None], n_before[None])
            cheap = gathered_loss(model, inputs, targets, *args)
            dp_path = SequenceLoss()(
                model(inputs, country_ids[None], n_before[None]), targets, weights[None]
            )
            assert float(cheap) == pytest.approx(float(dp_path), abs=1e-5)
            out.append(float(dp_path))
    return out


def test_score_is_minus_the_training_loss_of_the_same_record() -> None:
    model = _model()
    countries = [1, 2, 0, 1, 2]
    scores = recommender_scores(model, SEQUENCES, max_history=MAX_HISTORY, country_ids=countries)
    expected = [-loss for loss in _training_losses(model, countries)]
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    assert scores[-1] == 0.0  # one item: nothing to predict
    # The records past the window do carry n_before: without it they would score otherwise.
    data = next_item_records(SEQUENCES, [1.0] * 5, MAX_HISTORY, countries)
    assert data.tensors[4].tolist() == [0, 0, 3, 6, 0]
    zero_before = model(
        data.tensors[0][2:4], data.tensors[3][2:4], torch.zeros(2, dtype=torch.long)
    )
    full = model(data.tensors[0][2:4], data.tensors[3][2:4], data.tensors[4][2:4])
    assert not torch.allclose(zero_before, full, atol=1e-4)


def test_score_changes_with_the_country() -> None:
    model = _model()
    france = recommender_scores(model, SEQUENCES[:4], max_history=MAX_HISTORY, country_ids=[1] * 4)
    germany = recommender_scores(model, SEQUENCES[:4], max_history=MAX_HISTORY, country_ids=[2] * 4)
    assert abs(france - germany).min() > 1e-4
    # No country ids: every record unknown (0), as train does for canary customers.
    unknown = recommender_scores(model, SEQUENCES[:4], max_history=MAX_HISTORY)
    zeros = recommender_scores(model, SEQUENCES[:4], max_history=MAX_HISTORY, country_ids=[0] * 4)
    assert unknown.tolist() == zeros.tolist()
    assert abs(unknown - france).min() > 1e-4


def test_batches_do_not_change_the_scores() -> None:
    model = _model()
    countries = [1, 2, 0, 1, 2]
    whole = recommender_scores(model, SEQUENCES, max_history=MAX_HISTORY, country_ids=countries)
    pieces = recommender_scores(
        model, SEQUENCES, max_history=MAX_HISTORY, country_ids=countries, batch_size=2
    )
    assert pieces.tolist() == pytest.approx(whole.tolist(), abs=1e-6)
