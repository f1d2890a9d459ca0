"""Tests of the recommender model and the train step on tiny crafted training sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from components.common.errors import ConfigError, InputError, PrivacyError
from components.common.ids import ItemMap
from components.common.privacy import DPConfig, PrivacyRecord, compute_epsilon
from components.common.recommender_model import (
    RecommenderConfig,
    SequentialRecommender,
    load_recommender,
)
from components.train.config import TrainConfig
from components.train.data import left_pad, next_item_records
from components.train.evaluate import hit_rate_ndcg, ranks
from components.train.logic import SequenceLoss, run

N_ITEMS = 30


def write_training_set(
    root: Path, *, n_real: int = 160, n_synthetic: int = 80, seed: int = 0
) -> Path:
    """A fuse-shaped training_set/ with a learnable pattern: item i is mostly followed by i + 1."""
    rng = np.random.default_rng(seed)
    out = root / "training_set"
    out.mkdir(parents=True)
    ids = [f"{20000 + i}" for i in range(1, N_ITEMS + 1)]
    ItemMap(ids).save(out / "item_map.json")

    def walk(length: int) -> list[int]:
        start = int(rng.integers(1, N_ITEMS + 1))
        seq = [(start + k - 1) % N_ITEMS + 1 for k in range(length)]
        return list(dict.fromkeys(seq))

    full = [walk(int(rng.integers(3, 12))) for _ in range(n_real)]
    rows = [
        (f"real-c{n}", "real", f"c{n}", s[:-2] if len(s) >= 3 else s, 1.0)
        for n, s in enumerate(full)
    ]
    rows += [
        (f"syn-s{n}", "synthetic", None, walk(int(rng.integers(2, 10))), 0.5)
        for n in range(n_synthetic)
    ]
    pd.DataFrame(rows, columns=["seq_id", "source", "customer_id", "items", "weight"]).to_parquet(
        out / "train_sequences.parquet", index=False
    )
    pd.DataFrame(
        {
            "customer_id": [f"c{n}" for n, s in enumerate(full) if len(s) >= 3],
            "history": [s[:-2] for s in full if len(s) >= 3],
            "valid_item": [s[-2] for s in full if len(s) >= 3],
            "test_item": [s[-1] for s in full if len(s) >= 3],
        }
    ).to_parquet(out / "eval_cases.parquet", index=False)
    vectors = rng.normal(size=(N_ITEMS, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pop = np.zeros(N_ITEMS + 1, dtype=np.int64)
    for _, source, _, items, _ in rows:
        if source == "real":
            pop[np.unique(items)] += 1
    pd.DataFrame(
        {
            "item_index": np.arange(1, N_ITEMS + 1),
            "item_id": ids,
            "description": [f"ITEM {i}" for i in ids],
            "price_band": np.arange(N_ITEMS) % 4,
            "popularity": pop[1:],
            "text_embedding": list(vectors),
        }
    ).to_parquet(out / "item_features.parquet", index=False)
    return out


def tiny_config(**overrides: object) -> TrainConfig:
    base: dict = {
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 2,
        "max_history": 8,
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 1e-2,
        "dp": {"enabled": True, "target_epsilon": 8.0},
        # These tests count customers and steps exactly; the audit's canaries and held-out
        # customers have their own tests (tests/components/test_dp_audit*.py, test_canaries.py).
        "canaries": {"enabled": False},
    }
    base.update(overrides)
    return TrainConfig.model_validate(base)


def tiny_model(seed: int = 0, *, dropout: float = 0.0) -> SequentialRecommender:
    torch.manual_seed(seed)
    cfg = RecommenderConfig(
        n_items=N_ITEMS,
        n_price_bands=4,
        d_model=16,
        n_layers=2,
        n_heads=2,
        max_history=8,
        dropout=dropout,
    )
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 384), dim=1)
    return SequentialRecommender(cfg, text, torch.arange(N_ITEMS + 1) % 4).eval()


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    root = tmp_path_factory.mktemp("train")
    training = write_training_set(root)
    summary = run(tiny_config(), training, root / "recommender_model", seed=3)
    return summary, training, root / "recommender_model"


# --- model -------------------------------------------------------------------------------------


def test_padding_does_not_change_real_positions() -> None:
    model = tiny_model()
    history = torch.tensor([[3, 7, 1, 9], [12, 5, 6, 2]])
    padded = torch.cat([torch.zeros(2, 5, dtype=torch.long), history], dim=1)
    with torch.inference_mode():
        plain, more = model(history), model(padded)
        torch.testing.assert_close(more[:, 5:], plain, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.score_next(padded), plain[:, -1], atol=1e-5, rtol=0)
        # Rows of one batch with different padding give their own unpadded answers.
        mixed = torch.tensor([[0, 0, 0, 3, 7, 1, 9], [0, 0, 0, 0, 0, 4, 8]])
        alone = model.score_next(torch.tensor([[4, 8]]))
        torch.testing.assert_close(model.score_next(mixed)[1], alone[0], atol=1e-5, rtol=0)
        # The history matters: a different earlier item changes the scores.
        other = model.score_next(torch.tensor([[0, 0, 0, 4, 7, 1, 9]]))
        assert (other[0] - model.score_next(mixed)[0]).abs().max() > 1e-4


def test_future_items_do_not_leak_into_earlier_positions() -> None:
    model = tiny_model()
    a = torch.tensor([[3, 7, 1, 9]])
    b = torch.tensor([[3, 7, 1, 22]])
    with torch.inference_mode():
        torch.testing.assert_close(model(a)[:, :3], model(b)[:, :3], atol=1e-6, rtol=0)


def test_model_config_rejects_indivisible_heads() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        RecommenderConfig(n_items=5, n_price_bands=2, d_model=10, n_heads=3)


# --- records, loss and metrics -----------------------------------------------------------------


def test_next_item_records_align_inputs_and_targets() -> None:
    data = next_item_records([[5, 6, 7], [1], [1, 2, 3, 4, 5, 6]], [1.0, 1.0, 0.5], max_history=4)
    inputs, targets, weights = data.tensors[:3]
    assert inputs.tolist() == [[0, 0, 5, 6], [0, 0, 0, 1], [2, 3, 4, 5]]
    assert targets.tolist() == [[0, 0, 6, 7], [0, 0, 0, 0], [3, 4, 5, 6]]
    assert weights.tolist() == [1.0, 1.0, 0.5]
    assert left_pad([[1, 2, 3]], 2).tolist() == [[2, 3]]


def test_sequence_loss_weights_and_ignores_padding() -> None:
    logits = torch.zeros(2, 3, 4)
    logits[0, 2, 1] = 5.0
    targets = torch.tensor([[0, 2, 1], [0, 0, 0]])
    loss = SequenceLoss(reduction="none")(logits, targets, torch.tensor([2.0, 1.0]))
    uniform = np.log(4.0)
    peaked = -np.log(np.exp(5.0) / (np.exp(5.0) + 3.0))
    np.testing.assert_allclose(loss[0].item(), 2.0 * (uniform + peaked) / 2, rtol=1e-5)
    assert loss[1].item() == 0.0


def test_hit_rate_and_ndcg_hand_computed() -> None:
    # 6 columns: 0 = padding, items 1..5.
    scores = np.array(
        [
            [9.0, 0.1, 0.9, 0.5, 0.8, 0.2],  # order 2,4,3,5,1; history {2}: target 3 ranks 1
            [9.0, 0.3, 0.3, 0.3, 0.3, 0.3],  # all tied: lower index first, target 4 ranks 3
            [9.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # target 5 first: rank 0
        ]
    )
    r = ranks(scores, histories=[[2], [], [1]], targets=[3, 4, 5])
    assert r.tolist() == [1, 3, 0]
    got = hit_rate_ndcg(r, k=2)
    assert got["hr@2"] == pytest.approx(2 / 3)
    assert got["ndcg@2"] == pytest.approx((1 / np.log2(3) + 0 + 1.0) / 3)
    assert hit_rate_ndcg(r, k=10)["hr@10"] == 1.0


# --- DP clipping -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_opacus_clipped_gradient_matches_per_sample_reference(mode: str) -> None:
    """Opacus' clipped mean gradient equals the hand-computed one (noise 0) in both modes."""
    from opacus import PrivacyEngine

    data = next_item_records(
        [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [13, 14]], [1.0, 0.5, 1.0, 1.0], 8
    )
    inputs, targets, weights = data.tensors[:3]
    clip = 0.05  # small enough that every sample is clipped
    reference = tiny_model(1)
    reference.train()
    params = [p for p in reference.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    loss_fn = SequenceLoss(reduction="none")
    for i in range(len(inputs)):
        reference.zero_grad()
        loss_fn(
            reference(inputs[i : i + 1]), targets[i : i + 1], weights[i : i + 1]
        ).sum().backward()
        grads = [p.grad.detach().clone() for p in params]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    expected = [t / len(inputs) for t in total]

    model = tiny_model(1)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = torch.utils.data.DataLoader(data, batch_size=len(inputs))
    made = PrivacyEngine(accountant="prv").make_private(
        module=model,
        optimizer=optimizer,
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
    criterion(dp_model(inputs), targets, weights).backward()
    dp_opt.pre_step()
    got = [p.grad for p in model.parameters() if p.requires_grad]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)


# --- the step ----------------------------------------------------------------------------------


def test_run_writes_the_contract(dp_run: tuple[dict, Path, Path]) -> None:
    summary, training, out = dp_run
    names = {p.name for p in out.iterdir()}
    assert {
        "model.pt",
        "model_config.json",
        "item_map.json",
        "privacy.json",
        "real_only_privacy.json",
        "metrics.json",
        "step.json",
    } <= names
    metrics = json.loads((out / "metrics.json").read_text())
    n_eval = len(pd.read_parquet(training / "eval_cases.parquet"))
    assert metrics["n_eval"] == n_eval
    for key in ("popularity", "real_only", "real_plus_synthetic"):
        assert 0.0 <= metrics[key]["ndcg@10"] <= metrics[key]["hr@10"] <= 1.0
    assert (out / "item_map.json").read_text() == (training / "item_map.json").read_text()
    # The saved model reloads and reproduces the saved metric's inputs.
    model = load_recommender(out)
    assert model.config.n_items == N_ITEMS
    assert summary["n_real_sequences"] == 160
    assert summary["n_synthetic_sequences"] == 80


def test_privacy_records_recompute_to_their_epsilon(dp_run: tuple[dict, Path, Path]) -> None:
    _, _, out = dp_run
    cfg = tiny_config()
    for name, training in (("privacy.json", "recommender"), ("real_only_privacy.json", None)):
        record = PrivacyRecord.model_validate_json((out / name).read_text())
        if training:
            assert record.training == training
        assert record.dp and record.unit == "customer"
        assert record.n_units == 160  # real customers only, synthetic add no unit
        assert record.delta == pytest.approx(1 / 1600)
        assert record.noise_multiplier > 0
        recomputed = compute_epsilon(
            noise_multiplier=record.noise_multiplier,
            sample_rate=record.sample_rate,
            steps=record.steps,
            delta=record.delta,
            accountant=record.accountant,
            n_units=record.n_units,
        )
        assert recomputed == pytest.approx(record.epsilon, rel=0.02)
        assert record.epsilon <= cfg.dp.target_epsilon * 1.02
    fused = PrivacyRecord.model_validate_json((out / "privacy.json").read_text())
    real = PrivacyRecord.model_validate_json((out / "real_only_privacy.json").read_text())
    # Poisson rate = expected batch / records: the fused set has 240 records, real only 160.
    assert fused.sample_rate == pytest.approx(1 / math.ceil(240 / 32), rel=1e-6)
    assert real.sample_rate == pytest.approx(1 / math.ceil(160 / 32), rel=1e-6)
    assert fused.steps == 2 * math.ceil(240 / 32)


def test_non_dp_training_works_and_learns(tmp_path: Path) -> None:
    training = write_training_set(tmp_path)
    cfg = tiny_config(dp={"enabled": False}, epochs=6, dropout=0.0)
    summary = run(cfg, training, tmp_path / "model", seed=0)
    record = PrivacyRecord.model_validate_json((tmp_path / "model" / "privacy.json").read_text())
    assert record.dp is False and record.epsilon is None
    # The crafted pattern (i is followed by i + 1) is easy: a trained model beats popularity.
    metrics = summary["metrics"]
    assert metrics["real_plus_synthetic"]["hr@10"] > metrics["popularity"]["hr@10"] + 0.2
    losses = summary["epoch_losses"]["real_plus_synthetic"]
    assert losses[-1] < losses[0]


def test_delta_above_one_over_customers_is_refused(tmp_path: Path) -> None:
    training = write_training_set(tmp_path, n_real=20, n_synthetic=5)
    cfg = tiny_config(dp={"enabled": True, "delta": 0.06})
    with pytest.raises(PrivacyError, match="delta"):
        run(cfg, training, tmp_path / "model", seed=0)
    assert not (tmp_path / "model").exists()


def test_duplicate_real_customer_is_refused(tmp_path: Path) -> None:
    training = write_training_set(tmp_path, n_real=20, n_synthetic=5)
    seqs = pd.read_parquet(training / "train_sequences.parquet")
    seqs.loc[1, "customer_id"] = seqs.loc[0, "customer_id"]
    seqs.to_parquet(training / "train_sequences.parquet", index=False)
    with pytest.raises(InputError, match="exactly one sequence"):
        run(tiny_config(), training, tmp_path / "model", seed=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"d_model": 10, "n_heads": 3},
        {"epochs": 0},
        {"max_history": 1},
        {"grad_sample_mode": "functorch"},
        {"unknown_key": 1},
    ],
)
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises((ValidationError, ConfigError)):
        TrainConfig.model_validate(bad)


def test_dp_config_rejects_nonpositive_epsilon() -> None:
    with pytest.raises(ValidationError):
        DPConfig(target_epsilon=0)


@pytest.mark.parametrize("mode", ["ghost", pytest.param("hooks", marks=pytest.mark.slow)])
def test_empty_poisson_batches_still_take_their_steps(tmp_path: Path, mode: str) -> None:
    # Expected batch 1 of 20 records: about a third of the Poisson batches are empty.
    training = write_training_set(tmp_path, n_real=20, n_synthetic=0)
    cfg = tiny_config(batch_size=1, epochs=1, grad_sample_mode=mode)
    summary = run(cfg, training, tmp_path / "model", seed=0)
    assert summary["privacy"]["steps"] == 20
    assert summary["privacy"]["sample_rate"] == pytest.approx(1 / 20)
