"""Request checks shared by both models: each bad value is a 400 naming the field.

KServe decodes a V1 body with orjson (invalid JSON, NaN/Infinity and invalid UTF-8 are refused
there, as a 400 ``InvalidInput``) and a V2 body with pydantic (refused with 422, which
``serving.server`` turns into a 400). Everything past that, the shape of ``instances`` and every
value in it, is checked here, before any model runs, so a bad request never reaches ORT or Feast.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from serving.errors import BadRequest, PayloadTooLarge

_MISSING = object()


def parse_json_object(raw: Any, allowed: str) -> Mapping[str, Any]:
    """A request body that must be a JSON object: raw bytes are parsed, a decoded value checked.

    Args:
        raw: the body as bytes (parsed here with the strict parser KServe uses: orjson, so no
            NaN/Infinity and UTF-8 only), or a value a JSON decoder already produced (KServe
            decodes a V1 body with a JSON content type itself; a JSON string body then arrives
            as ``str`` and is refused as a string, not parsed a second time).
        allowed: what the body should look like, for the messages, e.g. ``'{"instances": [...]}'``.

    Returns:
        The object.

    Raises:
        BadRequest: ``field`` "body": not valid JSON, or JSON that is not an object (``value``
            then names the type it decoded to, e.g. ``str``).
    """
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(
                f"not valid JSON ({exc})",
                field="body",
                allowed=f"UTF-8 JSON without NaN/Infinity: {allowed}",
            ) from exc
    if not isinstance(raw, Mapping):
        raise BadRequest(
            "the body must be a JSON object",
            field="body",
            value=type(raw).__name__,
            allowed=allowed,
        )
    return raw


def instances_of(body: Any, *, max_instances: int) -> list[Mapping[str, Any]]:
    """The ``instances`` list of a V1 body, each an object.

    Args:
        body: the decoded body, or the raw bytes, which KServe passes through when the content
            type is not JSON (curl's default is form-encoded): see :func:`parse_json_object`.
        max_instances: the documented limit; more is a 413.

    Returns:
        The instances.

    Raises:
        BadRequest: the body is not JSON or not an object, ``instances`` is missing, not a
            list, empty, or holds something other than objects.
        PayloadTooLarge: more than ``max_instances`` instances.
    """
    body = parse_json_object(body, '{"instances": [...]}')
    if "instances" not in body:
        raise BadRequest("missing", field="instances", allowed="a non-empty list of objects")
    unknown = sorted(set(body) - {"instances", "id", "parameters"})
    if unknown:
        raise BadRequest(
            "unknown top-level key", field=unknown[0], allowed="instances, id, parameters"
        )
    instances = body["instances"]
    if not isinstance(instances, list):
        raise BadRequest(
            "must be a list",
            field="instances",
            value=instances,
            has_value=True,
            allowed="a non-empty list of objects",
        )
    if not instances:
        raise BadRequest("must not be empty", field="instances", allowed="1 or more objects")
    if len(instances) > max_instances:
        raise PayloadTooLarge(
            "too many instances",
            field="instances",
            value=f"{len(instances)} instances",
            allowed=f"at most {max_instances} per request",
        )
    for i, inst in enumerate(instances):
        if not isinstance(inst, Mapping):
            raise BadRequest(
                "must be an object",
                field=f"instances[{i}]",
                value=inst,
                has_value=True,
                allowed="an object such as {...}",
            )
    return instances


def reject_unknown_keys(inst: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """400 for a key that is not in ``allowed`` (a typo would otherwise be silently ignored)."""
    allowed = list(allowed)
    for key in inst:
        if key not in allowed:
            raise BadRequest("unknown field", field=f"{where}.{key}", allowed=", ".join(allowed))


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python; true/false are not counts.
    return isinstance(value, int) and not isinstance(value, bool)


def get_int(
    inst: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: Any = _MISSING,
    lo: int,
    hi: int,
) -> int:
    """An integer field in ``[lo, hi]``; floats (even 3.0), strings and booleans are refused."""
    value = inst.get(key, _MISSING)
    field = f"{where}.{key}"
    allowed = f"an integer from {lo} to {hi}"
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest("missing", field=field, allowed=allowed)
        return default
    if not _is_int(value):
        raise BadRequest(
            f"must be an integer, not {type(value).__name__}",
            field=field,
            value=value,
            has_value=True,
            allowed=allowed,
        )
    if not lo <= value <= hi:
        raise BadRequest("out of range", field=field, value=value, allowed=allowed)
    return value


def get_float(
    inst: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: Any = _MISSING,
    lo: float,
    hi: float,
    lo_open: bool = False,
) -> float:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``); integers are accepted."""
    value = inst.get(key, _MISSING)
    field = f"{where}.{key}"
    allowed = f"a finite number {'>' if lo_open else '>='} {lo} and <= {hi}"
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest("missing", field=field, allowed=allowed)
        return default
    if not (isinstance(value, float) or _is_int(value)):
        raise BadRequest(
            f"must be a number, not {type(value).__name__}",
            field=field,
            value=value,
            has_value=True,
            allowed=allowed,
        )
    value = float(value)
    if not math.isfinite(value):
        raise BadRequest("must be finite", field=field, value=value, allowed=allowed)
    if value < lo or (lo_open and value == lo) or value > hi:
        raise BadRequest("out of range", field=field, value=value, allowed=allowed)
    return value


def get_bool(inst: Mapping[str, Any], key: str, where: str, *, default: bool) -> bool:
    """A JSON boolean field; 0/1 and "true" are refused (they are not booleans)."""
    value = inst.get(key, _MISSING)
    if value is _MISSING:
        return default
    if not isinstance(value, bool):
        raise BadRequest(
            f"must be true or false, not {type(value).__name__}",
            field=f"{where}.{key}",
            value=value,
            has_value=True,
            allowed="true or false",
        )
    return value


def get_str(
    inst: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: Any = _MISSING,
    max_chars: int = 64,
) -> str:
    """A non-empty string field of at most ``max_chars`` characters (ids are strings)."""
    value = inst.get(key, _MISSING)
    field = f"{where}.{key}"
    allowed = f"a non-empty string of at most {max_chars} characters"
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest("missing", field=field, allowed=allowed)
        return default
    if not isinstance(value, str):
        raise BadRequest(
            f"must be a string, not {type(value).__name__}",
            field=field,
            value=value,
            has_value=True,
            allowed=allowed,
        )
    if not value or len(value) > max_chars:
        raise BadRequest("wrong length", field=field, value=value, allowed=allowed)
    return value


def get_str_list(
    inst: Mapping[str, Any],
    key: str,
    where: str,
    *,
    max_len: int,
    allow_empty: bool = False,
    default: Any = _MISSING,
) -> list[str]:
    """A list of strings (ids), each non-empty; a number among them is refused, not converted."""
    value = inst.get(key, _MISSING)
    field = f"{where}.{key}"
    allowed = f"a list of {'0' if allow_empty else '1'} to {max_len} id strings"
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest("missing", field=field, allowed=allowed)
        return default
    if not isinstance(value, list):
        raise BadRequest(
            f"must be a list, not {type(value).__name__}",
            field=field,
            value=value,
            has_value=True,
            allowed=allowed,
        )
    if (not value and not allow_empty) or len(value) > max_len:
        raise BadRequest(
            "wrong length", field=field, value=f"{len(value)} entries", allowed=allowed
        )
    for j, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise BadRequest(
                'must be a non-empty string (ids are strings, e.g. "85123A")',
                field=f"{field}[{j}]",
                value=item,
                has_value=True,
                allowed="a non-empty string",
            )
    return value


@dataclass(frozen=True)
class TensorSpec:
    """One V2 input the model accepts: its datatype and whether it must be given."""

    datatype: str
    required: bool = False


_V2_PYTHON_TYPES = {
    "BOOL": "boolean",
    "BYTES": "string",
    "INT32": "integer",
    "INT64": "integer",
    "FP32": "number",
}
_INT32_RANGE = (-(2**31), 2**31 - 1)
_INT64_RANGE = (-(2**63), 2**63 - 1)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for part in data:
            out.extend(_flatten(part))
        return out
    return [data]


def v2_tensors(
    inputs: Sequence[Any], spec: Mapping[str, TensorSpec]
) -> dict[str, tuple[list[int], list[Any]]]:
    """Check V2 inputs against ``spec`` and return ``name -> (shape, flat data)``.

    KServe's V2 path reshapes the data only when a model asks for numpy, and a shape that does
    not fit is a 500 there; so shapes, datatypes and element types are checked here instead.

    Args:
        inputs: ``InferRequest.inputs`` (kserve ``InferInput`` objects).
        spec: the inputs this model accepts.

    Returns:
        For each input given: its shape and its elements in row-major order (BYTES as str).

    Raises:
        BadRequest: an unknown or repeated input, a missing required one, the wrong datatype,
            a shape that does not match the element count, or an element of the wrong type.
    """
    found: dict[str, tuple[list[int], list[Any]]] = {}
    allowed_names = ", ".join(f"{n} ({s.datatype})" for n, s in spec.items())
    for i, tensor in enumerate(inputs):
        name = tensor.name
        where = f"inputs[{i}]"
        if name not in spec:
            raise BadRequest(
                "unknown input", field=f"{where}.name", value=name, allowed=allowed_names
            )
        if name in found:
            raise BadRequest("repeated input", field=f"{where}.name", value=name)
        want = spec[name].datatype
        if tensor.datatype != want:
            raise BadRequest(
                f"wrong datatype for input {name!r}",
                field=f"{where}.datatype",
                value=tensor.datatype,
                allowed=want,
            )
        shape = list(tensor.shape)
        if any((not _is_int(d)) or d < 0 for d in shape):
            raise BadRequest(
                "dimensions must be non-negative integers",
                field=f"{where}.shape",
                value=shape,
            )
        raw = getattr(tensor, "_raw_data", None)
        if raw is not None:
            try:
                flat = tensor.as_numpy().ravel().tolist()
            except Exception as exc:  # kserve raises ValueError/InvalidInput on bad binary data
                raise BadRequest(
                    f"binary tensor data does not decode: {exc}", field=f"{where}.data"
                ) from exc
            if want == "BYTES":
                flat = [b.decode("utf-8", "replace") if isinstance(b, bytes) else b for b in flat]
        else:
            if not isinstance(tensor.data, list):
                # A bare "17850" for a BYTES [1] tensor would otherwise pass as one element;
                # the protocol's data is always an array, so the client is told so.
                raise BadRequest(
                    "data must be a JSON array (row-major, or nested by shape)",
                    field=f"{where}.data",
                    value=tensor.data,
                    has_value=True,
                    allowed=f"a list of {math.prod(shape)} {_V2_PYTHON_TYPES[want]} values",
                )
            flat = _flatten(tensor.data)
        if len(flat) != math.prod(shape):
            raise BadRequest(
                f"data has {len(flat)} elements but shape {shape} needs {math.prod(shape)}",
                field=f"{where}.data",
            )
        for j, element in enumerate(flat):
            ok = (
                isinstance(element, str)
                if want == "BYTES"
                else isinstance(element, bool)
                if want == "BOOL"
                else _is_int(element)
                if want in ("INT32", "INT64")
                else (isinstance(element, float) or _is_int(element)) and math.isfinite(element)
            )
            if ok and want in ("INT32", "INT64"):
                lo, hi = _INT32_RANGE if want == "INT32" else _INT64_RANGE
                ok = lo <= element <= hi
            if not ok:
                raise BadRequest(
                    f"element {j} of input {name!r} is not a valid {want} value",
                    field=f"{where}.data",
                    value=element,
                    has_value=True,
                    allowed=f"a finite {_V2_PYTHON_TYPES[want]}",
                )
        found[name] = (shape, flat)
    for name, s in spec.items():
        if s.required and name not in found:
            raise BadRequest("missing input", field="inputs", value=name, allowed=allowed_names)
    return found


def v2_scalar(
    tensors: Mapping[str, tuple[list[int], list[Any]]], name: str, default: Any = None
) -> Any:
    """The single element of a V2 input of shape ``[1]`` (or ``[]``), or ``default``."""
    if name not in tensors:
        return default
    shape, flat = tensors[name]
    if len(flat) != 1 or len(shape) > 1:
        raise BadRequest(
            f"input {name!r} takes one value",
            field=f"inputs.{name}.shape",
            value=shape,
            allowed="[1]",
        )
    return flat[0]


def v2_requested_outputs(request: Any, names: Sequence[str]) -> list[Any] | None:
    """The request's ``outputs`` list (a filter on the response), each naming a known output.

    Raises:
        BadRequest: an output name this model does not produce.
    """
    wanted = getattr(request, "request_outputs", None) or None
    for i, out in enumerate(wanted or []):
        if out.name not in names:
            raise BadRequest(
                "unknown output",
                field=f"outputs[{i}].name",
                value=out.name,
                allowed=", ".join(names),
            )
    return wanted
