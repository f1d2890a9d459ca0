"""Errors the serving layer raises on purpose, each carrying the HTTP status it maps to.

``serving.server`` installs one FastAPI exception handler for :class:`ServingError`, so any of
these raised from a model's preprocess/predict/postprocess becomes a JSON body with that status
instead of KServe's generic 500.
"""

from __future__ import annotations

from typing import Any

# Values echoed back in a message are cut to this many characters, so a huge bad field does not
# come back whole in the error body (or in the log line that records it).
_MAX_VALUE_CHARS = 80


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


class ServingError(Exception):
    """Base class: a message, the HTTP status, and where known the field, value and allowed set.

    Attributes:
        status: HTTP status code sent to the client.
        field: the request field at fault, in a dotted path such as ``instances[0].k``.
        allowed: a short description of what the field accepts.
    """

    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: Any = None,
        allowed: str | None = None,
        has_value: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.field = field
        # Extra response headers (Retry-After on a 503 the client should retry).
        self.headers = dict(headers) if headers else None
        self.allowed = allowed
        # None is a legitimate bad value ("k": null), so "was a value given" is tracked apart.
        self.has_value = (value is not None) if has_value is None else has_value
        self.value = _short(value) if self.has_value else None
        parts = [f"{field}: {message}" if field else message]
        if self.has_value:
            parts.append(f"got {self.value}")
        if allowed:
            parts.append(f"allowed: {allowed}")
        self.message = "; ".join(parts)
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``error`` (the full message, KServe's key) plus its parts."""
        body: dict[str, Any] = {"error": self.message, "status": self.status}
        if self.field is not None:
            body["field"] = self.field
        if self.has_value:
            body["value"] = self.value
        if self.allowed is not None:
            body["allowed"] = self.allowed
        return body


class BadRequest(ServingError):
    """The request is malformed or a value is out of range (400)."""

    status = 400


class UnknownModel(ServingError):
    """No model of that name is served here (404)."""

    status = 404


class PayloadTooLarge(ServingError):
    """The body or the number of instances exceeds a documented limit (413)."""

    status = 413


class NotReady(ServingError):
    """The model is not loaded, or its online feature store cannot answer (503)."""

    status = 503


class ModelLoadError(NotReady):
    """The model directory, the ONNX session or the feature store could not be set up.

    Raised from ``load()``; the CLI reports it and exits non-zero, so readiness never turns 200.
    """


class PredictorUnavailable(NotReady):
    """The remote predictor did not answer in time or refused the connection (503).

    The transformer sends ``Retry-After`` with it: a predictor that restarts is back within
    seconds, and the client, not the transformer, decides whether to wait.
    """

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, field="predictor", headers={"Retry-After": str(retry_after_s)})


class BadGateway(ServingError):
    """The remote predictor answered with something the transformer cannot use (502)."""

    status = 502
