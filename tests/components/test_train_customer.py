"""Customer features of the recommender: country and activity, with and without DP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.common.artifacts import write_json
from components.common.errors import InputError
from components.common.ids import ItemMap
from components.common.privacy import PrivacyRecord, compute_epsilon
from components.common.recommender_model import (
    MODEL_CONFIG,
    MODEL_WEIGHTS,
    RecommenderConfig,
    SequentialRecommender,
    activity_bucket,
    build_model,
    load_recommender,
)
from components.train.config import TrainConfig
from components.train.data import TrainingSet, load_training_set, next_item_records
from components.train.evaluate import model_scores
from components.train.logic import SequenceLoss, fit, run

N_ITEMS = 12
COUNTRIES = ["<unknown>", "France", "Germany"]


def _model(n_countries: int = 3, *, seed: int = 0, scale: float = 1.0) -> SequentialRecommender:
    torch.manual_seed(seed)
    cfg = RecommenderConfig(
        n_items=N_ITEMS,
        n_price_bands=2,
        d_model=16,
        n_layers=1,
        n_heads=2,
        max_history=6,
        dropout=0.0,
        n_countries=n_countries,
    )
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 384), dim=1)
    model = SequentialRecommender(cfg, text, torch.arange(N_ITEMS + 1) % 2).eval()
    if n_countries and scale != 1.0:
        with torch.no_grad():  # large customer embeddings, so they visibly move the states
            model.country_emb.weight.mul_(scale)
            model.activity_emb.weight.mul_(scale)
    return model


def _training_set(sequences: pd.DataFrame, *, countries: list[str] = COUNTRIES) -> TrainingSet:
    rng = np.random.default_rng(0)
    text = np.concatenate(
        [np.zeros((1, 384), np.float32), rng.normal(size=(N_ITEMS, 384)).astype(np.float32)]
    )
    return TrainingSet(
        item_map=ItemMap([f"I{i:02d}" for i in range(1, N_ITEMS + 1)]),
        sequences=sequences,
        eval_cases=pd.DataFrame(columns=["customer_id", "history", "valid_item", "test_item"]),
        text_embeddings=torch.from_numpy(text),
        price_bands=torch.arange(N_ITEMS + 1) % 2,
        popularity=np.ones(N_ITEMS + 1, dtype=np.int64),
        n_price_bands=2,
        countries=tuple(countries),
    )


# --- activity ----------------------------------------------------------------------------------


def test_activity_buckets_are_log2() -> None:
    counts = torch.tensor([0, 1, 2, 3, 4, 7, 8, 127, 128, 10**6])
    assert activity_bucket(counts).tolist() == [0, 1, 2, 2, 3, 3, 4, 7, 8, 8]


def test_records_count_only_the_purchases_cut_before_the_window() -> None:
    data = next_item_records(
        [list(range(1, 13)), [3, 4, 5]], [1.0, 1.0], max_history=4, country_ids=[2, 1]
    )
    inputs, targets, _, countries, n_before = data.tensors
    # 12 items, window of 5 (4 inputs + the last target): 7 came before; the short one fits.
    assert n_before.tolist() == [7, 0]
    assert countries.tolist() == [2, 1]
    assert inputs[0].tolist() == [8, 9, 10, 11] and targets[0].tolist() == [9, 10, 11, 12]


def test_activity_is_point_in_time() -> None:
    """A position's state ignores later purchases, which a total-count feature would leak."""
    model = _model(scale=30.0)
    seq = torch.tensor([[1, 2, 3, 4, 5, 6]])
    country, before = torch.tensor([1]), torch.tensor([5])
    with torch.inference_mode():
        full = model.hidden(seq, country, before)
        for p in range(seq.shape[1]):
            prefix = model.hidden(seq[:, : p + 1], country, before)
            # Appending later purchases leaves every earlier position's state unchanged ...
            torch.testing.assert_close(prefix[:, -1], full[:, p], atol=1e-5, rtol=0)
        # ... while the earlier-purchase count does reach it (3 before vs 40 before).
        fewer = model.hidden(seq[:, :3], country, torch.tensor([3]))
        more = model.hidden(seq[:, :3], country, torch.tensor([40]))
    assert (fewer - more).abs().max() > 1e-2


def test_model_scores_adds_the_items_beyond_the_window() -> None:
    model = _model(scale=30.0)
    long = list(range(1, 11))  # 10 items, window 6: 4 before it
    got = model_scores(model, [long], country_ids=[2], max_history=6, batch_size=4)
    with torch.inference_mode():
        want = model.score_next(torch.tensor([long[-6:]]), torch.tensor([2]), torch.tensor([4]))
        wrong = model.score_next(torch.tensor([long[-6:]]), torch.tensor([2]), torch.tensor([0]))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert np.abs(got - wrong.numpy()).max() > 1e-3


# --- country -----------------------------------------------------------------------------------


def _country_decides(n: int = 48) -> pd.DataFrame:
    """After item 1, France buys 2 and Germany buys 3: only the country tells them apart."""
    rows = []
    for c in range(n):
        country = 1 + c % 2
        rows.append((f"real-c{c}", "real", f"c{c}", [1, 1 + country], 1.0, country))
    return pd.DataFrame(
        rows, columns=["seq_id", "source", "customer_id", "items", "weight", "country_id"]
    )


def _fit(ts: TrainingSet, cfg: TrainConfig):
    seqs = ts.sequences
    data = next_item_records(
        seqs["items"].tolist(),
        seqs["weight"].tolist(),
        cfg.max_history,
        country_ids=seqs["country_id"].tolist(),
    )
    return fit("t", data, ts, cfg, seed=0, n_units=len(seqs), delta=1e-3, training="t")


def _cfg(**overrides: object) -> TrainConfig:
    base: dict = {
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 2,
        "max_history": 4,
        "epochs": 60,
        "batch_size": 16,
        "learning_rate": 1e-2,
        "dropout": 0.0,
        "id_dropout": 0.0,
        "content_dim": 0,
        "dp": {"enabled": False},
        "canaries": {"enabled": False},
    }
    base.update(overrides)
    return TrainConfig.model_validate(base)


def test_the_answer_changes_with_the_country() -> None:
    ts = _training_set(_country_decides())
    model = _fit(ts, _cfg()).model
    scores = model_scores(model, [[1], [1]], country_ids=[1, 2], max_history=4, batch_size=8)
    assert scores[0].argmax() == 2 and scores[1].argmax() == 3
    # Without customer features the same data gives one answer for both countries.
    plain = _fit(ts, _cfg(customer_features=False, epochs=1)).model
    assert plain.config.n_countries == 0
    same = model_scores(plain, [[1], [1]], country_ids=[1, 2], max_history=4, batch_size=8)
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)


# --- DP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_clipped_gradient_with_customer_features_matches_reference(mode: str) -> None:
    """Opacus' clipped mean gradient (noise 0) covers the country and activity embeddings."""
    from opacus import PrivacyEngine

    data = next_item_records(
        [[1, 2, 3, 4], [5, 6, 7], list(range(1, 12)), [8, 9]],
        [1.0, 0.5, 1.0, 1.0],
        6,
        country_ids=[1, 2, 0, 1],
    )
    inputs, targets, weights, countries, before = data.tensors
    assert before.tolist() == [0, 0, 4, 0]
    clip = 0.05  # small enough that every sample is clipped
    reference = _model(seed=1)
    reference.train()
    params = [p for p in reference.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    loss_fn = SequenceLoss(reduction="none")
    for i in range(len(inputs)):
        reference.zero_grad()
        s = slice(i, i + 1)
        loss_fn(reference(inputs[s], countries[s], before[s]), targets[s], weights[s]).backward()
        grads = [p.grad.detach().clone() for p in params]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    expected = [t / len(inputs) for t in total]
    # The country row of a customer gets a gradient: the feature is trained, not ignored.
    assert expected[-2].abs().sum() > 0 and expected[-1].abs().sum() > 0

    model = _model(seed=1)
    model.train()
    loader = torch.utils.data.DataLoader(data, batch_size=len(inputs))
    made = PrivacyEngine(accountant="prv").make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        criterion=SequenceLoss(),
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        poisson_sampling=False,
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        dp_model, dp_opt, criterion, _ = made
    else:
        dp_model, dp_opt, _ = made
        criterion = SequenceLoss()
    dp_opt.zero_grad()
    criterion(dp_model(inputs, countries, before), targets, weights).backward()
    dp_opt.pre_step()
    got = [p.grad for p in model.parameters() if p.requires_grad]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)


def _write_training_dir(root: Path) -> Path:
    out = root / "training_set"
    out.mkdir()
    ts = _training_set(_country_decides(60))
    ts.item_map.save(out / "item_map.json")
    ts.sequences.to_parquet(out / "train_sequences.parquet", index=False)
    pd.DataFrame(
        {
            "customer_id": ["c0", "c1", "c2"],
            "history": [[1], [4, 1], [5]],
            "valid_item": [2, 3, 6],
            "test_item": [7, 8, 9],
            "country_id": [1, 2, 0],
        }
    ).to_parquet(out / "eval_cases.parquet", index=False)
    pd.DataFrame(
        {
            "item_index": np.arange(1, N_ITEMS + 1),
            "item_id": ts.item_map.item_ids,
            "price_band": np.arange(1, N_ITEMS + 1) % 2,
            "popularity": np.ones(N_ITEMS, dtype=np.int64),
            "text_embedding": list(ts.text_embeddings[1:].numpy()),
        }
    ).to_parquet(out / "item_features.parquet", index=False)
    write_json(out / "countries.json", {"countries": COUNTRIES})
    return out


def test_dp_run_trains_and_accounts_the_customer_features(tmp_path: Path) -> None:
    training = _write_training_dir(tmp_path)
    assert load_training_set(training).countries == tuple(COUNTRIES)
    cfg = _cfg(epochs=2, batch_size=32, dp={"enabled": True, "target_epsilon": 8.0})
    out = tmp_path / "recommender_model"
    summary = run(cfg, training, out, seed=1)
    assert summary["customer_features"] == {"country": 3, "activity_buckets": 9}
    assert json.loads((out / MODEL_CONFIG).read_text())["n_countries"] == 3
    assert json.loads((out / "countries.json").read_text()) == {"countries": COUNTRIES}
    record = PrivacyRecord.model_validate_json((out / "privacy.json").read_text())
    assert record.dp and record.n_units == 60 and record.noise_multiplier > 0
    recomputed = compute_epsilon(
        noise_multiplier=record.noise_multiplier,
        sample_rate=record.sample_rate,
        steps=record.steps,
        delta=record.delta,
        accountant=record.accountant,
        n_units=record.n_units,
    )
    assert recomputed == pytest.approx(record.epsilon, rel=0.02)
    assert record.epsilon <= 8.0 + 1e-6
    # The DP-trained customer embeddings moved from their initialisation.
    model = load_recommender(out)
    torch.manual_seed(1)  # fit seeds the initial weights with the run seed
    ts = load_training_set(training)
    init = build_model(model.config, ts.text_embeddings, ts.price_bands)
    assert model.country_emb.weight.shape == (3, 16)
    assert not torch.allclose(model.country_emb.weight, init.country_emb.weight)


# --- old artifacts -----------------------------------------------------------------------------


def test_old_config_without_n_countries_still_loads(tmp_path: Path) -> None:
    model = _model(0)
    raw = model.config.model_dump()
    raw.pop("n_countries")
    write_json(tmp_path / MODEL_CONFIG, raw)
    torch.save(model.state_dict(), tmp_path / MODEL_WEIGHTS)
    loaded = load_recommender(tmp_path)
    assert loaded.config.n_countries == 0 and not loaded.has_customer_features
    assert not any(k.startswith(("country_emb", "activity_emb")) for k in loaded.state_dict())
    ids = torch.tensor([[0, 3, 4]])
    with torch.inference_mode():
        old = loaded.score_next(ids)
        # Customer inputs given to a model without them change nothing.
        given = loaded.score_next(ids, torch.tensor([2]), torch.tensor([50]))
    torch.testing.assert_close(old, given)
    torch.testing.assert_close(old, model.score_next(ids))


def test_a_country_id_outside_the_vocabulary_is_an_input_error(tmp_path: Path) -> None:
    training = _write_training_dir(tmp_path)
    seqs = pd.read_parquet(training / "train_sequences.parquet")
    seqs.loc[3, "country_id"] = 3  # countries.json has ids 0..2
    seqs.to_parquet(training / "train_sequences.parquet", index=False)
    with pytest.raises(InputError, match=r"country_id=3 is outside 0..2") as info:
        load_training_set(training)
    assert info.value.column == "country_id" and info.value.row == 3
