"""The recommender's bare predictor (``--role predictor``): ONNX scores over V2, nothing else.

On the cluster this is the InferenceService's ``spec.predictor``; the transformer in front of it
does the Feast lookup, validation and ranking. It is also the benchmark's floor: the same ONNX
model behind a KServe model that does no other work.

Input ``item_ids`` INT64 [B, H] (1 <= B <= 256, 1 <= H <= max_history, dense indices 0..N,
left-padded with 0), output ``scores`` FP32 [B, N+1]. A model exported with customer features
also takes ``country_ids`` INT64 [B] (0..n_countries-1 of its countries.json, 0 = unknown) and
``n_before`` INT64 [B] (>= 0), each optional (0 when left out). Ask for ``scores`` with
``"parameters": {"binary_data": true}`` to get it as raw little-endian bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from serving.artifacts import model_version
from serving.base import BlockingModel
from serving.errors import BadRequest, ModelLoadError, NotReady, PayloadTooLarge
from serving.kserve_compat import InferOutput, InferRequest, InferResponse
from serving.onnx_session import check_io, create_session
from serving.recommender import MAX_INSTANCES, MODEL_NAME, ORT_THREADS, Catalogue, read_countries
from serving.scoring import (
    COUNTRY_INPUT,
    CUSTOMER_INPUTS,
    N_BEFORE_INPUT,
    customer_feeds,
    has_customer_inputs,
)

logger = logging.getLogger(__name__)

INPUT = "item_ids"
OUTPUT = "scores"


class ScoresModel(BlockingModel):
    """KServe model over ``model.onnx`` (+ ``catalogue.json`` for its size and history length).

    Args:
        model_dir: ``exported/recommender``.
        name: the model name on the wire (the transformer calls the same name).
        require_gpu: demand CUDA (``None`` reads ``RECSYNTH_REQUIRE_GPU``).
    """

    def __init__(
        self, model_dir: Path, *, name: str = MODEL_NAME, require_gpu: bool | None = None
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.require_gpu = require_gpu
        self.version = ""
        self.n_items = 0
        self.max_history = 0
        # Country vocabulary size of a model with customer inputs; 0 for one without them.
        self.n_countries = 0
        self._session = None

    def load(self) -> bool:
        """Open the ONNX session (provider-checked) and score one padded row as a probe.

        Raises:
            ModelLoadError: a missing or corrupt file, a catalogue that does not match the model,
                or CUDA required but inactive.
        """
        catalogue = Catalogue.read(self.model_dir / "catalogue.json")
        model_path = self.model_dir / "model.onnx"
        session = create_session(
            model_path, require_gpu=self.require_gpu, intra_op_threads=ORT_THREADS
        )
        check_io(
            session,
            inputs={INPUT: "tensor(int64)"},
            outputs={OUTPUT: "tensor(float)"},
            model_path=model_path,
        )
        customer = has_customer_inputs([i.name for i in session.get_inputs()])
        n_countries = len(read_countries(self.model_dir)) if customer else 0
        feeds = {INPUT: np.zeros((1, catalogue.max_history), np.int64)}
        if customer:
            feeds.update(customer_feeds(1, None, None))
        probe = session.run([OUTPUT], feeds)
        if probe[0].shape != (1, catalogue.n_items + 1):
            raise ModelLoadError(
                f"{model_path} returns scores of shape {probe[0].shape}, but catalogue.json "
                f"has {catalogue.n_items} items (expected (1, {catalogue.n_items + 1}))"
            )
        self.n_items = catalogue.n_items
        self.max_history = catalogue.max_history
        self.n_countries = n_countries
        self._session = session
        self.version = model_version(self.model_dir)
        self.ready = True
        logger.info(
            "predictor %s ready: scores [B, %d], history <= %d",
            self.version,
            self.n_items + 1,
            self.max_history,
        )
        return self.ready

    def _inputs(self, request: InferRequest) -> dict[str, np.ndarray]:
        """The checked feeds of a request: ``item_ids`` and, for a customer model, the rest."""
        inputs = list(request.inputs)
        names = [i.name for i in inputs]
        allowed_names = [INPUT, *CUSTOMER_INPUTS] if self.n_countries else [INPUT]
        if (
            INPUT not in names
            or len(set(names)) != len(names)
            or not set(names) <= set(allowed_names)
        ):
            raise BadRequest(
                "expected the input item_ids" + (" and optionally" if self.n_countries else ""),
                field="inputs",
                value=names,
                has_value=True,
                allowed=f"{INPUT} INT64 [B, H]"
                + (
                    f", {COUNTRY_INPUT} INT64 [B], {N_BEFORE_INPUT} INT64 [B]"
                    if self.n_countries
                    else ""
                ),
            )
        by_name = {i.name: i for i in inputs}
        ids = self._item_ids(by_name[INPUT], names.index(INPUT))
        if not self.n_countries:
            return {INPUT: ids}
        feeds = {INPUT: ids, **customer_feeds(ids.shape[0], None, None)}
        for name, hi in ((COUNTRY_INPUT, self.n_countries - 1), (N_BEFORE_INPUT, None)):
            if name in by_name:
                feeds[name] = self._row_values(
                    by_name[name], names.index(name), ids.shape[0], name, hi
                )
        return feeds

    def _row_values(
        self, tensor: Any, position: int, rows: int, name: str, hi: int | None
    ) -> np.ndarray:
        """One INT64 [B] customer input, range-checked (``hi`` None: any count >= 0)."""
        where = f"inputs[{position}]"
        if tensor.datatype != "INT64":
            raise BadRequest(
                f"wrong datatype for input {name!r}",
                field=f"{where}.datatype",
                value=tensor.datatype,
                allowed="INT64",
            )
        shape = list(tensor.shape)
        if shape != [rows]:
            raise BadRequest(
                "must be one value per row", field=f"{where}.shape", value=shape,
                allowed=f"[{rows}]",
            )  # fmt: skip
        raw = getattr(tensor, "_raw_data", None)
        if raw is not None:
            if len(raw) != 8 * rows:
                raise BadRequest(
                    f"binary data has {len(raw)} bytes, shape {shape} needs {8 * rows}",
                    field=f"{where}.data",
                )
            values = np.frombuffer(raw, dtype="<i8").astype(np.int64)
        else:
            data = np.asarray(tensor.data)
            if data.dtype.kind not in "iu" or data.size != rows:
                raise BadRequest(
                    f"data must be {rows} integers for shape {shape}",
                    field=f"{where}.data",
                    value=str(data.dtype),
                )
            values = data.reshape(rows).astype(np.int64, copy=False)
        bad = (values < 0) if hi is None else (values < 0) | (values > hi)
        if bad.any():
            raise BadRequest(
                f"{name} out of range",
                field=f"{where}.data",
                value=int(values[np.flatnonzero(bad)[0]]),
                allowed=">= 0" if hi is None else f"0 (unknown country) to {hi}",
            )
        return values

    def _item_ids(self, tensor: Any, position: int = 0) -> np.ndarray:
        if tensor.datatype != "INT64":
            raise BadRequest(
                f"wrong datatype for input {INPUT!r}",
                field=f"inputs[{position}].datatype",
                value=tensor.datatype,
                allowed="INT64",
            )
        shape = list(tensor.shape)
        if len(shape) != 2 or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise BadRequest(
                "must be a 2-D shape",
                field=f"inputs[{position}].shape",
                value=shape,
                allowed="[B, H]",
            )
        if shape[0] > MAX_INSTANCES:
            raise PayloadTooLarge(
                "too many rows", field=f"inputs[{position}].shape", value=shape,
                allowed=f"B <= {MAX_INSTANCES}",
            )  # fmt: skip
        if shape[1] > self.max_history:
            raise BadRequest(
                "history too long", field=f"inputs[{position}].shape", value=shape,
                allowed=f"H <= {self.max_history}",
            )  # fmt: skip
        raw = getattr(tensor, "_raw_data", None)
        if raw is not None:
            if len(raw) != 8 * shape[0] * shape[1]:
                raise BadRequest(
                    f"binary data has {len(raw)} bytes, shape {shape} needs "
                    f"{8 * shape[0] * shape[1]}",
                    field=f"inputs[{position}].data",
                )
            ids = np.frombuffer(raw, dtype="<i8").reshape(shape)
        else:
            data = np.asarray(tensor.data)
            # JSON numbers that are not integers (2.5, true, "3") give another dtype: refused,
            # not cast, as everywhere else in this API.
            if data.dtype.kind not in "iu" or data.size != shape[0] * shape[1]:
                raise BadRequest(
                    f"data must be {shape[0] * shape[1]} integers for shape {shape}",
                    field=f"inputs[{position}].data",
                    value=str(data.dtype),
                )
            ids = data.reshape(shape).astype(np.int64, copy=False)
        if ids.min() < 0 or ids.max() > self.n_items:
            raise BadRequest(
                "item index out of range",
                field=f"inputs[{position}].data",
                value=int(ids.min() if ids.min() < 0 else ids.max()),
                allowed=f"0 (padding) to {self.n_items}",
            )
        return ids

    async def preprocess(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Check the input tensors; V1 bodies are refused (this is a V2 predictor)."""
        if not self.ready:
            raise NotReady(f"model {self.name} is not loaded")
        if not isinstance(payload, InferRequest):
            raise BadRequest(
                "the predictor speaks V2 only",
                field="protocol",
                allowed=f"POST /v2/models/{self.name}/infer with {INPUT} INT64 [B, H]",
            )
        return {"feeds": self._inputs(payload), **self.request_context(payload, (OUTPUT,))}

    def run_batch(self, payload: dict[str, Any]) -> dict:
        """ORT on the checked batch (run in the executor)."""
        scores = self._session.run([OUTPUT], payload["feeds"])[0]
        return {**payload, "scores": scores}

    def postprocess(
        self,
        result: dict[str, Any],
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        """``scores`` FP32 [B, N+1] (binary when the request asks for it)."""
        scores = np.ascontiguousarray(result["scores"], dtype=np.float32)
        output = InferOutput(OUTPUT, list(scores.shape), "FP32", data=scores)
        return self.v2_response(result, [output])

    def get_input_types(self) -> list[dict]:
        """The V2 inputs, for the model metadata endpoint."""
        out = [{"name": INPUT, "datatype": "INT64", "shape": [-1, self.max_history]}]
        if self.n_countries:
            out += [{"name": n, "datatype": "INT64", "shape": [-1]} for n in CUSTOMER_INPUTS]
        return out

    def get_output_types(self) -> list[dict]:
        """The V2 output, for the model metadata endpoint."""
        return [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, self.n_items + 1]}]
