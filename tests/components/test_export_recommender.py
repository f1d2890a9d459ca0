"""Tests of the recommender's ONNX export: one file, dynamic axes, parity with torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from components.common.artifacts import write_json
from components.common.errors import InputError
from components.common.ids import ItemMap
from components.common.recommender_model import (
    NextItemScorer,
    RecommenderConfig,
    SequentialRecommender,
    load_recommender,
)
from components.export.config import ExportConfig
from components.export.recommender import (
    ExportError,
    check_customer_inputs,
    check_item_ids,
    check_parity,
    export_recommender,
)

N_ITEMS = 40
MAX_HISTORY = 12


def _write_inputs(root: Path) -> tuple[Path, Path]:
    """A recommender_model/ with random weights and a training_set/ with real histories."""
    rng = np.random.default_rng(0)
    ids = [f"{30000 + i}" for i in range(1, N_ITEMS + 1)]
    training = root / "training_set"
    training.mkdir()
    ItemMap(ids).save(training / "item_map.json")
    seqs = [list(rng.choice(np.arange(1, N_ITEMS + 1), size=n, replace=False)) for n in (3, 20, 7)]
    pd.DataFrame(
        {
            "seq_id": ["real-a", "real-b", "syn-c"],
            "source": ["real", "real", "synthetic"],
            "customer_id": ["a", "b", None],
            "items": [[int(i) for i in s] for s in seqs],
            "weight": [1.0, 1.0, 0.5],
        }
    ).to_parquet(training / "train_sequences.parquet", index=False)
    pd.DataFrame(
        {
            "item_index": np.arange(1, N_ITEMS + 1),
            "item_id": ids,
            "description": [f"THING {i}" for i in ids],
            "price_band": np.arange(N_ITEMS) % 3,
            "popularity": np.arange(N_ITEMS)[::-1],
        }
    ).to_parquet(training / "item_features.parquet", index=False)

    torch.manual_seed(0)
    cfg = RecommenderConfig(
        n_items=N_ITEMS, n_price_bands=3, d_model=16, n_layers=2, n_heads=2, max_history=MAX_HISTORY
    )
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 384), dim=1)
    model = SequentialRecommender(cfg, text, torch.arange(N_ITEMS + 1) % 3)
    with torch.no_grad():  # larger weights than the init, so scores are far from uniform
        model.head.weight.mul_(20)
    recommender = root / "recommender_model"
    recommender.mkdir()
    torch.save(model.state_dict(), recommender / "model.pt")
    write_json(recommender / "model_config.json", cfg.model_dump())
    ItemMap(ids).save(recommender / "item_map.json")
    return recommender, training


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path, Path]:
    root = tmp_path_factory.mktemp("export")
    recommender, training = _write_inputs(root)
    cfg = ExportConfig(parity_batch_sizes=(1, 3), parity_lengths=(1, 5, 50))
    meta = export_recommender(recommender, training, root / "out", cfg=cfg)
    return meta, recommender, training, root / "out"


def test_parity_within_tolerance_on_every_case(exported: tuple) -> None:
    meta, *_ = exported
    parity = meta["parity"]
    # Lengths above max_history are capped at it.
    cases = {(c["batch_size"], c["history"]) for c in parity["cases"]}
    assert cases == {(b, n) for b in (1, 3) for n in (1, 5, MAX_HISTORY)}
    assert parity["max_abs_diff"] <= 1e-4
    assert all(c["max_abs_diff"] <= 1e-4 for c in parity["cases"])


def test_one_file_with_dynamic_axes(exported: tuple) -> None:
    meta, recommender, _, out = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "catalogue.json",
        "item_map.json",
        "metadata.json",
        "model.onnx",
        "model_config.json",
    ]
    data = (out / "model.onnx").read_bytes()
    assert meta["model_version"] == hashlib.sha256(data).hexdigest()[:12]
    assert json.loads((out / "metadata.json").read_text())["model_version"] == meta["model_version"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["item_ids"]
    assert [o.name for o in session.get_outputs()] == ["scores"]
    # A shape never used during export or parity.
    ids = np.zeros((5, 9), dtype=np.int64)
    ids[:, -3:] = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], [13, 14, 15]]
    (scores,) = session.run(["scores"], {"item_ids": ids})
    assert scores.shape == (5, N_ITEMS + 1) and scores.dtype == np.float32
    # Left padding does not change the answer, in the exported graph too.
    (short,) = session.run(["scores"], {"item_ids": ids[:, -3:]})
    np.testing.assert_allclose(scores, short, atol=1e-5)
    scorer = NextItemScorer(load_recommender(recommender))
    with torch.inference_mode():
        expected = scorer(torch.from_numpy(ids)).numpy()
    assert float(np.abs(scores - expected).max()) <= 1e-4


def test_catalogue_lists_every_item(exported: tuple) -> None:
    _, _, _, out = exported
    catalogue = json.loads((out / "catalogue.json").read_text())
    assert catalogue["max_history"] == MAX_HISTORY
    items = catalogue["items"]
    assert [i["index"] for i in items] == list(range(1, N_ITEMS + 1))
    assert items[0] == {
        "index": 1,
        "item_id": "30001",
        "description": "THING 30001",
        "popularity": N_ITEMS - 1,
        "price_band": 0,
    }


def test_parity_failure_raises(exported: tuple) -> None:
    _, recommender, training, out = exported
    model = load_recommender(recommender)
    with torch.no_grad():
        model.head.weight[5, 0] += 0.5  # torch now differs from the exported graph
    histories = [[1, 2, 3], [4, 5]]
    with pytest.raises(ExportError, match="parity_atol"):
        check_parity(
            NextItemScorer(model),
            out / "model.onnx",
            histories,
            batch_sizes=(2,),
            lengths=(3,),
            atol=1e-4,
        )


def test_missing_weights_is_an_input_error(tmp_path: Path) -> None:
    recommender, training = _write_inputs(tmp_path)
    (recommender / "model.pt").unlink()
    with pytest.raises(InputError, match="model.pt"):
        export_recommender(recommender, training, tmp_path / "out", cfg=ExportConfig())


@pytest.mark.parametrize("bad", [{"parity_atol": 0}, {"opset": 12}, {"parity_lengths": "x"}])
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ExportConfig(**bad)


def test_item_ids_are_range_checked_before_the_graph(exported: tuple) -> None:
    metadata, _, _, _ = exported
    assert metadata["item_id_range"] == [0, N_ITEMS]
    ok = check_item_ids(np.array([[0, 1, N_ITEMS]], dtype=np.int32), N_ITEMS)
    assert ok.dtype == np.int64 and ok.tolist() == [[0, 1, N_ITEMS]]
    with pytest.raises(
        InputError, match=rf"item_ids\[1\]\[0\]={N_ITEMS + 1} is outside 0..{N_ITEMS}"
    ):
        check_item_ids(np.array([[1, 2], [N_ITEMS + 1, 3]]), N_ITEMS)
    with pytest.raises(InputError, match=r"item_ids\[0\]\[1\]=-1"):
        check_item_ids(np.array([[1, -1]]), N_ITEMS)
    with pytest.raises(InputError, match="2-D integer"):
        check_item_ids(np.array([1.0, 2.0]), N_ITEMS)


# --- customer features -------------------------------------------------------------------------

CUSTOMER_COUNTRIES = ["<unknown>", "France", "Germany"]


@pytest.fixture(scope="module")
def exported_customer(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """A model with customer features (large embeddings so they move scores), exported."""
    root = tmp_path_factory.mktemp("export_customer")
    recommender, training = _write_inputs(root)
    torch.manual_seed(1)
    cfg = RecommenderConfig(
        n_items=N_ITEMS,
        n_price_bands=3,
        d_model=16,
        n_layers=2,
        n_heads=2,
        max_history=MAX_HISTORY,
        n_countries=len(CUSTOMER_COUNTRIES),
    )
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 384), dim=1)
    model = SequentialRecommender(cfg, text, torch.arange(N_ITEMS + 1) % 3)
    with torch.no_grad():
        model.head.weight.mul_(20)
        model.country_emb.weight.mul_(50)
        model.activity_emb.weight.mul_(50)
    torch.save(model.state_dict(), recommender / "model.pt")
    write_json(recommender / "model_config.json", cfg.model_dump())
    write_json(recommender / "countries.json", {"countries": CUSTOMER_COUNTRIES})
    out = root / "out"
    metadata = export_recommender(recommender, training, out, cfg=ExportConfig())
    return metadata, recommender, out


def test_customer_graph_inputs_and_parity(exported_customer: tuple) -> None:
    metadata, recommender, out = exported_customer
    assert [i["name"] for i in metadata["inputs"]] == ["item_ids", "country_ids", "n_before"]
    assert metadata["inputs"][1]["shape"] == [metadata["inputs"][0]["shape"][0]]
    assert metadata["n_countries"] == 3 and metadata["customer_features"] == ["country", "activity"]
    assert metadata["parity"]["max_abs_diff"] <= 1e-4 and len(metadata["parity"]["cases"]) == 9
    assert json.loads((out / "countries.json").read_text()) == {"countries": CUSTOMER_COUNTRIES}

    # ORT against torch on batches the export never saw, with every country and several counts.
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_recommender(recommender)
    ids = np.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0, 9]] * 2, dtype=np.int64)
    countries = np.array([0, 1, 2, 2, 1, 0], dtype=np.int64)
    before = np.array([0, 1, 3, 1000, 7, 64], dtype=np.int64)
    feeds = {"item_ids": ids, "country_ids": countries, "n_before": before}
    (got,) = session.run(["scores"], feeds)
    with torch.inference_mode():
        want = model.score_next(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # The inputs matter: another country or count gives other scores for the same history.
    other = session.run(["scores"], {**feeds, "country_ids": (countries + 1) % 3})[0]
    assert np.abs(other - got).max() > 1e-2
    fewer = session.run(["scores"], {**feeds, "n_before": np.zeros(6, dtype=np.int64)})[0]
    assert np.abs(fewer[2:4] - got[2:4]).max() > 1e-2


def test_customer_inputs_are_range_checked_before_the_graph() -> None:
    c, b = check_customer_inputs(
        np.array([0, 2], np.int32), np.array([0, 9]), batch=2, n_countries=3
    )
    assert c.dtype == np.int64 and c.tolist() == [0, 2] and b.tolist() == [0, 9]
    with pytest.raises(InputError, match=r"country_ids\[1\]=3 must be 0..2"):
        check_customer_inputs(np.array([0, 3]), np.array([0, 0]), batch=2, n_countries=3)
    with pytest.raises(InputError, match=r"n_before\[0\]=-1 must be >= 0"):
        check_customer_inputs(np.array([0, 1]), np.array([-1, 0]), batch=2, n_countries=3)
    with pytest.raises(InputError, match=r"country_ids must be a 1-D integer array \[2\]"):
        check_customer_inputs(np.array([[0, 1]]), np.array([0, 0]), batch=2, n_countries=3)


def test_customer_model_without_countries_file_is_an_input_error(tmp_path: Path) -> None:
    recommender, training = _write_inputs(tmp_path)
    cfg = RecommenderConfig(
        n_items=N_ITEMS, n_price_bands=3, d_model=16, n_heads=2, max_history=MAX_HISTORY,
        n_countries=2,
    )  # fmt: skip
    model = SequentialRecommender(cfg, torch.zeros(N_ITEMS + 1, 384), torch.arange(N_ITEMS + 1) % 3)
    torch.save(model.state_dict(), recommender / "model.pt")
    write_json(recommender / "model_config.json", cfg.model_dump())
    with pytest.raises(InputError, match="no countries.json"):
        export_recommender(recommender, training, tmp_path / "out", cfg=ExportConfig())
