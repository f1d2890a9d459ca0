"""Tiny artifacts matching the exported/ and feature_store/ contracts, for the serving tests.

The ONNX models are built with onnx.helper (no torch): an embedding lookup and a matrix
product, small enough to build in milliseconds. The feature store is built by
components.register_features.logic.run from cleaned/ and training_set/ inputs made here; run
as ``python serving_builders.py feature-store OUT`` so it can build in a subprocess while a
server starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Stock codes of the test catalogue (index = position + 1). Real Online Retail codes.
CATALOGUE_CODES = [
    "85123A", "71053", "84406B", "84029G", "84029E", "22752", "21730", "22633",
    "22632", "84879", "22745", "22748", "22749", "22310", "84969", "22623",
    "22622", "21754", "21755", "21777", "48187", "22960", "22913", "22912",
]  # fmt: skip
MAX_HISTORY = 8
# Bought earlier but no longer in the catalogue: histories may hold such codes.
RETIRED_CODES = ["10002", "10080"]

# Customers in the online store: recent_items oldest first.
HISTORIES = {
    "17850": ["85123A", "71053", "84406B", "84029G"],
    "13047": ["22752", "21730"],
    "12583": ["10002", "84879", "22745"],  # one retired code among known ones
    "15100": ["10002", "10080"],  # only retired codes: no usable history
}
UNKNOWN_CUSTOMER = "99999"
# Popularity of catalogue item i (1-based): distinct, so the fallback order is known.
POPULARITY = {code: 100 - 3 * i for i, code in enumerate(CATALOGUE_CODES)}

COUNTRIES = ["France", "Germany", "United Kingdom"]
GEN_CODES = CATALOGUE_CODES[:20]
GEN_MAX_LENGTH = 16


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by every onnxruntime of the last two years
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_recommender(out: Path, *, seed: int = 0) -> Path:
    """``model.onnx`` + ``catalogue.json`` + ``metadata.json`` in ``out``.

    scores = (sum of the history's embeddings) @ E^T with E close to a scaled identity, so the
    items already in a history score highest: a server that did not exclude them would answer
    with them.
    """
    out.mkdir(parents=True, exist_ok=True)
    n = len(CATALOGUE_CODES)
    rng = np.random.default_rng(seed)
    emb = (3.0 * np.eye(n + 1) + 0.5 * rng.normal(size=(n + 1, n + 1))).astype(np.float32)
    emb[0] = 0.0
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "item_ids"], ["h"], axis=0),
            helper.make_node("ReduceSum", ["h", "axes"], ["u"], keepdims=0),
            helper.make_node("MatMul", ["u", "emb_t"], ["scores"]),
        ],
        "tiny_recommender",
        [helper.make_tensor_value_info("item_ids", TensorProto.INT64, ["batch", "history"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", n + 1])],
        initializer=[
            numpy_helper.from_array(emb, "emb"),
            numpy_helper.from_array(np.ascontiguousarray(emb.T), "emb_t"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    _save(graph, out / "model.onnx")
    catalogue = {
        "items": [
            {
                "index": i + 1,
                "item_id": code,
                "description": f"TEST ITEM {code}",
                "popularity": POPULARITY[code],
                "price_band": i % 3,
            }
            for i, code in enumerate(CATALOGUE_CODES)
        ],
        "max_history": MAX_HISTORY,
    }
    (out / "catalogue.json").write_text(json.dumps(catalogue), encoding="utf-8")
    (out / "metadata.json").write_text(json.dumps({"model_version": "rec-test-1"}))
    return out


def generator_vocab() -> dict:
    """vocab.json in the project's contract: specials, country tokens, then item tokens."""
    tokens = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"<country:{c}>" for c in COUNTRIES]
    first_item = len(tokens)
    return {
        "tokens": tokens + GEN_CODES,
        "pad_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 3,
        "first_item_id": first_item,
        "countries": {c: 4 + i for i, c in enumerate(COUNTRIES)},
        "max_length": GEN_MAX_LENGTH,
    }


def build_generator(out: Path, *, dim: int = 8, seed: int = 1, metadata: bool = True) -> Path:
    """``model.onnx`` (a bigram LM: logits depend on the current token) + ``vocab.json``.

    The special and country tokens get a large logit, so a sampler that failed to mask them
    would emit them.
    """
    out.mkdir(parents=True, exist_ok=True)
    vocab = generator_vocab()
    v = len(vocab["tokens"])
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(v, dim)).astype(np.float32)
    proj = rng.normal(size=(dim, v)).astype(np.float32)
    bias = np.zeros(v, dtype=np.float32)
    bias[[0, 1, 3, 4, 5, 6]] = 8.0  # pad, bos, unk and the countries: must be masked
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0),
            helper.make_node("MatMul", ["h", "proj"], ["z"]),
            helper.make_node("Add", ["z", "bias"], ["logits"]),
        ],
        "tiny_generator",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", v])],
        initializer=[
            numpy_helper.from_array(emb, "emb"),
            numpy_helper.from_array(proj, "proj"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    _save(graph, out / "model.onnx")
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    if metadata:
        (out / "metadata.json").write_text(json.dumps({"model_version": "gen-test-1"}))
    return out


def build_feature_store(work: Path) -> Path:
    """A real Feast repo (sqlite online store) holding :data:`HISTORIES`, built by F's step.

    Returns:
        The feature_store/ directory.
    """
    import pandas as pd

    from components.register_features.config import FeaturesConfig
    from components.register_features.logic import run

    cleaned, training, out = work / "cleaned", work / "training_set", work / "feature_store"
    cleaned.mkdir(parents=True, exist_ok=True)
    training.mkdir(parents=True, exist_ok=True)
    t0 = pd.Timestamp("2011-06-01", tz="UTC")
    customers = list(HISTORIES)
    stamps = {c: [t0 + pd.Timedelta(days=i + j) for j in range(len(HISTORIES[c]))]
              for i, c in enumerate(customers)}  # fmt: skip
    pd.DataFrame(
        {
            "customer_id": customers,
            "country": ["United Kingdom"] * len(customers),
            "items": [HISTORIES[c] for c in customers],
            "ts": [stamps[c] for c in customers],
        }
    ).to_parquet(cleaned / "sequences.parquet")
    pd.DataFrame(
        {
            "customer_id": customers,
            "country": ["United Kingdom"] * len(customers),
            "n_events": [len(HISTORIES[c]) for c in customers],
            "first_ts": pd.DatetimeIndex([stamps[c][0] for c in customers]),
            "last_ts": pd.DatetimeIndex([stamps[c][-1] for c in customers]),
        }
    ).to_parquet(cleaned / "customers.parquet")
    codes = CATALOGUE_CODES + RETIRED_CODES
    pd.DataFrame(
        {
            "item_id": codes,
            "description": [f"TEST ITEM {c}" for c in codes],
            "unit_price": [1.0] * len(codes),
            "price_band": [0] * len(codes),
            "n_events": [1] * len(codes),
            "first_seen": pd.DatetimeIndex([t0] * len(codes)),
        }
    ).to_parquet(cleaned / "items.parquet")
    pd.DataFrame(
        {
            "item_index": np.arange(1, len(CATALOGUE_CODES) + 1, dtype=np.int64),
            "item_id": CATALOGUE_CODES,
            "description": [f"TEST ITEM {c}" for c in CATALOGUE_CODES],
            "price_band": np.zeros(len(CATALOGUE_CODES), dtype=np.int64),
            "popularity": np.array([POPULARITY[c] for c in CATALOGUE_CODES], dtype=np.int64),
            "text_embedding": [np.full(4, 0.5, dtype=np.float32)] * len(CATALOGUE_CODES),
        }
    ).to_parquet(training / "item_features.parquet")
    run(FeaturesConfig(), cleaned, training, out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "feature-store":
        sys.exit("usage: serving_builders.py feature-store WORK_DIR")
    print(build_feature_store(Path(sys.argv[2])))
