"""A KServe ModelServer that binds the address it is given, with gRPC off and typed errors.

KServe 0.21 hard-codes ``host="0.0.0.0"`` in ``RESTServer.__init__`` (it builds the
``uvicorn.Config`` there) and ``ModelServer.start`` builds that RESTServer itself, with no host
parameter anywhere. uvicorn reads ``config.host`` only when it binds, in ``Server.startup``, so
:class:`LoopbackRESTServer` lets KServe build everything as usual and then sets the host on that
same Config object before anything listens. :class:`LocalModelServer` overrides ``start`` only
to construct that RESTServer (single worker, no gRPC server, which would bind ``[::]``); model
registration, the event loop setup and serving are KServe's own methods. No KServe code is
patched: the error handlers and the body limit below are added to KServe's FastAPI app the same
way KServe adds its own.

The same place installs the error mapping: :class:`serving.errors.ServingError` becomes its
status with a JSON body, KServe's own ``InvalidInput`` (a body that does not decode) stays a 400
with the same body keys, FastAPI's 422 for a V2 body that does not fit the Open Inference
Protocol schema is normalised to a 400 naming the field, a body that is JSON but not an object
(a V2 body that is a JSON string, a number, a list) is the V1 body's 400 with ``value`` and
``allowed``, and bodies over
:data:`MAX_BODY_BYTES` are refused with 413 before they are read into memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.binding import DEFAULT_HOST, check_host
from serving.errors import BadRequest, NotReady, PayloadTooLarge, ServingError, UnknownModel
from serving.kserve_compat import (
    FASTAPI_APP_IMPORT_STRING,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    RESTServer,
    kserve,
    model_server,
)
from serving.metrics import RequestMetrics
from serving.push import PATH as PURCHASES_PATH
from serving.push import purchases_endpoint
from serving.validation import parse_json_object

logger = logging.getLogger(__name__)

# The largest request body accepted: far above any valid request (256 instances of 1,000 item
# ids), small enough that a runaway client cannot make the server buffer gigabytes.
MAX_BODY_BYTES = 2 * 1024 * 1024
# What each protocol's body looks like, in the 400 for a body that is not a JSON object.
V1_BODY_EXAMPLE = '{"instances": [...]}'
V2_BODY_EXAMPLE = '{"inputs": [{"name": ..., "shape": [...], "datatype": ..., "data": [...]}]}'
# KServe's header for a V2 body in the binary tensor extension (JSON part, then raw tensors).
BINARY_LENGTH_HEADER = "inference-header-content-length"


def _field_from_loc(loc: tuple[Any, ...]) -> str:
    """``("body", "InferenceRequest", "inputs", 0, "shape")`` -> ``"inputs[0].shape"``."""
    # KServe declares the V2 body as Union[InferenceRequest, bytes]; pydantic names the union
    # member in the location, which means nothing to a client.
    parts = [p for p in loc if p not in ("body", "InferenceRequest")]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def _note_refusal(request: Request, status: int, message: str, field: str | None) -> None:
    # The message may echo a value from the request (a customer id): DEBUG only. The access
    # line (serving.metrics) carries the status and the field at INFO.
    logger.debug("request refused with %d: %s", status, message)
    if field is not None:
        request.state.error_field = field


def _error_body(request: Request, status: int, message: str, field: str | None) -> JSONResponse:
    _note_refusal(request, status, message, field)
    body: dict[str, Any] = {"error": message, "status": status}
    if field is not None:
        body["field"] = field
    return JSONResponse(status_code=status, content=body)


async def _serving_error_handler(request: Request, exc: ServingError) -> JSONResponse:
    _note_refusal(request, exc.status, exc.message, exc.field)
    if exc.status >= 500:
        # Server-side trouble (predictor down, store unreadable) is worth an operator's eye.
        logger.warning("answered %d: %s", exc.status, exc.message)
    return JSONResponse(status_code=exc.status, content=exc.to_dict(), headers=exc.headers)


async def _validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI answers a V2 body that fails the InferenceRequest schema with 422. Every other bad
    # request here is a 400 naming the field, so this one is too (see docs/serving.md). The
    # union's "bytes" alternative always fails too and says nothing useful, so it is skipped.
    errors = [e for e in exc.errors() if tuple(e.get("loc", ()))[-1:] != ("bytes",)]
    if not errors:
        return _error_body(request, 400, "body: not a V2 inference request", "body")
    first = errors[0]
    field = "body" if first.get("type") == "json_invalid" else _field_from_loc(first["loc"])
    if field == "body":
        # The body as a whole is not JSON, or not an object: the V1 body's 400, with the type.
        error = await _whole_body_error(request)
        if error is not None:
            return await _serving_error_handler(request, error)
    message = f"{field}: {first.get('msg', 'invalid')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return _error_body(request, 400, message, field)


def _is_json(content_type: str | None) -> bool:
    """The content types FastAPI decodes as JSON before the endpoint sees the body."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _whole_body_error(request: Request) -> BadRequest | None:
    """The 400 for a body that is not a JSON object, with the same keys as every other 400.

    A V2 body that is a JSON string passes FastAPI's schema as the ``bytes`` alternative, and
    KServe then refuses it for lacking the binary extension's header; a number, list or null
    fails the schema at the top. Both are the case :func:`parse_json_object` names for V1 and
    push bodies: it is asked here, so the answer carries ``value`` (the type) and ``allowed``.
    A V2 body of any type sent without a JSON content type and without that header gets a 400
    naming the content type. None when neither applies (the caller keeps its own message).
    """
    v2 = request.url.path.startswith("/v2/")
    content_type = request.headers.get("content-type")
    if v2 and not _is_json(content_type) and BINARY_LENGTH_HEADER not in request.headers:
        return BadRequest(
            "a V2 body is JSON, or binary tensor data with its length header",
            field="body",
            value=content_type or "no content type",
            has_value=True,
            allowed=f"content-type application/json, or the {BINARY_LENGTH_HEADER} header",
        )
    try:
        # FastAPI keeps the body it read on this request object; a stream that was not kept
        # cannot be read again, and then the caller's message stands.
        raw = await request.body()
    except RuntimeError:
        return None
    try:
        parse_json_object(raw, V2_BODY_EXAMPLE if v2 else V1_BODY_EXAMPLE)
    except BadRequest as exc:
        return exc
    return None


async def _invalid_input_handler(request: Request, exc: InvalidInput) -> JSONResponse:
    # KServe raises InvalidInput while decoding the body, before a model sees it: invalid JSON
    # (orjson refuses NaN/Infinity and invalid UTF-8), a V2 body that is a JSON string or is
    # sent without a JSON content type and without the binary-extension header. Its own
    # handler already answers 400; this one adds the field, value and allowed, so every 400
    # body has the same keys.
    error = await _whole_body_error(request)
    if error is not None:
        return await _serving_error_handler(request, error)
    return _error_body(request, 400, f"body: {exc.reason}", "body")


async def _http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI raises these itself: 400 for a V2 body that is not UTF-8 ("There was an error
    # parsing the body"), 404/405 for a path or method that does not exist.
    detail = str(exc.detail)
    if exc.status_code == 400:
        return _error_body(request, 400, f"body: {detail}", "body")
    return _error_body(request, exc.status_code, detail, None)


def _model_error_handlers(registry: Any) -> tuple[Any, Any]:
    """404/503 handlers that name the model and list the ones served here."""

    def served() -> str:
        return ", ".join(sorted(registry.get_models())) or "none"

    async def not_found(request: Request, exc: ModelNotFound) -> JSONResponse:
        name = request.path_params.get("model_name")
        error = UnknownModel("unknown model", field="model", value=name, allowed=served())
        _note_refusal(request, error.status, error.message, error.field)
        return JSONResponse(status_code=error.status, content=error.to_dict())

    async def not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        name = request.path_params.get("model_name")
        error = NotReady("model is not ready", field="model", value=name)
        _note_refusal(request, error.status, error.message, error.field)
        return JSONResponse(status_code=error.status, content=error.to_dict())

    return not_found, not_ready


class BodySizeLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by header or while streaming."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            error = PayloadTooLarge(
                "request body too large",
                field="body",
                value=f"{int(declared)} bytes",
                allowed=f"at most {self.limit} bytes",
            )
            response = JSONResponse(status_code=error.status, content=error.to_dict())
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # Raised inside the endpoint's body read, so the ServingError handler answers.
                raise PayloadTooLarge(
                    "request body too large",
                    field="body",
                    value=f"over {self.limit} bytes",
                    allowed=f"at most {self.limit} bytes",
                )
            return message

        await self.app(scope, limited_receive, send)


class LoopbackRESTServer(RESTServer):
    """KServe's REST server, bound to ``host`` instead of its hard-coded 0.0.0.0."""

    def __init__(self, *args: Any, host: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # RESTServer built self.config = uvicorn.Config(host="0.0.0.0", ...); uvicorn reads
        # config.host only when Server.startup binds the socket, which is after this.
        self.config.host = host

    def create_application(self) -> None:
        super().create_application()
        app: FastAPI = model_server.app
        app.add_exception_handler(ServingError, _serving_error_handler)
        app.add_exception_handler(RequestValidationError, _validation_error_handler)
        app.add_exception_handler(InvalidInput, _invalid_input_handler)
        app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
        not_found, not_ready = _model_error_handlers(self.dataplane.model_registry)
        app.add_exception_handler(ModelNotFound, not_found)
        app.add_exception_handler(ModelNotReady, not_ready)
        app.add_middleware(BodySizeLimit, limit=MAX_BODY_BYTES)
        # Added last, so outermost: it also counts and logs what BodySizeLimit refuses.
        app.add_middleware(RequestMetrics, registry=self.dataplane.model_registry)
        app.add_api_route(
            PURCHASES_PATH,
            purchases_endpoint(self.dataplane.model_registry),
            methods=["POST"],
        )


class LocalModelServer(kserve.ModelServer):
    """One-process ModelServer: REST on ``host:http_port``, gRPC off.

    Args:
        host: address to bind (see :func:`check_host`).
        http_port: REST port.
    """

    def __init__(self, *, host: str = DEFAULT_HOST, http_port: int, **kwargs: Any) -> None:
        kwargs.setdefault("enable_grpc", False)
        kwargs.setdefault("workers", 1)
        if kwargs["enable_grpc"] or kwargs["workers"] != 1:
            raise ValueError("LocalModelServer runs one REST worker and no gRPC server")
        super().__init__(http_port=http_port, **kwargs)
        self.host = check_host(host)

    def start(self, models: list[kserve.Model]) -> None:  # type: ignore[override]
        """Register ``models`` (only ready ones), then serve REST until SIGINT/SIGTERM."""
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = LoopbackRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            host=self.host,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self.servers.append(self._rest_server.start())
        logger.info("REST server on http://%s:%d (gRPC off)", self.host, self.http_port)
        self.setup_event_loop()
        # KServe's register_signal_handler is not used: uvicorn installs its own SIGINT/SIGTERM
        # handlers while it serves and shuts down gracefully; the CLI handles the rest.
        asyncio.run(self._serve())
