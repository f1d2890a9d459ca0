"""Customer histories from the Feast online store, for the recommender: read, TTL, push.

Reads go through Feast's online-store interface directly: one ``OnlineStore.online_read`` per
request on a store object (and so a connection) opened once, with the feature view resolved from
the registry once at load. ``FeatureStore.get_online_features`` does the same read but adds, per
call, a registry-cache check (a synchronous registry reload every ``cache_ttl_seconds``), entity
and request-context preparation and response building around it. No values are cached here:
every lookup reads the online store, so a pushed purchase is seen by the next request.

TTL: Feast 0.67 serves rows from sqlite and Redis whatever their age, and the sqlite store keeps
event timestamps as local wall-clock epochs (a row written under one TZ reads back shifted under
another). So the row's stamp is also a feature, ``updated_at`` (a UnixTimestamp, seconds since the
epoch, timezone-independent), and a row whose ``updated_at`` is older than the view's ``ttl`` is
treated as missing: the recommender then takes its anonymous path.

Push: a purchase reads the row, extends it and writes it back. With the Redis online store, which
several serving pods share, that read-modify-write holds a short per-customer Redis lock (SET NX
PX with a token, released only by its holder; redis-py's ``Lock``), so two pods pushing for one
customer at once both land. The sqlite store is a file of one pod: its pushes are serialised
within the process only, and it is not meant to be written by two processes.

feast is imported only when :class:`CustomerHistory` is built (in the model's ``load``): its
import takes ~8 s and pulls torch in when torch is installed, so importing ``serving`` stays
cheap and torch-free until a recommender actually loads a feature store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import BadRequest, ModelLoadError, NotReady

logger = logging.getLogger(__name__)

FEATURE_VIEW = "customer_history"
JOIN_KEY = "customer_id"
FEATURE = "recent_items"
PUSH_SOURCE = "customer_history_push"
# The feature service that names what the request path reads (feature_repo/features.py).
FEATURE_SERVICE = "recommender_online_v1"
# The features a lookup reads, and that a push writes back whole.
FEATURES = ("recent_items", "n_items", "country", "last_purchase_at", "updated_at")
# How many distinct items a customer's online history keeps (register_features.recent_items).
HISTORY_LENGTH = 50
# A purchase pushed with more distinct items than this is refused: no basket is that large, and
# the history keeps only the last HISTORY_LENGTH anyway.
MAX_PUSH_ITEMS = 1000
# A purchase time this far ahead of this machine's clock is refused as a clock error rather than
# stamped into the future, where it would outlive the TTL.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Expired rows are reported in one warning at most this often, not once per request.
EXPIRED_WARNING_S = 600.0
ALLOWED_CUSTOMER_ID = "a non-empty string customer id, e.g. '17850'"
# The Redis push lock: one key per project and customer. It expires after PUSH_LOCK_TTL_S, so a
# pod that dies holding it blocks that customer's pushes for seconds, not for ever; a push takes
# milliseconds, far below it. A push waits at most PUSH_LOCK_WAIT_S for another pod's push.
PUSH_LOCK_PREFIX = "recsynth:push-lock"
PUSH_LOCK_TTL_S = 10.0
PUSH_LOCK_WAIT_S = 5.0
PUSH_LOCK_POLL_S = 0.005


@dataclass(frozen=True)
class History:
    """One customer's online row, as served (never logged).

    Attributes:
        recent_items: stock codes, oldest first (at most HISTORY_LENGTH).
        n_items: distinct items bought in all, as far as the store knows.
        country: the customer's country, None when unknown.
        last_purchase_at: time of the last purchase (UTC), None when unknown.
        updated_at: when the row was registered or last pushed (UTC).
    """

    recent_items: list[str]
    n_items: int
    country: str | None
    last_purchase_at: datetime | None
    updated_at: datetime


class CustomerHistory:
    """Reads and updates ``customer_history`` rows (keyed by ``customer_id``) of a Feast repo.

    Args:
        repo_path: a Feast repo with ``feature_store.yaml`` (the ``feature_store/`` artifact).

    Raises:
        ModelLoadError: the repo does not open, it lacks the feature view, its join key, a
            feature or the push source, or the online store cannot be read.
    """

    def __init__(self, repo_path: Path) -> None:
        repo_path = Path(repo_path)
        if not (repo_path / "feature_store.yaml").is_file():
            raise ModelLoadError(f"no feature_store.yaml in the feature repo {repo_path}")
        try:
            from feast import FeatureStore
            from feast.infra.online_stores.helpers import get_online_store_from_config
        except ImportError as exc:
            raise ModelLoadError(f"feast is not installed: {exc}") from exc
        try:
            self._store = FeatureStore(repo_path=str(repo_path))
            view = self._store.get_feature_view(FEATURE_VIEW)
            self._online = get_online_store_from_config(self._store.config.online_store)
        except Exception as exc:  # feast raises its own *NotFound / config errors
            raise ModelLoadError(
                f"feature repo {repo_path} has no usable feature view {FEATURE_VIEW!r}: {exc}"
            ) from exc
        join_keys = list(view.join_keys)
        if join_keys != [JOIN_KEY]:
            raise ModelLoadError(
                f"feature view {FEATURE_VIEW!r} has join keys {join_keys}, expected [{JOIN_KEY!r}]"
            )
        names = [f.name for f in view.features]
        missing = [f for f in FEATURES if f not in names]
        if missing:
            raise ModelLoadError(
                f"feature view {FEATURE_VIEW!r} lacks the features {missing} (it has {names}); "
                "re-run register_features with this version of feature_repo/"
            )
        try:
            service = self._store.get_feature_service(FEATURE_SERVICE)
        except Exception as exc:  # feast raises FeatureServiceNotFoundException
            raise ModelLoadError(
                f"feature repo {repo_path} has no feature service {FEATURE_SERVICE!r}: {exc}"
            ) from exc
        served = {
            f.name
            for p in service.feature_view_projections
            if p.name == FEATURE_VIEW
            for f in p.features
        }
        if not served.issuperset(FEATURES):
            raise ModelLoadError(
                f"feature service {FEATURE_SERVICE!r} lacks {sorted(set(FEATURES) - served)} "
                f"of {FEATURE_VIEW!r}"
            )
        # store.push writes to the views whose stream source is the push source
        stream = getattr(view.stream_source, "name", None)
        if stream != PUSH_SOURCE:
            raise ModelLoadError(
                f"feature view {FEATURE_VIEW!r} does not take pushes from {PUSH_SOURCE!r} "
                f"(its stream source is {stream!r}); re-run register_features with this version "
                "of feature_repo/"
            )
        self._view = view
        self._config = self._store.config
        self.ttl: timedelta = view.ttl or timedelta(0)
        self.store_type: str = str(self._config.online_store.type)
        # The sqlite store shares one connection between threads (check_same_thread=False), so
        # reads on it are serialised; a read takes a fraction of a millisecond. redis-py's client
        # is thread-safe and keeps a pool, so Redis reads run concurrently.
        self._read_lock: threading.Lock | None = (
            threading.Lock() if self.store_type == "sqlite" else None
        )
        # A push reads the row, extends it and writes it back: one at a time in this process,
        # and, on Redis, one at a time per customer across every process sharing the store.
        self._push_lock = threading.Lock()
        self._redis: Any = None
        if self.store_type == "redis":
            self._redis = _redis_client(self._online, self._config)
        self.project: str = str(self._config.project)
        self._warn_lock = threading.Lock()
        self._warned_at: float | None = None
        self._expired_since_warning = 0
        # The first read opens the connection and imports the store's modules (~100 ms); do it
        # here so no request pays for it and a broken store fails readiness, not a request.
        try:
            self._read(["__recsynth_probe__"])
        except NotReady as exc:
            raise ModelLoadError(str(exc)) from exc
        logger.info(
            "feature store %s open (%s online store), reading %s, ttl %s",
            repo_path,
            self.store_type,
            FEATURE_VIEW,
            self.ttl,
        )

    # read ---------------------------------------------------------------------------------

    def histories(
        self, customer_ids: list[str], *, now: datetime | None = None
    ) -> list[History | None]:
        """The online row of each customer, ``None`` when unknown, empty or older than the ttl.

        Args:
            customer_ids: string customer ids, as on the wire.
            now: the time the ttl is measured to (UTC-aware); this machine's clock when None.

        Returns:
            One entry per id, in order.

        Raises:
            BadRequest: an id is not a non-empty string (names ``customer_id`` and the index).
            NotReady: the online store could not be read.
        """
        if not customer_ids:
            return []
        for i, cid in enumerate(customer_ids):
            check_customer_id(cid, field=f"{JOIN_KEY}[{i}]")
        now = _utc_now() if now is None else _require_utc(now, "now")
        rows = self._read(customer_ids)
        out: list[History | None] = []
        expired = 0
        for row in rows:
            if row is None or not row.recent_items:
                out.append(None)
            elif self.ttl > timedelta(0) and now - row.updated_at > self.ttl:
                expired += 1
                out.append(None)
            else:
                out.append(row)
        logger.debug(
            "online histories for %d customers: %d served, %d expired",
            len(out),
            sum(v is not None for v in out),
            expired,
        )
        if expired:
            self._warn_expired(expired)
        return out

    def _warn_expired(self, expired: int) -> None:
        """Say, at most every EXPIRED_WARNING_S, that rows were older than the ttl."""
        with self._warn_lock:
            self._expired_since_warning += expired
            at = time.monotonic()
            if self._warned_at is not None and at - self._warned_at < EXPIRED_WARNING_S:
                return
            count, self._expired_since_warning, self._warned_at = (
                self._expired_since_warning,
                0,
                at,
            )
        logger.warning(
            "%d customer histories were older than the ttl (%s) and served as missing; "
            "re-run register_features, or push purchases, to refresh the online store",
            count,
            self.ttl,
        )

    def recent_items(self, customer_ids: list[str]) -> list[list[str] | None]:
        """The recent items of each customer, oldest first; ``None`` when unknown or expired.

        Args:
            customer_ids: string customer ids, as on the wire.

        Returns:
            One entry per id, in order: the list of stock codes, or ``None`` when the online
            store holds no row, an empty one, or one older than the view's ttl.

        Raises:
            BadRequest: an id is not a non-empty string.
            NotReady: the online store could not be read.
        """
        return [None if h is None else list(h.recent_items) for h in self.histories(customer_ids)]

    def features_for(self, entity_rows: list[dict[str, Any]]) -> list[History | None]:
        """Rows for Feast-style entity rows ``[{"customer_id": "17850"}, ...]``.

        Raises:
            BadRequest: a row is not a dict, lacks ``customer_id``, carries another key, or its
                value is not a non-empty string (the message names the key and what is allowed).
            NotReady: the online store could not be read.
        """
        ids = []
        for i, row in enumerate(entity_rows):
            if not isinstance(row, dict):
                raise BadRequest(
                    "an entity row must be an object",
                    field=f"entity_rows[{i}]",
                    value=row,
                    allowed=f"{{{JOIN_KEY!r}: <customer id>}}",
                )
            other = sorted(str(k) for k in row if k != JOIN_KEY)
            if other:
                raise BadRequest(
                    f"unknown join key {other[0]!r} for feature view {FEATURE_VIEW!r}",
                    field=f"entity_rows[{i}].{other[0]}",
                    allowed=f"the join key {JOIN_KEY!r} only",
                )
            if JOIN_KEY not in row:
                raise BadRequest(
                    f"the join key {JOIN_KEY!r} is missing",
                    field=f"entity_rows[{i}].{JOIN_KEY}",
                    allowed=ALLOWED_CUSTOMER_ID,
                )
            ids.append(check_customer_id(row[JOIN_KEY], field=f"entity_rows[{i}].{JOIN_KEY}"))
        return self.histories(ids)

    def _read(self, customer_ids: list[str]) -> list[History | None]:
        """One online_read of the view for these ids (no ttl applied)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [
            EntityKey(join_keys=[JOIN_KEY], entity_values=[Value(string_val=cid)])
            for cid in customer_ids
        ]
        try:
            if self._read_lock is None:
                rows = self._online.online_read(self._config, self._view, keys, list(FEATURES))
            else:
                with self._read_lock:
                    rows = self._online.online_read(self._config, self._view, keys, list(FEATURES))
        except Exception as exc:  # sqlite/redis errors surface as many types
            raise NotReady(f"the online feature store could not be read: {exc}") from exc
        return [_decode(values) for _, values in rows]

    # push ---------------------------------------------------------------------------------

    def push_purchase(
        self,
        customer_id: str,
        items: list[str],
        ts: datetime | None = None,
        *,
        country: str | None = None,
    ) -> dict:
        """Append a purchase to the customer's online history at once (Feast push, online only).

        The items not yet in the history are appended in the order given, the history keeps its
        last HISTORY_LENGTH items, and ``n_items`` grows by the number appended. A history that
        is missing or older than the ttl starts afresh from this purchase. The row's stamp
        (event timestamp and ``updated_at``, what the ttl measures from) is the time of the
        write, now (UTC) in whole seconds, or one second past the row's previous stamp when that
        is later (the Redis store keeps only a row newer than the stored one, so two pushes in
        one second stamp the second one a second ahead); it is never ``ts``, so a purchase dated
        further back than the ttl is still served. ``last_purchase_at`` becomes the later of the
        old value and ``ts``.

        Concurrent pushes for one customer are applied one after the other: within this process
        always, and across processes on the Redis store (a per-customer Redis lock around the
        read and the write); the sqlite store takes pushes from one process only.

        Pushed with ``PushMode.ONLINE``: the offline source is the registration's snapshot, and
        the shop's purchase log, from which the next registration rebuilds every row, stays the
        offline truth.

        Args:
            customer_id: the string customer id.
            items: the stock codes bought, at least one, at most MAX_PUSH_ITEMS.
            ts: when the purchase happened, UTC-aware; now when None.
            country: the customer's country, kept from the stored row when None.

        Returns:
            ``customer_id``, ``added`` (items new to the history), ``n_items``, ``history_length``,
            ``restarted`` (the stored row was missing or expired), ``updated_at`` and
            ``last_purchase_at`` (ISO 8601, UTC), ``mode`` ("online").

        Raises:
            BadRequest: a field is malformed (names ``customer_id``, ``items[i]``, ``ts`` or
                ``country``, and what is allowed).
            NotReady: the online store could not be read or written, or another process's push
                for this customer held the Redis lock for more than PUSH_LOCK_WAIT_S.
        """
        import pandas as pd
        from feast.data_source import PushMode

        check_customer_id(customer_id, field=JOIN_KEY)
        bought = _check_items(items)
        now = _utc_now()
        ts = now if ts is None else _require_utc(ts, "ts")
        if ts - now > MAX_CLOCK_SKEW:
            raise BadRequest(
                "the purchase time lies in the future",
                field="ts",
                value=ts.isoformat(),
                allowed=f"a UTC-aware time no later than {skew_text()} after now (UTC)",
            )
        if country is not None and (not isinstance(country, str) or not country):
            raise BadRequest("must be a non-empty string", field="country", value=country)

        with self._push_lock, self._customer_lock(customer_id):
            old = self._read([customer_id])[0]
            restarted = (
                old is None
                or not old.recent_items
                or (self.ttl > timedelta(0) and now - old.updated_at > self.ttl)
            )
            history, added = extend_history([] if restarted else old.recent_items, bought)
            n_items = len(added) + (0 if restarted else old.n_items)
            # The row's stamp says when it was written (the TTL measures from it), not when the
            # purchase was: a backdated purchase stamped with its own time would be expired at
            # once. Whole seconds, as the store keeps them, and always past the stored stamp: the
            # Redis store drops a write whose event timestamp is not newer than the stored one.
            stamp = _seconds(now)
            last_purchase = _seconds(ts)
            kept_country = None
            if old is not None:
                stamp = max(stamp, old.updated_at + timedelta(seconds=1))
                kept_country = old.country
                if old.last_purchase_at is not None:
                    last_purchase = max(last_purchase, old.last_purchase_at)
            row = pd.DataFrame(
                {
                    JOIN_KEY: [customer_id],
                    "recent_items": [history],
                    "n_items": np.asarray([n_items], dtype=np.int64),
                    "country": [country if country is not None else kept_country],
                    "last_purchase_at": pd.DatetimeIndex([last_purchase]).tz_convert("UTC"),
                    "updated_at": pd.DatetimeIndex([stamp]).tz_convert("UTC"),
                    "event_timestamp": pd.DatetimeIndex([stamp]).tz_convert("UTC"),
                }
            )
            try:
                self._store.push(PUSH_SOURCE, row, to=PushMode.ONLINE)
            except Exception as exc:  # sqlite/redis errors surface as many types
                raise NotReady(f"the online feature store could not be written: {exc}") from exc
        logger.info(
            "pushed a purchase: %d items, %d new to the history%s",
            len(bought),
            len(added),
            " (history restarted)" if restarted else "",
        )
        return {
            "customer_id": customer_id,
            "added": len(added),
            "n_items": int(n_items),
            "history_length": len(history),
            "restarted": restarted,
            "updated_at": stamp.isoformat(),
            "last_purchase_at": last_purchase.isoformat(),
            "mode": "online",
        }

    @contextmanager
    def _customer_lock(self, customer_id: str) -> Iterator[None]:
        """Hold the Redis push lock of ``customer_id`` (nothing on the sqlite store)."""
        if self._redis is None:
            yield
            return
        import redis

        lock = self._redis.lock(
            push_lock_key(self.project, customer_id),
            timeout=PUSH_LOCK_TTL_S,
            sleep=PUSH_LOCK_POLL_S,
            blocking_timeout=PUSH_LOCK_WAIT_S,
            # Released by the thread that took it, but the token need not be thread-local.
            thread_local=False,
        )
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise NotReady(
                f"the online feature store could not be locked for a push: {exc}"
            ) from exc
        if not acquired:
            raise NotReady(
                f"another push for this customer held the online store's lock for more than "
                f"{PUSH_LOCK_WAIT_S:g} s; retry",
                field="customer_id",
                headers={"Retry-After": "1"},
            )
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockNotOwnedError:
                # The write is done; it outlived the lock, so another push may have overlapped.
                logger.warning(
                    "a push held the Redis push lock past its %g s expiry; a concurrent push "
                    "for the same customer may have been overwritten",
                    PUSH_LOCK_TTL_S,
                )
            except redis.RedisError as exc:
                # The key expires by itself; the push itself succeeded.
                logger.warning("the Redis push lock could not be released: %s", exc)


def skew_text() -> str:
    """MAX_CLOCK_SKEW in words ("5 minutes"), for the error that names what a ts may be."""
    seconds = int(MAX_CLOCK_SKEW.total_seconds())
    if seconds % 60:
        return f"{seconds} seconds"
    minutes = seconds // 60
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def push_lock_key(project: str, customer_id: str) -> str:
    """The Redis key that serialises pushes for one customer of one Feast project."""
    return f"{PUSH_LOCK_PREFIX}:{project}:{customer_id}"


def extend_history(
    history: list[str], bought: list[str], limit: int = HISTORY_LENGTH
) -> tuple[list[str], list[str]]:
    """The history after a purchase, and the items the purchase added to it.

    A history holds distinct stock codes in order of first purchase, oldest first (the contract
    of ``customer_history:recent_items``): an item already in it keeps its place, new ones are
    appended in the order bought, and only the last ``limit`` are kept. An item bought long ago
    and since dropped from the window counts as new again: the online row knows no more.
    """
    seen = set(history)
    added = [item for item in dict.fromkeys(bought) if item not in seen]
    return (list(history) + added)[-limit:], added


def lookup_latency(repo_path: Path, customer_ids: list[str], n: int) -> dict:
    """Time ``n`` single-customer lookups (the request path's read) against a Feast repo.

    The repo is opened (and warmed) first; the lookups then cycle through ``customer_ids`` one
    id at a time, each a real online-store read with the ttl check, as one request makes.

    Args:
        repo_path: the ``feature_store/`` Feast repo.
        customer_ids: ids to look up (known, unknown or expired alike).
        n: number of timed lookups, at least 1.

    Returns:
        ``n``, ``store`` (online store type), ``p50_ms``, ``p99_ms``, ``mean_ms``, ``max_ms``,
        ``served`` (lookups that returned a history).

    Raises:
        ValueError: ``customer_ids`` is empty or ``n`` is below 1.
    """
    if not customer_ids:
        raise ValueError("customer_ids must name at least one customer")
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    history = CustomerHistory(Path(repo_path))
    timings = np.empty(n, dtype=np.float64)
    served = 0
    for i in range(n):
        cid = customer_ids[i % len(customer_ids)]
        started = time.perf_counter()
        found = history.recent_items([cid])[0]
        timings[i] = time.perf_counter() - started
        served += found is not None
    ms = timings * 1e3
    return {
        "n": n,
        "store": history.store_type,
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "max_ms": round(float(ms.max()), 4),
        "served": served,
    }


def check_customer_id(value: Any, *, field: str = JOIN_KEY) -> str:
    """``value`` when it is a non-empty string customer id; otherwise a BadRequest naming ``field``.

    Ids are strings at the edges: an int or float id (17850, 17850.0) is refused rather than
    guessed at, since "17850" and "17850.0" would name different customers.
    """
    if not isinstance(value, str) or not value or value != value.strip():
        raise BadRequest(
            "must be a string customer id without surrounding spaces",
            field=field,
            value=value,
            has_value=True,
            allowed=ALLOWED_CUSTOMER_ID,
        )
    return value


def _check_items(items: Any) -> list[str]:
    if not isinstance(items, list) or not items:
        raise BadRequest(
            "must be a non-empty list of stock codes",
            field="items",
            value=items,
            has_value=True,
            allowed=f"a list of 1 to {MAX_PUSH_ITEMS} stock code strings",
        )
    if len(items) > MAX_PUSH_ITEMS:
        raise BadRequest(
            f"holds {len(items)} items",
            field="items",
            allowed=f"at most {MAX_PUSH_ITEMS} items per purchase",
        )
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item or item != item.strip():
            raise BadRequest(
                "must be a stock code string",
                field=f"items[{i}]",
                value=item,
                has_value=True,
                allowed="a non-empty string stock code, e.g. '85123A'",
            )
    return list(items)


def _decode(values: dict[str, Any] | None) -> History | None:
    """A History from online_read's ``{feature: ValueProto}``; None for a missing row."""
    if not values:
        return None
    got: dict[str, Any] = {}
    for name in FEATURES:
        proto = values.get(name)
        kind = None if proto is None else proto.WhichOneof("val")
        got[name] = None if kind is None else getattr(proto, kind)
    updated = got["updated_at"]
    if updated is None:
        # A row without a stamp cannot be shown to be fresh.
        return None
    items = got["recent_items"]
    purchase = got["last_purchase_at"]
    return History(
        recent_items=[] if items is None else list(items.val),
        n_items=0 if got["n_items"] is None else int(got["n_items"]),
        country=got["country"],
        last_purchase_at=None if purchase is None else datetime.fromtimestamp(purchase, UTC),
        updated_at=datetime.fromtimestamp(updated, UTC),
    )


def _require_utc(value: Any, field: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise BadRequest(
            "must be a timezone-aware datetime",
            field=field,
            value=value,
            has_value=True,
            allowed="a datetime with tzinfo (UTC), e.g. 2026-12-04T10:00:00+00:00",
        )
    return value.astimezone(UTC)


def _seconds(value: datetime) -> datetime:
    """UTC, whole seconds: what the store keeps of a UnixTimestamp feature."""
    return value.astimezone(UTC).replace(microsecond=0)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _redis_client(online: Any, config: Any) -> Any:
    """The redis-py client Feast's Redis online store writes with, for the push lock.

    Feast builds it from ``connection_string`` (host, port, password, ssl, db) and ``redis_type``
    (single node, cluster or sentinel master); asking the store for it keeps the lock on exactly
    the server the rows are written to.

    Raises:
        ModelLoadError: this Feast's Redis online store does not expose its client.
    """
    get_client = getattr(online, "_get_client", None)
    if get_client is None:
        raise ModelLoadError(
            f"Feast's {type(online).__name__} has no _get_client: the Redis push lock needs the "
            "store's client (feast 0.67's RedisOnlineStore has it)"
        )
    return get_client(config.online_store)
