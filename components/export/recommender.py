"""Export the deployed recommender to one self-contained ONNX file, checked against torch.

The graph takes ``item_ids`` int64 [batch, history] (left-padded with 0) and returns ``scores``
float32 [batch, n_items + 1]: the scores of the next item after the last position (column 0 is
padding). A model with customer features (``n_countries`` > 0) also takes ``country_ids`` int64
[batch] (0..n_countries-1, 0 = unknown) and ``n_before`` int64 [batch] (purchases before the
history, >= 0), and its ``countries.json`` is copied beside the graph. The MiniLM description
vectors and price bands are buffers of the model, so they are baked into the graph as
constants; the weights live inside the .onnx file (no external .data).

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
from components.common.recommender_model import (
    COUNTRIES,
    MODEL_CONFIG,
    UNKNOWN_COUNTRY,
    CustomerScorer,
    NextItemScorer,
    load_recommender,
    read_countries,
)
from components.export.config import ExportConfig
from components.export.onnx_io import checked_signature, export_single_file, parity_cases

logger = logging.getLogger(__name__)

MODEL_ONNX = "model.onnx"
CATALOGUE = "catalogue.json"
METADATA = "metadata.json"
INPUT_NAME, OUTPUT_NAME = "item_ids", "scores"
COUNTRY_INPUT, N_BEFORE_INPUT = "country_ids", "n_before"
CUSTOMER_INPUTS = (INPUT_NAME, COUNTRY_INPUT, N_BEFORE_INPUT)


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


def check_customer_inputs(
    country_ids: np.ndarray, n_before: np.ndarray, *, batch: int, n_countries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check the customer inputs of a batch before the graph; returns both as int64.

    ``country_ids`` indexes an embedding of ``n_countries`` rows, so it is range-checked like
    ``item_ids``; ``n_before`` is a count (>= 0; large counts share the last activity bucket).

    Raises:
        InputError: a shape other than [batch], a non-integer dtype, a country id outside
            0..n_countries-1 or a negative ``n_before``; the message names the input and row.
    """
    out = []
    for name, values, hi in (
        (COUNTRY_INPUT, country_ids, n_countries - 1),
        (N_BEFORE_INPUT, n_before, None),
    ):
        arr = np.asarray(values)
        if arr.shape != (batch,) or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(
                f"{name} must be a 1-D integer array [{batch}], got shape {arr.shape} "
                f"dtype {arr.dtype}",
                column=name,
            )
        bad = (arr < 0) if hi is None else (arr < 0) | (arr > hi)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            allowed = ">= 0" if hi is None else f"0..{hi} (0 is the unknown country)"
            raise InputError(f"{name}[{row}]={int(arr[row])} must be {allowed}", column=name)
        out.append(arr.astype(np.int64, copy=False))
    return out[0], out[1]


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


def _customer_batch(batch_size: int, n_countries: int) -> tuple[np.ndarray, np.ndarray]:
    """Country ids and n_before for a parity batch: every country and a spread of counts."""
    rows = np.arange(batch_size, dtype=np.int64)
    return rows % n_countries, (rows * 37) % 300


def _export_customer_scorer(
    scorer: CustomerScorer, path: Path, example: torch.Tensor, *, opset: int
) -> None:
    """Export the three-input scorer to one file (batch shared by all inputs, history dynamic)."""
    n_countries = scorer.model.config.n_countries
    countries, before = _customer_batch(example.shape[0], n_countries)
    batch = torch.export.Dim("batch", min=1)
    history = torch.export.Dim("history", min=1)
    try:
        program = torch.onnx.export(
            scorer,
            (example, torch.from_numpy(countries), torch.from_numpy(before)),
            dynamo=True,
            external_data=False,
            verbose=False,  # the exporter otherwise prints its progress to stdout
            input_names=list(CUSTOMER_INPUTS),
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes={
                INPUT_NAME: {0: batch, 1: history},
                COUNTRY_INPUT: {0: batch},
                N_BEFORE_INPUT: {0: batch},
            },
        )
        program.save(str(path), external_data=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for the recommender: {exc}") from exc
    leftovers = sorted(
        p.name for p in path.parent.iterdir() if p.name != path.name and p.suffix == ".data"
    )
    if leftovers:
        raise ExportError(f"export wrote external weight files {leftovers}; expected one .onnx")


def _check_customer_graph(path: Path, n_scores: int) -> dict[str, Any]:
    """The three-input graph's signature, after checking names, dtypes and dynamic axes."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)

    def dims(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input]
    if inputs != [(name, onnx.TensorProto.INT64) for name in CUSTOMER_INPUTS]:
        raise ExportError(f"graph inputs are {inputs}; expected int64 {list(CUSTOMER_INPUTS)}")
    outputs = [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]
    if outputs != [(OUTPUT_NAME, onnx.TensorProto.FLOAT)]:
        raise ExportError(f"graph outputs are {outputs}; expected one float32 {OUTPUT_NAME!r}")
    in_dims = [dims(i) for i in model.graph.input]
    out_dims = dims(model.graph.output[0])
    batch = in_dims[0][0] if in_dims[0] else None
    if (
        len(in_dims[0]) != 2
        or not all(isinstance(d, str) for d in in_dims[0])
        or in_dims[1] != [batch]
        or in_dims[2] != [batch]
    ):
        raise ExportError(f"inputs must be [batch, history], [batch], [batch]; got {in_dims}")
    if len(out_dims) != 2 or out_dims[1] != n_scores:
        raise ExportError(f"output has {out_dims[1:]} score columns; expected {n_scores}")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "inputs": [
            {"name": name, "dtype": "int64", "shape": d}
            for name, d in zip(CUSTOMER_INPUTS, in_dims, strict=True)
        ],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": out_dims}],
        "opset": int(opset),
    }


def _customer_parity(
    scorer: CustomerScorer,
    onnx_path: Path,
    histories: list[list[int]],
    shapes: list[tuple[int, int]],
    *,
    atol: float,
) -> list[dict[str, Any]]:
    """Max |ORT - torch| per shape with every country and a spread of n_before values."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    n_countries = scorer.model.config.n_countries
    cases = []
    for batch_size, length in shapes:
        ids = _batch(histories, batch_size, length)
        countries, before = _customer_batch(batch_size, n_countries)
        with torch.inference_mode():
            expected = (
                scorer(torch.from_numpy(ids), torch.from_numpy(countries), torch.from_numpy(before))
                .float()
                .numpy()
            )
        feeds = {INPUT_NAME: ids, COUNTRY_INPUT: countries, N_BEFORE_INPUT: before}
        (got,) = session.run([OUTPUT_NAME], feeds)
        if got.shape != expected.shape or got.dtype != np.float32:
            raise ExportError(
                f"ORT returned {got.dtype}{got.shape} for batch {batch_size} x history "
                f"{length}; torch {expected.dtype}{expected.shape}"
            )
        diff = float(np.max(np.abs(got - expected)))
        cases.append({"batch_size": batch_size, "history": length, "max_abs_diff": diff})
    failed = [c for c in cases if not c["max_abs_diff"] <= atol]
    if failed:
        raise ExportError(
            f"ONNX Runtime and torch disagree beyond parity_atol={atol}: "
            + ", ".join(
                f"batch {c['batch_size']} x history {c['history']}: {c['max_abs_diff']:.3g}"
                for c in failed
            )
        )
    return cases


def check_parity(
    scorer: NextItemScorer | CustomerScorer,
    onnx_path: Path,
    histories: list[list[int]],
    *,
    batch_sizes: tuple[int, ...],
    lengths: tuple[int, ...],
    atol: float,
) -> dict[str, Any]:
    """Max |ORT - torch| per (batch size, history length); raises ExportError above ``atol``.

    Lengths above the model's max_history are capped at it (serving never sends more). A
    :class:`CustomerScorer` is fed every country id and a spread of ``n_before`` values too.
    """
    max_history = scorer.model.config.max_history
    shapes = [
        (int(batch_size), length)
        for length in sorted({min(int(n), max_history) for n in lengths})
        for batch_size in batch_sizes
    ]
    if isinstance(scorer, CustomerScorer):
        cases = _customer_parity(scorer, onnx_path, histories, shapes, atol=atol)
        worst = max((c["max_abs_diff"] for c in cases), default=0.0)
        return {"atol": atol, "max_abs_diff": worst, "cases": cases}
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


def _countries(recommender_dir: Path, training_dir: Path, n_countries: int) -> list[str]:
    """The country vocabulary the model was trained with (recommender_model/, else training_set/).

    Raises:
        InputError: a model with customer features whose vocabulary is missing or of another size.
    """
    if n_countries == 0:
        return [UNKNOWN_COUNTRY]
    for folder in (recommender_dir, training_dir):
        if (folder / COUNTRIES).is_file():
            names = read_countries(folder / COUNTRIES)
            if len(names) != n_countries:
                raise InputError(
                    f"countries.json has {len(names)} countries but the model embeds {n_countries}",
                    file=str(folder / COUNTRIES),
                )
            return names
    raise InputError(
        "the model has customer features but no countries.json was found",
        file=str(recommender_dir / COUNTRIES),
    )


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
    countries = _countries(recommender_dir, training_dir, config.n_countries)
    customer = model.has_customer_features
    scorer = (CustomerScorer(model) if customer else NextItemScorer(model)).eval()
    histories = _histories(training_dir, max(cfg.parity_batch_sizes) * 4)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / MODEL_ONNX

    # Export from a real batch of at least 2 x 2: torch.export would specialise a size-1 axis.
    example = torch.from_numpy(_batch(histories, 2, max(2, min(8, config.max_history))))
    if customer:
        _export_customer_scorer(scorer, onnx_path, example, opset=cfg.opset)
        graph = _check_customer_graph(onnx_path, config.n_items + 1)
    else:
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
        # With customer features: country ids 0..n_countries-1 (0 unknown), n_before >= 0.
        "n_countries": config.n_countries,
        "customer_features": ["country", "activity"] if customer else [],
        "parity": parity,
        **graph,
    }
    art.write_json(out_dir / CATALOGUE, _catalogue(training_dir, item_map, config.max_history))
    shutil.copyfile(recommender_dir / art.ITEM_MAP, out_dir / art.ITEM_MAP)
    shutil.copyfile(recommender_dir / MODEL_CONFIG, out_dir / MODEL_CONFIG)
    if customer:
        art.write_json(out_dir / COUNTRIES, {"countries": countries})
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
