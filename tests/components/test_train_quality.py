"""Model quality properties and the added metrics: content scoring of cold items, the fused
output path, MRR, coverage, sampled negatives and the co-occurrence baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.common.recommender_model import RecommenderConfig, SequentialRecommender
from components.train.baselines import CooccurrenceKNN
from components.train.config import TrainConfig
from components.train.data import TrainingSet, next_item_records
from components.train.evaluate import (
    coverage,
    full_metrics,
    ranking_metrics,
    sample_negatives,
    sampled_ranks,
    top_k,
)
from components.train.logic import SequenceLoss, fit, gathered_loss, trim_padding

N_CLUSTERS, PER_CLUSTER = 4, 10
N_ITEMS = N_CLUSTERS * PER_CLUSTER
# The last item of each cluster: it has a description but nobody ever buys it.
COLD = [(c + 1) * PER_CLUSTER for c in range(N_CLUSTERS)]


def _cluster(item: int) -> int:
    return (item - 1) // PER_CLUSTER


def _clustered_set(seed: int = 0) -> tuple[TrainingSet, list[list[int]]]:
    """Customers buy within one content cluster; the COLD items have content, no purchases."""
    from components.common.ids import ItemMap

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLUSTERS, 384))
    text = np.zeros((N_ITEMS + 1, 384), dtype=np.float32)
    for item in range(1, N_ITEMS + 1):
        v = centres[_cluster(item)] + 0.3 * rng.normal(size=384)
        text[item] = v / np.linalg.norm(v)
    sequences = []
    for _ in range(160):
        c = int(rng.integers(N_CLUSTERS))
        pool = [i for i in range(c * PER_CLUSTER + 1, (c + 1) * PER_CLUSTER + 1) if i not in COLD]
        sequences.append([int(i) for i in rng.permutation(pool)[: int(rng.integers(3, 8))]])
    import pandas as pd

    frame = pd.DataFrame(
        {
            "seq_id": [f"r{n}" for n in range(len(sequences))],
            "source": "real",
            "customer_id": [f"c{n}" for n in range(len(sequences))],
            "items": sequences,
            "weight": 1.0,
        }
    )
    pop = np.zeros(N_ITEMS + 1, dtype=np.int64)
    for s in sequences:
        pop[s] += 1
    ts = TrainingSet(
        item_map=ItemMap([f"i{n}" for n in range(1, N_ITEMS + 1)]),
        sequences=frame,
        eval_cases=pd.DataFrame(columns=["customer_id", "history", "valid_item", "test_item"]),
        text_embeddings=torch.from_numpy(text),
        price_bands=torch.zeros(N_ITEMS + 1, dtype=torch.long),
        popularity=pop,
        n_price_bands=1,
    )
    return ts, sequences


@pytest.fixture(scope="module")
def cold_models() -> dict[int, SequentialRecommender]:
    ts, sequences = _clustered_set()
    data = next_item_records(sequences, [1.0] * len(sequences), 8)
    out = {}
    for content_dim in (0, 16):
        cfg = TrainConfig.model_validate(
            {
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
                "max_history": 8,
                "epochs": 6,
                "batch_size": 32,
                "learning_rate": 1e-2,
                "dropout": 0.0,
                "content_dim": content_dim,
                "id_dropout": 0.3,
                "dp": {"enabled": False},
            }
        )
        out[content_dim] = fit(
            "cold", data, ts, cfg, seed=0, n_units=len(sequences), delta=1e-4, training="x"
        ).model
    return out


def _cold_choice(model: SequentialRecommender) -> tuple[float, float]:
    """After each cluster's histories: how often the best-scored cold item is that cluster's,
    and the mean margin of its score over the other cold items."""
    histories, clusters = [], []
    for c in range(N_CLUSTERS):
        base = c * PER_CLUSTER
        for offsets in ((1, 2, 3), (4, 5, 6), (7, 8, 9), (2, 5, 8)):
            histories.append([base + o for o in offsets])
            clusters.append(c)
    with torch.no_grad():
        scores = model.score_next(torch.tensor(histories))[:, COLD]
    own = torch.tensor(clusters)
    accuracy = float((scores.argmax(dim=1) == own).float().mean())
    own_score = scores.gather(1, own[:, None])[:, 0]
    margin = own_score - (scores.sum(dim=1) - own_score) / (N_CLUSTERS - 1)
    return accuracy, float(margin.mean())


def test_cold_item_is_scored_from_content(cold_models: dict[int, SequentialRecommender]) -> None:
    # Four items nobody bought, one per content cluster. With content scoring the model prefers
    # the one whose description matches the customer's history; without, it is a coin toss.
    accuracy, margin = _cold_choice(cold_models[16])
    _, margin_without = _cold_choice(cold_models[0])
    assert accuracy >= 0.9
    assert margin > 0.5
    assert margin > 5 * abs(margin_without)


def test_fused_scores_equal_per_layer_scores() -> None:
    torch.manual_seed(0)
    cfg = RecommenderConfig(n_items=N_ITEMS, n_price_bands=3, d_model=16, n_heads=2, dropout=0.0)
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 384), dim=1)
    model = SequentialRecommender(cfg, text, torch.arange(N_ITEMS + 1) % 3).eval()
    h = torch.randn(5, 7, 16)
    torch.testing.assert_close(
        model.score_states(h, fused=True), model.score_states(h, fused=False), atol=1e-5, rtol=0
    )


def test_gathered_loss_equals_sequence_loss() -> None:
    torch.manual_seed(1)
    cfg = RecommenderConfig(n_items=N_ITEMS, n_price_bands=3, d_model=16, n_heads=2, dropout=0.0)
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 384), dim=1)
    model = SequentialRecommender(cfg, text, torch.arange(N_ITEMS + 1) % 3).eval()
    data = next_item_records([[1, 2, 3, 4], [5, 6], [7], [8, 9, 10, 11, 12]], [1.0, 0.5, 1, 2], 6)
    inputs, targets, weights = data.tensors[:3]
    full = SequenceLoss()(model(inputs), targets, weights)
    trimmed_in, trimmed_t = trim_padding(inputs, targets)
    assert trimmed_in.shape[1] == 4  # the longest record has 4 inputs
    torch.testing.assert_close(
        gathered_loss(model, trimmed_in, trimmed_t, weights), full, atol=1e-5, rtol=0
    )


def test_ranking_metrics_known_values() -> None:
    rank = np.array([0, 1, 9, 10, 99])
    out = ranking_metrics(rank, 10)
    assert out["hr@10"] == pytest.approx(3 / 5)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)
    assert out["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 100) / 5)


def test_top_k_excludes_history_and_breaks_ties_by_index() -> None:
    scores = np.array([[9.0, 1.0, 5.0, 5.0, 3.0, 7.0]])
    assert top_k(scores, [[5]], 3).tolist() == [[2, 3, 4]]
    assert coverage(np.array([[2, 3], [3, 4]]), 5) == pytest.approx(3 / 5)
    metrics = full_metrics(scores, [[5]], [3], 2)
    assert metrics["hr@2"] == 1.0 and metrics["coverage"] == pytest.approx(2 / 5)


def test_sampled_negatives_avoid_seen_items_and_ties_count_against() -> None:
    seen = [[1, 2, 3], [4]]
    negatives = sample_negatives(seen, 20, 10, seed=0)
    assert negatives.shape == (2, 10)
    for row, items in enumerate(seen):
        assert not set(negatives[row]) & set(items)
        assert len(set(negatives[row])) == 10
        assert negatives[row].min() >= 1 and negatives[row].max() <= 20
    np.testing.assert_array_equal(negatives, sample_negatives(seen, 20, 10, seed=0))
    scores = np.zeros((1, 21))
    scores[0, 3] = 1.0
    scores[0, negatives[0][:2]] = [2.0, 1.0]  # one above, one tied with the target
    assert sampled_ranks(scores, [3], negatives[:1]).tolist() == [2]
    with pytest.raises(ValueError, match="unseen items"):
        sample_negatives([list(range(1, 15))], 20, 10, seed=0)


def test_cooccurrence_knn_recommends_bought_together() -> None:
    knn = CooccurrenceKNN([[1, 2], [1, 2], [1, 3], [4, 5]], 5, neighbours=10)
    scores = knn.scores([[1], [4], []])
    assert int(np.argmax(scores[0])) == 2  # 1 was bought with 2 twice, with 3 once
    assert int(np.argmax(scores[1])) == 5
    assert scores[0, 2] > scores[0, 3] > scores[0, 5]
    # No history: popularity tie-break only (1 and 2 are the most bought).
    assert int(np.argmax(scores[2])) in (1, 2)
    assert scores[0, 0] == -np.inf


def test_tied_output_scores_with_the_input_embeddings() -> None:
    torch.manual_seed(2)
    cfg = RecommenderConfig(
        n_items=N_ITEMS,
        n_price_bands=1,
        d_model=16,
        n_heads=2,
        dropout=0.0,
        content_dim=0,
        tie_output=True,
    )
    text = torch.zeros(N_ITEMS + 1, 384)
    model = SequentialRecommender(cfg, text, torch.zeros(N_ITEMS + 1, dtype=torch.long)).eval()
    assert model.head is None
    h = torch.randn(3, 16)
    expected = h @ model.item_emb.weight.T + model.band_query(h)[:, model.band_table]
    torch.testing.assert_close(model.score_states(h), expected, atol=1e-5, rtol=0)


def test_tied_output_refuses_dp() -> None:
    from components.common.errors import ConfigError

    with pytest.raises(ConfigError, match="tie_output"):
        TrainConfig.model_validate({"tie_output": True, "dp": {"enabled": True}})
