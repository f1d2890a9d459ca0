"""``POST /v1/models/<name>/purchases``: a new purchase reaches the online history at once.

Body: ``{"customer_id": "17850", "items": ["85123A", ...], "ts": "2011-12-09T12:50:00Z"}``;
``ts`` is optional (default: now) and must carry a UTC offset. The purchase is handed to the
feature store's push source (``serving.features.CustomerHistory.push_purchase``), so the next
recommendation for that customer reads it. Answer: ``{"customer_id", "items", "ts"}`` (the
number of items and the UTC timestamp pushed) plus what the store reports (``added``,
``n_items``, ``history_length``, ``restarted``, ...). Only models with a ``push_purchase``
method (the recommender with a feature repo, in one process or as the transformer) take pushes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from serving.errors import BadRequest, UnknownModel
from serving.features import MAX_CLOCK_SKEW, skew_text
from serving.kserve_compat import ModelNotFound
from serving.validation import get_str, get_str_list, parse_json_object, reject_unknown_keys

logger = logging.getLogger(__name__)

PATH = "/v1/models/{model_name}/purchases"
MAX_PUSH_ITEMS = 1000
FIELDS = ("customer_id", "items", "ts")
# What a body looks like, in the 400 for one that is not JSON or not an object.
BODY_EXAMPLE = '{"customer_id": "...", "items": ["..."], "ts": "...Z"}'


def parse_ts(value: Any, field: str = "ts") -> dt.datetime:
    """An ISO-8601 timestamp with a UTC offset -> an aware UTC datetime.

    Raises:
        BadRequest: not a string, not ISO-8601, without an offset, or more than
            MAX_CLOCK_SKEW (5 minutes) ahead of this server's clock.
    """
    allowed = 'an ISO-8601 time with an offset, e.g. "2011-12-09T12:50:00Z"'
    if not isinstance(value, str):
        raise BadRequest(
            f"must be a string, not {type(value).__name__}",
            field=field,
            value=value,
            has_value=True,
            allowed=allowed,
        )
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest("not an ISO-8601 time", field=field, value=value, allowed=allowed) from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        # A naive time would be read in the server's timezone: ambiguous, so refused.
        raise BadRequest("has no UTC offset", field=field, value=value, allowed=allowed)
    parsed = parsed.astimezone(dt.UTC)
    if parsed > dt.datetime.now(dt.UTC) + MAX_CLOCK_SKEW:
        # A client clock a little ahead of the server's is tolerated (MAX_CLOCK_SKEW, shared
        # with the feature store's own check); the text says exactly how much.
        raise BadRequest(
            "is in the future",
            field=field,
            value=value,
            allowed=(
                f"{allowed}, no later than {skew_text()} after the server's clock "
                f"(now: {dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()})"
            ),
        )
    return parsed


def parse_body(raw: bytes) -> tuple[str, list[str], dt.datetime]:
    """Validate a purchases body; every problem is a 400 naming the field.

    Args:
        raw: the request body as sent.

    Returns:
        ``(customer_id, items, ts)``; ``ts`` is now (UTC) when the body has none.

    Raises:
        BadRequest: not JSON, not an object, an unknown key, or a bad field (``body.<key>``).
    """
    body = parse_json_object(raw, BODY_EXAMPLE)
    reject_unknown_keys(body, FIELDS, "body")
    customer_id = get_str(body, "customer_id", "body")
    items = get_str_list(body, "items", "body", max_len=MAX_PUSH_ITEMS)
    ts = parse_ts(body["ts"], "body.ts") if "ts" in body else dt.datetime.now(dt.UTC)
    return customer_id, items, ts


def purchases_endpoint(registry: Any):
    """The FastAPI endpoint, bound to KServe's model registry."""

    async def purchases(request: Request, model_name: str) -> JSONResponse:
        model = registry.get_model(model_name)
        if model is None:
            raise ModelNotFound(model_name)
        if not hasattr(model, "push_purchase"):
            raise UnknownModel(
                "this model takes no purchases",
                field="model",
                value=model_name,
                allowed=", ".join(
                    sorted(
                        n for n, m in registry.get_models().items() if hasattr(m, "push_purchase")
                    )
                )
                or "none here",
            )
        customer_id, items, ts = parse_body(await request.body())
        written = await asyncio.get_running_loop().run_in_executor(
            None, model.push_purchase, customer_id, items, ts
        )
        logger.debug("pushed %d items at %s", len(items), ts.isoformat())
        answer = {k: v for k, v in written.items() if isinstance(v, (str, int, float, bool))}
        answer.update(customer_id=customer_id, items=len(items), ts=ts.isoformat())
        return JSONResponse(answer)

    return purchases
