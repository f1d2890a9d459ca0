"""Serving a recommender exported with customer features (country, activity).

The model is a real torch recommender exported by components.export (so the graph has the
``country_ids`` and ``n_before`` inputs); the feature store is the suite's Feast repo, where
every customer lives in the United Kingdom. Checked: what the transformer feeds the graph (Feast
country and ``n_items`` for customers, the request's country for sessions), that the answers are
the graph's, request errors, and that the predictor process carries the inputs over V2 binary.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import serving_builders as b
import torch
from serving_procs import start_server, stop_server, wait_ready

from components.common.artifacts import write_json
from components.common.ids import ItemMap
from components.common.recommender_model import RecommenderConfig, SequentialRecommender
from components.export.config import ExportConfig
from components.export.recommender import export_recommender
from serving import procs
from serving.errors import BadRequest
from serving.kserve_compat import InferInput, InferRequest
from serving.predictor import ScoresModel
from serving.recommender import RecommenderModel
from serving.scoring import LocalScorer

COUNTRIES = ["<unknown>", "France", "United Kingdom"]
MAX_HISTORY = 2  # short, so a Feast customer with 4 purchases has 2 before the window
N_ITEMS = len(b.CATALOGUE_CODES)


def _export(root: Path) -> Path:
    training, model_dir = root / "training_set", root / "recommender_model"
    training.mkdir(parents=True)
    model_dir.mkdir()
    codes = b.CATALOGUE_CODES
    ItemMap(codes).save(training / "item_map.json")
    ItemMap(codes).save(model_dir / "item_map.json")
    pd.DataFrame(
        {
            "seq_id": ["real-a", "real-b"],
            "source": ["real", "real"],
            "customer_id": ["a", "b"],
            "items": [[1, 2, 3, 4, 5], [6, 7]],
            "weight": [1.0, 1.0],
        }
    ).to_parquet(training / "train_sequences.parquet", index=False)
    pd.DataFrame(
        {
            "item_index": np.arange(1, N_ITEMS + 1),
            "item_id": codes,
            "description": [f"TEST ITEM {c}" for c in codes],
            "popularity": [b.POPULARITY[c] for c in codes],
            "price_band": np.zeros(N_ITEMS, dtype=np.int64),
        }
    ).to_parquet(training / "item_features.parquet", index=False)
    torch.manual_seed(0)
    cfg = RecommenderConfig(
        n_items=N_ITEMS,
        n_price_bands=1,
        d_model=16,
        n_layers=1,
        n_heads=2,
        max_history=MAX_HISTORY,
        n_countries=len(COUNTRIES),
    )
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 384), dim=1)
    model = SequentialRecommender(cfg, text, torch.zeros(N_ITEMS + 1, dtype=torch.long))
    with torch.no_grad():  # large weights, so country and activity visibly reorder the items
        model.head.weight.mul_(30)
        model.country_emb.weight.mul_(60)
        model.activity_emb.weight.mul_(60)
    torch.save(model.state_dict(), model_dir / "model.pt")
    write_json(model_dir / "model_config.json", cfg.model_dump())
    write_json(model_dir / "countries.json", {"countries": COUNTRIES})
    out = root / "exported" / "recommender"
    export_recommender(model_dir, training, out, cfg=ExportConfig())
    return out


class RecordingScorer(LocalScorer):
    """The ORT scorer, keeping the customer inputs of each batch it scored."""

    def __init__(self, session) -> None:
        super().__init__(session)
        self.calls: list[dict] = []

    def score(self, batch, *, country_ids=None, n_before=None, request_id=None):
        self.calls.append({"items": batch.copy(), "country_ids": country_ids, "n_before": n_before})
        return super().score(batch, country_ids=country_ids, n_before=n_before)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("customer_serving")
    return _export(root), b.build_feature_store(root / "features")


@pytest.fixture(scope="module")
def model(artifacts: tuple[Path, Path]) -> RecommenderModel:
    rec_dir, repo = artifacts
    m = RecommenderModel(rec_dir, repo)
    m.load()
    m._scorer = RecordingScorer(m._scorer._session)
    return m


def _session(rec_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(rec_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def _ask(model: RecommenderModel, instances: list[dict]) -> tuple[list, dict]:
    model._scorer.calls.clear()

    async def call():
        payload = await model.preprocess({"instances": instances})
        return model.run_batch(payload)

    result = asyncio.run(call())
    (fed,) = model._scorer.calls
    return result["results"], fed


def test_feeds_feast_country_and_activity_for_a_customer(model, artifacts) -> None:
    results, fed = _ask(
        model,
        [
            {"user_id": "17850", "k": 5},  # 4 purchases in Feast, United Kingdom
            {"items": ["22752", "21730", "22633"], "country": "France", "k": 5},
            {"items": ["22752"], "country": "Atlantis", "k": 5},  # unknown name: 0
            {"items": ["22752"], "k": 5},
        ],
    )
    assert fed["country_ids"].tolist() == [2, 1, 0, 0]
    # Customer: Feast n_items 4 minus the 2 passed; session of 3: 1 falls before the window.
    assert fed["n_before"].tolist() == [2, 1, 0, 0]
    codes = b.HISTORIES["17850"][-MAX_HISTORY:]
    assert fed["items"][0].tolist() == [b.CATALOGUE_CODES.index(c) + 1 for c in codes]
    # The answers are the graph's on those inputs.
    feeds = {
        "item_ids": fed["items"],
        "country_ids": fed["country_ids"],
        "n_before": fed["n_before"],
    }
    (scores,) = _session(artifacts[0]).run(["scores"], feeds)
    for row, ranked in enumerate(results):
        np.testing.assert_allclose(ranked.scores, scores[row, ranked.indices], rtol=1e-6)
    assert results[2].indices == results[3].indices  # unknown country == no country


def test_the_country_changes_the_answer(model) -> None:
    results, _ = _ask(
        model,
        [{"items": ["22752", "21730"], "country": c, "k": 5} for c in ("France", "United Kingdom")],
    )
    assert results[0].indices != results[1].indices


@pytest.mark.parametrize("value", [17, ["France"], True, ""])
def test_a_country_that_is_not_a_string_is_a_400(model, value) -> None:
    with pytest.raises(BadRequest) as info:
        asyncio.run(model.preprocess({"instances": [{"items": ["22752"], "country": value}]}))
    assert info.value.field == "instances[0].country"


def test_v2_country_input(model) -> None:
    request = InferRequest(
        model_name="recommender",
        infer_inputs=[
            InferInput(name="items", shape=[1, 1], datatype="BYTES", data=["22752"]),
            InferInput(name="country", shape=[1], datatype="BYTES", data=["France"]),
        ],
    )
    model._scorer.calls.clear()

    async def call():
        return model.run_batch(await model.preprocess(request))

    asyncio.run(call())
    assert model._scorer.calls[0]["country_ids"].tolist() == [1]


def _predictor_request(inputs: list[InferInput]) -> InferRequest:
    return InferRequest(model_name="recommender", infer_inputs=inputs)


def test_predictor_takes_and_checks_the_customer_inputs(artifacts) -> None:
    rec_dir, _ = artifacts
    predictor = ScoresModel(rec_dir)
    predictor.load()
    assert predictor.n_countries == 3
    assert [i["name"] for i in predictor.get_input_types()] == [
        "item_ids",
        "country_ids",
        "n_before",
    ]
    ids = InferInput(name="item_ids", shape=[2, 2], datatype="INT64", data=[0, 1, 2, 3])
    countries = InferInput(name="country_ids", shape=[2], datatype="INT64", data=[1, 2])
    before = InferInput(name="n_before", shape=[2], datatype="INT64", data=[0, 30])

    async def scores(inputs):
        payload = await predictor.preprocess(_predictor_request(inputs))
        return predictor.run_batch(payload)["scores"]

    got = asyncio.run(scores([ids, countries, before]))
    want = _session(rec_dir).run(
        ["scores"],
        {
            "item_ids": np.array([[0, 1], [2, 3]]),
            "country_ids": np.array([1, 2]),
            "n_before": np.array([0, 30]),
        },
    )[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Left out: unknown country and nothing before.
    bare = asyncio.run(scores([ids]))
    zeros = {"country_ids": np.zeros(2, np.int64), "n_before": np.zeros(2, np.int64)}
    want0 = _session(rec_dir).run(["scores"], {"item_ids": np.array([[0, 1], [2, 3]]), **zeros})
    np.testing.assert_allclose(bare, want0[0], rtol=1e-6)

    bad = InferInput(name="country_ids", shape=[2], datatype="INT64", data=[1, 3])
    with pytest.raises(BadRequest) as info:
        asyncio.run(scores([ids, bad]))
    assert info.value.field == "inputs[1].data"
    negative = InferInput(name="n_before", shape=[2], datatype="INT64", data=[-1, 0])
    with pytest.raises(BadRequest) as info:
        asyncio.run(scores([ids, negative]))
    assert info.value.field == "inputs[1].data"
    short = InferInput(name="country_ids", shape=[1], datatype="INT64", data=[1])
    with pytest.raises(BadRequest) as info:
        asyncio.run(scores([ids, short]))
    assert info.value.field == "inputs[1].shape"


def _port(start: int) -> int:
    """A free port of this helper's range (18500-18999)."""
    for port in range(start, 19000):
        if procs.port_is_free(port):
            return port
    raise RuntimeError("no free port in 18500-18999")


@pytest.mark.integration
def test_transformer_and_predictor_carry_the_customer_inputs(model, artifacts, tmp_path) -> None:
    """The split shape answers as the one-process model does, customers and sessions alike."""
    import httpx

    rec_dir, repo = artifacts
    p_port = _port(18500)
    predictor = start_server(
        "recommender",
        ["--role", "predictor", "--model-dir", str(rec_dir)],
        tmp_path / "predictor.log",
        port=p_port,
    )
    transformer = None
    try:
        transformer = start_server(
            "recommender",
            [
                "--role", "transformer", "--predictor-host", f"127.0.0.1:{p_port}",
                "--model-dir", str(rec_dir), "--feature-repo", str(repo),
            ],
            tmp_path / "transformer.log",
            port=_port(p_port + 1),
        )  # fmt: skip
        wait_ready(predictor)
        wait_ready(transformer)
        instances = [
            {"user_id": "17850", "k": 5},
            {"items": ["22752", "21730", "22633"], "country": "France", "k": 5},
            {"items": ["22752", "21730"], "country": "United Kingdom", "k": 5},
        ]
        response = httpx.post(
            f"{transformer.base}/v1/models/recommender:predict",
            json={"instances": instances},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        got = [[r["item_id"] for r in p["items"]] for p in response.json()["predictions"]]
        results, _ = _ask(model, instances)
        want = [[b.CATALOGUE_CODES[i - 1] for i in r.indices] for r in results]
        assert got == want
    finally:
        for server in (transformer, predictor):
            if server is not None:
                stop_server(server)
