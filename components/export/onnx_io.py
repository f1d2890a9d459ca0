"""Writing one self-contained ONNX file and checking its signature: shared by both exporters.

Each exporter keeps what is its own (the wrapper module, the output shape it promises, its parity
inputs); the torch.onnx call, the single-file rule and the int64-in / float32-out check live here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common.errors import ExportError


def export_single_file(
    module: torch.nn.Module,
    path: Path,
    *,
    example: torch.Tensor,
    input_name: str,
    output_name: str,
    axes: tuple[str, str],
    opset: int,
    what: str,
) -> None:
    """Export ``module`` (one int64 [batch, length] input) to ``path`` with weights inside.

    Both input axes are dynamic, named ``axes``. Raises :class:`ExportError` naming ``what`` when
    the exporter fails or leaves external ``.data`` weight files beside the graph.
    """
    dims = {i: torch.export.Dim(name, min=1) for i, name in enumerate(axes)}
    try:
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            external_data=False,
            verbose=False,  # the exporter otherwise prints its progress to stdout
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamic_shapes={input_name: dims},
        )
        # Weights inside the one file: a server loads a single artifact.
        program.save(str(path), external_data=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for the {what}: {exc}") from exc
    leftovers = sorted(
        p.name for p in path.parent.iterdir() if p.name != path.name and p.suffix == ".data"
    )
    if leftovers:
        raise ExportError(f"export wrote external weight files {leftovers}; expected one .onnx")


def checked_signature(path: Path, *, input_name: str, output_name: str) -> dict[str, Any]:
    """The graph's signature after checking it: one int64 input with two dynamic axes, one
    float32 output. The caller checks the output's shape against what it promises.
    """
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input]
    outputs = [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]
    if inputs != [(input_name, onnx.TensorProto.INT64)]:
        raise ExportError(f"graph inputs are {inputs}; expected one int64 {input_name!r}")
    if outputs != [(output_name, onnx.TensorProto.FLOAT)]:
        raise ExportError(f"graph outputs are {outputs}; expected one float32 {output_name!r}")

    def dims(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    in_dims, out_dims = dims(model.graph.input[0]), dims(model.graph.output[0])
    if len(in_dims) != 2 or not all(isinstance(d, str) for d in in_dims):
        raise ExportError(f"input axes must be [batch, length], both dynamic; got {in_dims}")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "inputs": [{"name": input_name, "dtype": "int64", "shape": in_dims}],
        "outputs": [{"name": output_name, "dtype": "float32", "shape": out_dims}],
        "opset": int(opset),
    }


def parity_cases(
    module: torch.nn.Module,
    onnx_path: Path,
    make_batch: Callable[[int, int], np.ndarray],
    shapes: list[tuple[int, int]],
    *,
    input_name: str,
    output_name: str,
    length_key: str,
    atol: float,
) -> list[dict[str, Any]]:
    """Max |ORT - torch| for each (batch size, length) in ``shapes``, on ONNX Runtime's CPU
    provider; raises :class:`ExportError` listing every shape above ``atol``.

    ``make_batch(batch_size, length)`` builds the int64 input; each case records its length under
    ``length_key`` ("seq", "history").
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    if session.get_providers()[0] != "CPUExecutionProvider":
        raise ExportError(f"parity must run on CPU, got providers {session.get_providers()}")
    cases = []
    for batch_size, length in shapes:
        ids = make_batch(batch_size, length)
        with torch.inference_mode():
            expected = module(torch.from_numpy(ids)).float().numpy()
        (got,) = session.run([output_name], {input_name: ids})
        if got.shape != expected.shape or got.dtype != np.float32:
            raise ExportError(
                f"ORT returned {got.dtype}{got.shape} for batch {batch_size} x {length_key} "
                f"{length}; torch {expected.dtype}{expected.shape}"
            )
        diff = float(np.max(np.abs(got - expected)))
        cases.append({"batch_size": batch_size, length_key: length, "max_abs_diff": diff})
    failed = [c for c in cases if not c["max_abs_diff"] <= atol]
    if failed:
        raise ExportError(
            f"ONNX Runtime and torch disagree beyond parity_atol={atol}: "
            + ", ".join(
                f"batch {c['batch_size']} x {length_key} {c[length_key]}: {c['max_abs_diff']:.3g}"
                for c in failed
            )
        )
    return cases
