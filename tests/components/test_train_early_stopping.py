"""Early stopping of non-DP recommender training on the validation items."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from test_train_customer import _cfg, _country_decides, _training_set

from components.common.errors import ConfigError
from components.train.config import TrainConfig
from components.train.data import next_item_records
from components.train.logic import fit, validation_scorer


def _data(ts, cfg):
    seqs = ts.sequences
    return next_item_records(
        seqs["items"].tolist(),
        seqs["weight"].tolist(),
        cfg.max_history,
        country_ids=seqs["country_id"].tolist(),
    )


def test_stops_after_patience_and_keeps_the_best_epoch() -> None:
    ts = _training_set(_country_decides())
    cfg = _cfg(epochs=20, early_stopping_patience=2)
    scripted = iter([0.10, 0.30, 0.20, 0.25, 0.90, 0.95])
    seen: list[dict[str, torch.Tensor]] = []

    def validate(model) -> float:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    result = fit(
        "t",
        _data(ts, cfg),
        ts,
        cfg,
        seed=0,
        n_units=48,
        delta=1e-3,
        training="t",
        validate=validate,
    )
    # 0.30 at epoch 2, then two epochs without a gain: stop after epoch 4, keep epoch 2.
    assert result.valid_ndcg == [0.10, 0.30, 0.20, 0.25]
    assert result.best_epoch == 2
    assert len(result.epoch_seconds) == 4
    kept = result.model.state_dict()
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], seen[3][k]) for k in kept)
    # steps count the epochs actually trained
    assert result.record.steps == 4 * (len(ts.sequences) // cfg.batch_size)


def test_without_patience_every_epoch_runs_and_validate_is_not_called() -> None:
    ts = _training_set(_country_decides())
    cfg = _cfg(epochs=3)
    result = fit("t", _data(ts, cfg), ts, cfg, seed=0, n_units=48, delta=1e-3, training="t")
    assert len(result.epoch_seconds) == 3
    assert result.best_epoch is None and result.valid_ndcg == []


def test_patience_without_a_scorer_is_refused() -> None:
    ts = _training_set(_country_decides())
    cfg = _cfg(epochs=3, early_stopping_patience=1)
    with pytest.raises(ConfigError, match="early_stopping_patience=1"):
        fit("t", _data(ts, cfg), ts, cfg, seed=0, n_units=48, delta=1e-3, training="t")


def test_early_stopping_with_dp_is_a_config_error() -> None:
    with pytest.raises((ConfigError, ValidationError), match="dp.enabled=false"):
        TrainConfig.model_validate(
            {"early_stopping_patience": 3, "dp": {"enabled": True, "target_epsilon": 4.0}}
        )


def test_validation_scorer_ranks_the_validation_item() -> None:
    """NDCG@k of the second-to-last item given the history: 1.0 for a model that learnt it."""
    ts = _training_set(_country_decides())
    cases = pd.DataFrame(
        {
            "customer_id": ["e1", "e2"],
            "history": [[1], [1]],
            "valid_item": [2, 3],
            "test_item": [5, 5],
            "country_id": [1, 2],
        }
    )
    ts = replace(ts, eval_cases=cases)
    cfg = _cfg(epochs=60, k=1)
    trained = fit("t", _data(ts, cfg), ts, cfg, seed=0, n_units=48, delta=1e-3, training="t")
    score = validation_scorer(ts, cfg)
    # France (1) buys 2 after 1, Germany (2) buys 3: both ranked first by the trained model.
    assert score(trained.model) == pytest.approx(1.0)
    swapped = ts.eval_cases.assign(country_id=[2, 1])
    assert validation_scorer(replace(ts, eval_cases=swapped), cfg)(trained.model) == 0.0
