"""Per-request metrics and the one latency log line, as an ASGI middleware around KServe's app.

KServe's own histograms (``request_predict_seconds`` ...) carry the model name only. An A/B
rollout needs every figure split by the variant that served it, and the refused requests (4xx,
413, 503) counted too, which never reach a model's phases; so this middleware, outermost in the
app, sees every inference request:

- ``recsynth_requests_total{model, variant, role, endpoint, status}`` (counter);
- ``recsynth_request_duration_seconds{model, variant, role, endpoint}`` (histogram);
- one INFO line on the ``serving.access`` logger: request id, model, variant, role, endpoint,
  status, latency and, for a refused request, the field at fault. Never ids of customers or the
  items of a history (those are DEBUG, in the models' own loggers).

The request id is the client's ``x-request-id`` when it is a short token, else a new one; it is
passed on to KServe and the predictor and sent back in the response's ``x-request-id``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import Counter, Histogram

access_logger = logging.getLogger("serving.access")

# Registered once, in prometheus_client's default registry, which KServe's /metrics serves.
REQUESTS = Counter(
    "recsynth_requests_total",
    "Inference requests answered, by model, A/B variant, process role, endpoint and status.",
    ["model", "variant", "role", "endpoint", "status"],
)
LATENCY = Histogram(
    "recsynth_request_duration_seconds",
    "Wall time from the request's first byte to the response's start.",
    ["model", "variant", "role", "endpoint"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)

_PATH = re.compile(r"^/v[12]/models/(?P<name>[^/:]+)(?P<rest>.*)$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
REQUEST_ID_HEADER = b"x-request-id"
# Label value for a model name that is not served here: a client must not be able to create one
# time series per path it invents.
UNKNOWN = "unknown"


def endpoint_of(path: str) -> tuple[str, str] | None:
    """``(model name, endpoint)`` of an inference path; ``None`` for probes and metadata."""
    match = _PATH.match(path)
    if match is None:
        return None
    rest = match["rest"]
    if rest == ":predict":
        return match["name"], "predict"
    if rest.endswith("/infer"):
        return match["name"], "infer"
    if rest == "/purchases":
        return match["name"], "purchases"
    return None


class RequestMetrics:
    """ASGI middleware: count, time and log every inference request.

    Args:
        app: the wrapped ASGI app.
        registry: KServe's model registry; each served model's ``variant`` and ``role``
            attributes label its figures.
    """

    def __init__(self, app: Any, registry: Any) -> None:
        self.app = app
        self.registry = registry

    def _labels(self, name: str) -> tuple[str, str, str]:
        model = self.registry.get_model(name)
        if model is None:
            return UNKNOWN, UNKNOWN, UNKNOWN
        return name, str(getattr(model, "variant", "")), str(getattr(model, "role", ""))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        found = endpoint_of(scope.get("path", "")) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = list(scope.get("headers") or [])
        given = dict(headers).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        if given != request_id:
            headers = [(k, v) for k, v in headers if k != REQUEST_ID_HEADER]
            headers.append((REQUEST_ID_HEADER, request_id.encode()))
            scope = {**scope, "headers": headers}
        state = scope.setdefault("state", {})
        status = {"code": 500}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (REQUEST_ID_HEADER, request_id.encode()),
                    ],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            model, variant, role = self._labels(found[0])
            endpoint = found[1]
            REQUESTS.labels(model, variant, role, endpoint, str(status["code"])).inc()
            LATENCY.labels(model, variant, role, endpoint).observe(elapsed)
            error_field = state.get("error_field")
            access_logger.info(
                "request_id=%s model=%s variant=%s role=%s endpoint=%s status=%d latency_ms=%.2f%s",
                request_id,
                model,
                variant,
                role,
                endpoint,
                status["code"],
                elapsed * 1000.0,
                f" error_field={error_field}" if error_field else "",
            )
