"""Export the deployed recommender to one self-contained ONNX file, checked against torch.

The graph takes ``item_ids`` int64 [batch, history] (left-padded with 0) and returns ``scores``
float32 [batch, n_items + 1]: the scores of the next item after the last position (column 0 is
padding). The MiniLM description vectors and price bands are buffers of the model, so they are
baked into the graph as constants; the weights live inside the .onnx file (no external .data).

Before anything is written, ONNX Runtime's output is compared with torch's on real customer
histories for every configured batch size and history length.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common import artifacts as art
from components.common.errors import ExportError, InputError
from components.common.ids import ItemMap
from components.common.recommender_model import MODEL_CONFIG, NextItemScorer, load_recommender
from components.export.config import ExportConfig
from components.export.onnx_io import checked_signature, export_single_file, parity_cases

logger = logging.getLogger(__name__)

MODEL_ONNX = "model.onnx"
CATALOGUE = "catalogue.json"
METADATA = "metadata.json"
INPUT_NAME, OUTPUT_NAME = "item_ids", "scores"


def check_item_ids(item_ids: np.ndarray, n_items: int) -> np.ndarray:
    """Check a batch of histories before it reaches the graph; returns it as int64.

    The graph's embedding lookups index tables of ``n_items + 1`` rows: an index outside
    ``0..n_items`` would read out of bounds (ONNX Runtime fails the run, or worse, depending on
    the provider), so every caller of the ONNX model checks first. Serving does too.

    Raises:
        InputError: ``item_ids`` is not a 2-D integer array, or an index is outside 0..n_items
            (0 is padding); the message names the first bad value and its position.
    """
    arr = np.asarray(item_ids)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"item_ids must be a 2-D integer array [batch, history], got shape {arr.shape} "
            f"dtype {arr.dtype}",
            column="item_ids",
        )
    bad = (arr < 0) | (arr > n_items)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(
            f"item_ids[{row}][{col}]={int(arr[row, col])} is outside 0..{n_items} "
            "(0 is padding, 1..n_items are catalogue items)",
            column="item_ids",
        )
    return arr.astype(np.int64, copy=False)


def _histories(training_dir: Path, n: int) -> list[list[int]]:
    """Up to ``n`` real customer histories (longest first), the inputs the parity check uses."""
    seq = art.read_parquet(training_dir / art.TRAIN_SEQUENCES, ("source", "items"))
    real = [list(map(int, s)) for s in seq.loc[seq["source"] == "real", "items"]]
    if not real:
        raise InputError(
            "no real sequences to check parity on", file=str(training_dir / art.TRAIN_SEQUENCES)
        )
    real.sort(key=len, reverse=True)
    return real[:n]


def _batch(histories: list[list[int]], batch_size: int, length: int) -> np.ndarray:
    """[batch_size, length] int64: real histories cut to their last ``length`` items, left-padded.

    Rows cycle through the histories with varied lengths so that padding is exercised too.
    """
    out = np.zeros((batch_size, length), dtype=np.int64)
    for row in range(batch_size):
        history = histories[row % len(histories)]
        keep = max(1, min(len(history), length - (row % max(1, length // 2))))
        tail = history[-keep:]
        out[row, length - len(tail) :] = tail
    return out


def _check_graph(path: Path, n_scores: int) -> dict[str, Any]:
    """The graph's signature, after checking it is the promised ``[batch, n_scores]``."""
    signature = checked_signature(path, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    out_dims = signature["outputs"][0]["shape"]
    if len(out_dims) != 2 or out_dims[1] != n_scores:
        raise ExportError(f"output has {out_dims[1:]} score columns; expected {n_scores}")
    return signature


def check_parity(
    scorer: NextItemScorer,
    onnx_path: Path,
    histories: list[list[int]],
    *,
    batch_sizes: tuple[int, ...],
    lengths: tuple[int, ...],
    atol: float,
) -> dict[str, Any]:
    """Max |ORT - torch| per (batch size, history length); raises ExportError above ``atol``.

    Lengths above the model's max_history are capped at it (serving never sends more).
    """
    max_history = scorer.model.config.max_history
    shapes = [
        (int(batch_size), length)
        for length in sorted({min(int(n), max_history) for n in lengths})
        for batch_size in batch_sizes
    ]
    cases = parity_cases(
        scorer,
        onnx_path,
        lambda batch_size, length: _batch(histories, batch_size, length),
        shapes,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        length_key="history",
        atol=atol,
    )
    worst = max((c["max_abs_diff"] for c in cases), default=0.0)
    return {"atol": atol, "max_abs_diff": worst, "cases": cases}


def _catalogue(training_dir: Path, item_map: ItemMap, max_history: int) -> dict[str, Any]:
    features = art.read_parquet(
        training_dir / art.ITEM_FEATURES,
        ("item_index", "item_id", "description", "popularity", "price_band"),
    ).sort_values("item_index")
    if features["item_id"].astype(str).tolist() != item_map.item_ids:
        raise InputError(
            "item features disagree with the recommender's item_map.json",
            file=str(training_dir / art.ITEM_FEATURES),
        )
    items = [
        {
            "index": int(row.item_index),
            "item_id": str(row.item_id),
            "description": str(row.description),
            "popularity": int(row.popularity),
            "price_band": int(row.price_band),
        }
        for row in features.itertuples(index=False)
    ]
    return {"items": items, "max_history": int(max_history)}


def export_recommender(
    recommender_dir: Path, training_dir: Path, out_dir: Path, *, cfg: ExportConfig
) -> dict[str, Any]:
    """Export ``recommender_model/`` to ``out_dir`` (model.onnx, catalogue, metadata, item map).

    Args:
        recommender_dir: train's output (model.pt, model_config.json, item_map.json).
        training_dir: fuse's output (item features for the catalogue, real histories for parity).
        out_dir: the directory to write; the caller (export.logic) makes it atomic.
        cfg: the export settings (opset, parity tolerance, batch sizes, history lengths).

    Returns:
        The metadata written to metadata.json.

    Raises:
        InputError: an input artifact is missing or inconsistent.
        ExportError: the export fails or ORT and torch disagree beyond ``cfg.parity_atol``.
    """
    recommender_dir, training_dir, out_dir = (
        Path(recommender_dir),
        Path(training_dir),
        Path(out_dir),
    )
    model = load_recommender(recommender_dir)
    item_map = ItemMap.load(recommender_dir / art.ITEM_MAP)
    config = model.config
    if len(item_map) != config.n_items:
        raise InputError(
            f"item_map.json has {len(item_map)} items but the model scores {config.n_items}",
            file=str(recommender_dir / art.ITEM_MAP),
        )
    scorer = NextItemScorer(model).eval()
    histories = _histories(training_dir, max(cfg.parity_batch_sizes) * 4)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / MODEL_ONNX

    # Export from a real batch of at least 2 x 2: torch.export would specialise a size-1 axis.
    example = torch.from_numpy(_batch(histories, 2, max(2, min(8, config.max_history))))
    export_single_file(
        scorer,
        onnx_path,
        example=example,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        axes=("batch", "history"),
        opset=cfg.opset,
        what="recommender",
    )
    graph = _check_graph(onnx_path, config.n_items + 1)
    parity = check_parity(
        scorer,
        onnx_path,
        histories,
        batch_sizes=cfg.parity_batch_sizes,
        lengths=cfg.parity_lengths,
        atol=cfg.parity_atol,
    )

    data = onnx_path.read_bytes()
    metadata: dict[str, Any] = {
        "model": "recommender",
        "model_version": hashlib.sha256(data).hexdigest()[:12],
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "onnx_bytes": len(data),
        "n_items": config.n_items,
        "max_history": config.max_history,
        "padding_index": 0,
        # Callers must range-check inputs with check_item_ids before running the graph.
        "item_id_range": [0, config.n_items],
        "parity": parity,
        **graph,
    }
    art.write_json(out_dir / CATALOGUE, _catalogue(training_dir, item_map, config.max_history))
    shutil.copyfile(recommender_dir / art.ITEM_MAP, out_dir / art.ITEM_MAP)
    shutil.copyfile(recommender_dir / MODEL_CONFIG, out_dir / MODEL_CONFIG)
    art.write_json(out_dir / METADATA, metadata)
    logger.info(
        "exported recommender %s (%d items, %.1f MB), parity max |diff| %.2g over %d cases",
        metadata["model_version"],
        config.n_items,
        len(data) / 1e6,
        parity["max_abs_diff"],
        len(parity["cases"]),
    )
    return metadata
