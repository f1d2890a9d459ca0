"""The "recommender" model: top-k unseen items for a customer (Feast history) or a session.

Request phases, as KServe runs them: ``preprocess`` validates the V1 instances or V2 tensors
into :class:`Query` objects; ``predict`` reads the customers' histories from Feast in one call,
scores every row with a history in one batch and ranks; ``postprocess`` shapes the answer for
the protocol the request came in on. See docs/serving.md for the wire format.

The scores come from a :mod:`serving.scoring` scorer: ORT in this process (one-process shape), or
a ``--role predictor`` server over V2 HTTP when ``predictor_host`` is given (the KServe
transformer shape, as on the cluster). Everything else is the same code in both shapes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.artifacts import model_version, read_json
from serving.base import BlockingModel
from serving.errors import BadRequest, ModelLoadError, NotReady, PayloadTooLarge
from serving.kserve_compat import InferOutput, InferRequest, InferResponse
from serving.onnx_session import check_io, create_session
from serving.scoring import LocalScorer, RemoteScorer, customer_feeds, has_customer_inputs
from serving.validation import (
    TensorSpec,
    get_bool,
    get_int,
    get_str,
    get_str_list,
    instances_of,
    reject_unknown_keys,
    v2_scalar,
    v2_tensors,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "recommender"
MAX_INSTANCES = 256
MAX_K = 100
DEFAULT_K = 10
# A session longer than this is a client bug; the model reads only the last max_history anyway.
MAX_SESSION_ITEMS = 1000
FALLBACK_POPULARITY = "popularity"
# ORT threads per scoring call. A request scores one small batch (~1 ms); several requests run
# at once in the executor, so one thread each keeps the cores busy without oversubscribing them
# (bench/serving.py: with ORT's default pool, 8 concurrent clients of the predictor got ~4x the
# p50 latency of one thread per call on the 2-core machine).
ORT_THREADS = 1

V2_INPUTS = {
    "user_id": TensorSpec("BYTES"),
    "items": TensorSpec("BYTES"),
    "k": TensorSpec("INT32"),
    "exclude_seen": TensorSpec("BOOL"),
    "price_band": TensorSpec("INT32"),
    "country": TensorSpec("BYTES"),
}
V1_FIELDS = ("user_id", "items", "k", "exclude_seen", "price_band", "country")
# Beside model.onnx when the model takes customer features: {"countries": ["<unknown>", ...]}.
COUNTRIES_FILE = "countries.json"
UNKNOWN_COUNTRY = "<unknown>"


def read_countries(model_dir: Path) -> list[str]:
    """The exported country vocabulary (index = the graph's country id, 0 = unknown).

    Raises:
        ModelLoadError: the file is missing, unreadable, or not a list of distinct names that
            starts with "<unknown>".
    """
    path = Path(model_dir) / COUNTRIES_FILE
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("countries")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: cannot read the country vocabulary: {exc}") from exc
    if (
        not isinstance(names, list)
        or not names
        or names[0] != UNKNOWN_COUNTRY
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise ModelLoadError(
            f'{path}: "countries" must be distinct names starting with "{UNKNOWN_COUNTRY}"'
        )
    return names


V2_OUTPUTS = ("item_id", "description", "score", "fallback")


@dataclass
class Catalogue:
    """``catalogue.json``: item rows by dense index (1..N; 0 is padding) and ``max_history``."""

    item_ids: list[str]  # position = index; item_ids[0] is "" (padding)
    descriptions: list[str]
    popularity: np.ndarray  # float64 [N + 1], 0 at padding
    max_history: int
    index_of: dict[str, int] = field(default_factory=dict)
    by_popularity: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # int64 [N + 1]: each item's price band, -1 at padding and where catalogue.json has none.
    price_bands: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # The price bands the catalogue holds (what the price_band filter accepts), set once in read:
    # recomputing it per request cost more than the Feast lookup.
    bands: tuple[int, ...] = ()

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @classmethod
    def read(cls, path: Path) -> Catalogue:
        """Read and check ``catalogue.json`` (indices 1..N each once, unique string ids)."""
        raw = read_json(path)
        if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
            raise ModelLoadError(f"{path}: expected an object with an 'items' list")
        max_history = raw.get("max_history")
        if not isinstance(max_history, int) or isinstance(max_history, bool) or max_history < 1:
            raise ModelLoadError(f"{path}: max_history must be a positive integer")
        rows = raw["items"]
        n = len(rows)
        if n == 0:
            raise ModelLoadError(f"{path}: the catalogue is empty")
        item_ids = [""] * (n + 1)
        descriptions = [""] * (n + 1)
        popularity = np.zeros(n + 1, dtype=np.float64)
        price_bands = np.full(n + 1, -1, dtype=np.int64)
        for row in rows:
            try:
                index = int(row["index"])
                item_id = row["item_id"]
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelLoadError(f"{path}: bad item row {row!r}: {exc}") from exc
            if not 1 <= index <= n or item_ids[index]:
                raise ModelLoadError(f"{path}: index {index} out of 1..{n} or repeated")
            if not isinstance(item_id, str) or not item_id:
                raise ModelLoadError(f"{path}: item_id at index {index} is not a string")
            item_ids[index] = item_id
            descriptions[index] = str(row.get("description") or "")
            popularity[index] = float(row.get("popularity") or 0)
            band = row.get("price_band")
            if isinstance(band, int) and not isinstance(band, bool) and band >= 0:
                price_bands[index] = band
        index_of = {item_id: i for i, item_id in enumerate(item_ids) if i > 0}
        if len(index_of) != n:
            raise ModelLoadError(f"{path}: item ids are not unique")
        # Most popular first, ties by index, padding excluded.
        order = np.lexsort((np.arange(1, n + 1), -popularity[1:])) + 1
        bands = tuple(sorted({int(b) for b in price_bands[1:] if b >= 0}))
        return cls(
            item_ids, descriptions, popularity, max_history, index_of, order, price_bands, bands
        )


@dataclass
class Query:
    """One validated instance: a customer id or an anonymous session, and k."""

    k: int
    user_id: str | None = None
    items: list[str] | None = None
    # False lets items the customer (or session) already holds be recommended again.
    exclude_seen: bool = True
    # Only items of this price band are recommended; None for every band.
    price_band: int | None = None
    # The request's country (sessions; a known customer's comes from Feast). None: unknown.
    country: str | None = None


@dataclass
class Ranked:
    """The answer to one query."""

    query: Query
    indices: list[int]
    scores: list[float]
    fallback: str | None = None


class RecommenderModel(BlockingModel):
    """KServe model over ``model.onnx`` + ``catalogue.json`` and a Feast repo.

    Args:
        model_dir: ``exported/recommender``.
        feature_repo: the ``feature_store/`` Feast repo; ``None`` serves sessions only
            (a ``user_id`` request is then a 503).
        name: the model name on the wire.
        require_gpu: demand CUDA (``None`` reads ``RECSYNTH_REQUIRE_GPU``); ignored with a
            ``predictor_host`` (the predictor holds the session).
        predictor_host: ``host[:port]`` of a ``--role predictor`` server: this process is then
            the KServe transformer and opens no ONNX session. ``None`` scores in this process.
        variant: the A/B variant every answer is tagged with (``RECSYNTH_VARIANT``).
    """

    def __init__(
        self,
        model_dir: Path,
        feature_repo: Path | None,
        *,
        name: str = MODEL_NAME,
        require_gpu: bool | None = None,
        predictor_host: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.feature_repo = Path(feature_repo) if feature_repo is not None else None
        self.require_gpu = require_gpu
        self.predictor_host = predictor_host
        if variant is not None:
            self.variant = variant
        self.catalogue: Catalogue | None = None
        self.version = ""
        self._scorer: LocalScorer | RemoteScorer | None = None
        self._history = None
        # Country name -> the graph's country id; None when the model has no customer inputs.
        self.country_index: dict[str, int] | None = None

    # load ---------------------------------------------------------------------------------

    def load(self) -> bool:
        """Open the catalogue, the ONNX session (provider-checked) and the feature store.

        With a ``predictor_host`` no session is opened: the predictor is probed once (logged;
        a predictor that starts later is used once it answers, and until then requests get a
        503 with Retry-After) and every answer's width and model version are checked.

        Raises:
            ModelLoadError: a file is missing or inconsistent, CUDA is required but inactive,
                or the feature repo lacks ``customer_history:recent_items``.
        """
        catalogue = Catalogue.read(self.model_dir / "catalogue.json")
        version = model_version(self.model_dir)
        # A model exported with customer features has its country vocabulary beside it.
        country_index = None
        if (self.model_dir / COUNTRIES_FILE).is_file():
            names = read_countries(self.model_dir)
            country_index = {name: i for i, name in enumerate(names) if i > 0}
        if self.predictor_host is not None:
            try:
                scorer = RemoteScorer(
                    self.predictor_host,
                    model_name=self.name,
                    n_scores=catalogue.n_items + 1,
                    model_version=version,
                    customer_inputs=country_index is not None,
                )
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from exc
            scorer.probe()
        else:
            scorer = LocalScorer(self._open_session(catalogue))
            if scorer.customer_inputs != (country_index is not None):
                raise ModelLoadError(
                    f"{self.model_dir}: model.onnx "
                    + ("takes" if scorer.customer_inputs else "does not take")
                    + f" customer inputs but {COUNTRIES_FILE} is "
                    + ("missing" if country_index is None else "present")
                )
        if self.feature_repo is not None:
            from serving.features import CustomerHistory

            self._history = CustomerHistory(self.feature_repo)
        self.catalogue = catalogue
        self._scorer = scorer
        self.country_index = country_index
        self.version = version
        self.ready = True
        logger.info(
            "recommender %s ready (%s, variant %s): %d items, max_history %d, feature store %s",
            self.version,
            f"transformer -> {scorer.base_url}" if self.predictor_host else "one process",
            self.variant,
            catalogue.n_items,
            catalogue.max_history,
            self.feature_repo or "none",
        )
        return self.ready

    def _open_session(self, catalogue: Catalogue):
        model_path = self.model_dir / "model.onnx"
        session = create_session(
            model_path, require_gpu=self.require_gpu, intra_op_threads=ORT_THREADS
        )
        check_io(
            session,
            inputs={"item_ids": "tensor(int64)"},
            outputs={"scores": "tensor(float)"},
            model_path=model_path,
        )
        # One padded row through the model: proves it runs and that its catalogue matches.
        feeds = {"item_ids": np.zeros((1, catalogue.max_history), np.int64)}
        if has_customer_inputs([i.name for i in session.get_inputs()]):
            feeds.update(customer_feeds(1, None, None))
        probe = session.run(["scores"], feeds)
        if probe[0].shape != (1, catalogue.n_items + 1):
            raise ModelLoadError(
                f"{model_path} returns scores of shape {probe[0].shape}, but catalogue.json "
                f"has {catalogue.n_items} items (expected (1, {catalogue.n_items + 1}))"
            )
        return session

    # preprocess ---------------------------------------------------------------------------

    @property
    def k_max(self) -> int:
        """The largest k accepted: MAX_K, or the catalogue size when it is smaller."""
        return min(MAX_K, self.catalogue.n_items if self.catalogue else MAX_K)

    def _check_items(self, items: list[str], field_name: str) -> list[str]:
        for j, item in enumerate(items):
            if item not in self.catalogue.index_of:
                raise BadRequest(
                    "unknown item id",
                    field=f"{field_name}[{j}]",
                    value=item,
                    allowed="a stock code from the model's catalogue",
                )
        return items

    def _check_band(self, band: Any, field_name: str) -> int | None:
        if band is None:
            return None
        bands = self.catalogue.bands
        if band not in bands:
            raise BadRequest(
                "unknown price band",
                field=field_name,
                value=band,
                allowed=", ".join(map(str, bands)) or "none (the catalogue has no price bands)",
            )
        return band

    @staticmethod
    def _check_country(value: Any) -> str | None:
        """A V2 ``country`` value: a non-empty string (an unknown one maps to 0 later)."""
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise BadRequest(
                "must be a non-empty string",
                field="inputs.country",
                value=value,
                allowed='a country name, e.g. "France" (an unknown name counts as unknown)',
            )
        return value

    def _parse_v1(self, body: Any) -> list[Query]:
        queries = []
        for i, inst in enumerate(instances_of(body, max_instances=MAX_INSTANCES)):
            where = f"instances[{i}]"
            reject_unknown_keys(inst, V1_FIELDS, where)
            k = get_int(inst, "k", where, default=DEFAULT_K, lo=1, hi=self.k_max)
            options = {
                "exclude_seen": get_bool(inst, "exclude_seen", where, default=True),
                "price_band": self._check_band(
                    get_int(inst, "price_band", where, default=None, lo=0, hi=2**31 - 1),
                    f"{where}.price_band",
                ),
                "country": get_str(inst, "country", where, default=None),
            }
            has_user, has_items = "user_id" in inst, "items" in inst
            if has_user == has_items:
                raise BadRequest(
                    "give exactly one of user_id or items",
                    field=f"{where}.user_id",
                    allowed='"user_id": "17850" or "items": ["85123A", ...]',
                )
            if has_user:
                queries.append(Query(k=k, user_id=get_str(inst, "user_id", where), **options))
            else:
                items = get_str_list(inst, "items", where, max_len=MAX_SESSION_ITEMS)
                items = self._check_items(items, f"{where}.items")
                queries.append(Query(k=k, items=items, **options))
        return queries

    def _parse_v2(self, request: InferRequest) -> list[Query]:
        tensors = v2_tensors(request.inputs, V2_INPUTS)
        k = v2_scalar(tensors, "k", DEFAULT_K)
        if not 1 <= k <= self.k_max:
            raise BadRequest(
                "out of range", field="inputs.k", value=k, allowed=f"1 to {self.k_max}"
            )
        options = {
            "exclude_seen": v2_scalar(tensors, "exclude_seen", True),
            "price_band": self._check_band(
                v2_scalar(tensors, "price_band", None), "inputs.price_band"
            ),
            "country": self._check_country(v2_scalar(tensors, "country", None)),
        }
        if ("user_id" in tensors) == ("items" in tensors):
            raise BadRequest(
                "give exactly one of the inputs user_id or items",
                field="inputs",
                allowed="user_id BYTES [B] or items BYTES [B, L]",
            )
        if "user_id" in tensors:
            shape, ids = tensors["user_id"]
            if len(shape) != 1 or not ids:
                raise BadRequest(
                    "must be a non-empty 1-D tensor",
                    field="inputs.user_id.shape",
                    value=shape,
                    allowed="[B], B >= 1",
                )
            if len(ids) > MAX_INSTANCES:
                raise PayloadTooLarge(
                    "too many rows",
                    field="inputs.user_id",
                    value=len(ids),
                    allowed=f"at most {MAX_INSTANCES}",
                )
            for b, uid in enumerate(ids):
                if not uid:
                    raise BadRequest("empty customer id", field=f"inputs.user_id[{b}]")
            return [Query(k=k, user_id=uid, **options) for uid in ids]
        shape, flat = tensors["items"]
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise BadRequest(
                "must be a 2-D tensor",
                field="inputs.items.shape",
                value=shape,
                allowed='[B, L] with B, L >= 1 (rows right-padded with "")',
            )
        rows, width = shape
        if rows > MAX_INSTANCES or width > MAX_SESSION_ITEMS:
            raise PayloadTooLarge(
                "items tensor too large",
                field="inputs.items.shape",
                value=shape,
                allowed=f"B <= {MAX_INSTANCES}, L <= {MAX_SESSION_ITEMS}",
            )
        queries = []
        for b in range(rows):
            row = [s for s in flat[b * width : (b + 1) * width] if s != ""]
            if not row:
                raise BadRequest("row has no items", field=f"inputs.items[{b}]")
            items = self._check_items(row, f"inputs.items[{b}]")
            queries.append(Query(k=k, items=items, **options))
        return queries

    async def preprocess(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Validate the request into queries; every problem is a 400/413 naming the field."""
        if not self.ready or self.catalogue is None:
            raise NotReady(f"model {self.name} is not loaded")
        if isinstance(payload, InferRequest):
            queries, protocol = self._parse_v2(payload), "v2"
        else:
            queries, protocol = self._parse_v1(payload), "v1"
        # Sizes only, at DEBUG: serving.access writes the one INFO line per request.
        logger.debug(
            "recommend: %d queries (%d customers) via %s",
            len(queries),
            sum(q.user_id is not None for q in queries),
            protocol,
        )
        context = self.request_context(payload, V2_OUTPUTS)
        context["trace_id"] = (headers or {}).get("x-request-id")
        return {"queries": queries, **context}

    # predict ------------------------------------------------------------------------------

    def _histories(
        self, queries: list[Query]
    ) -> tuple[list[list[int] | None], list[str | None], list[int]]:
        """Dense-index histories (oldest first; None where the customer is unknown here), with
        each query's country name and its count of purchases before the history's last
        ``max_history`` items (the model's ``n_before``).

        A known customer's country and total purchases come from Feast (``country``,
        ``n_items``); a session uses its request ``country`` and counts only its own items.
        """
        cat = self.catalogue
        customers = [q.user_id for q in queries if q.user_id is not None]
        fetched: dict[str, Any] = {}
        if customers:
            if self._history is None:
                raise NotReady(
                    "this recommender was started without --feature-repo; send items instead"
                )
            unique = list(dict.fromkeys(customers))
            rows = self._history.histories(unique)
            fetched = dict(zip(unique, rows, strict=True))
        out: list[list[int] | None] = []
        countries: list[str | None] = []
        before: list[int] = []
        for q in queries:
            row = fetched.get(q.user_id) if q.items is None else None
            codes = q.items if q.items is not None else (row.recent_items if row else None)
            country = q.country
            if row is not None and row.country:
                country = row.country
            countries.append(country)
            if codes is None:
                out.append(None)
                before.append(0)
                continue
            # Items the catalogue does not know (dropped in fuse) carry no signal for the model.
            known = [cat.index_of[c] for c in codes if c in cat.index_of]
            out.append(known or None)
            window = min(len(known), cat.max_history)
            # Feast's n_items is the customer's total; what the window does not hold came before.
            total = max(int(row.n_items), len(codes)) if row is not None else len(known)
            before.append(max(0, total - window))
        return out, countries, before

    def _top_k(
        self, scores: np.ndarray, exclude: list[int], query: Query
    ) -> tuple[list[int], list[float]]:
        """The ``query.k`` best eligible items of one score row, best first (ties by index)."""
        # float32 as ORT returns it: the copy is half the size and the values are the same.
        scores = np.array(scores, dtype=np.float32)
        scores[0] = -np.inf
        if query.exclude_seen:
            scores[exclude] = -np.inf
        if query.price_band is not None:
            scores[self.catalogue.price_bands != query.price_band] = -np.inf
        k = min(query.k, int(np.count_nonzero(np.isfinite(scores))))
        if k == 0:
            return [], []
        cut = scores.size - k
        top = np.argpartition(scores, cut)[cut:]
        # Highest score first, ties broken by index so answers are reproducible.
        top = top[np.lexsort((top, -scores[top]))]
        return top.tolist(), scores[top].tolist()

    def _popular(self, exclude: list[int], query: Query) -> tuple[list[int], list[float]]:
        """The fallback: the most popular eligible items, in the catalogue's popularity order."""
        cat = self.catalogue
        allowed = np.ones(cat.n_items + 1, dtype=bool)
        allowed[0] = False
        if query.exclude_seen:
            allowed[exclude] = False
        if query.price_band is not None:
            allowed &= cat.price_bands == query.price_band
        # by_popularity breaks ties by index, so equal popularity never reorders an answer.
        top = cat.by_popularity[allowed[cat.by_popularity]][: query.k]
        return top.tolist(), cat.popularity[top].tolist()

    def run_batch(self, payload: dict[str, Any]) -> dict:
        """The blocking body of ``predict`` (run in the executor), on the preprocessed payload."""
        cat = self.catalogue
        queries: list[Query] = payload["queries"]
        histories, countries, before = self._histories(queries)

        # one ORT batch for every row with a history: [rows, max_history], left-padded with 0
        rows = [i for i, h in enumerate(histories) if h is not None]
        scored: dict[int, np.ndarray] = {}
        if rows:
            batch = np.zeros((len(rows), cat.max_history), dtype=np.int64)
            for r, i in enumerate(rows):
                recent = histories[i][-cat.max_history :]
                batch[r, cat.max_history - len(recent) :] = recent
            extra = {}
            if self.country_index is not None:
                index = self.country_index
                # An unknown or missing country is the unknown country (0), never an error.
                extra = {
                    "country_ids": np.asarray(
                        [index.get(countries[i], 0) if countries[i] else 0 for i in rows],
                        dtype=np.int64,
                    ),
                    "n_before": np.asarray([before[i] for i in rows], dtype=np.int64),
                }
            scores = self._scorer.score(batch, request_id=payload.get("trace_id"), **extra)
            scored = {i: scores[r] for r, i in enumerate(rows)}

        results = []
        for i, q in enumerate(queries):
            seen = histories[i] or []
            if i in scored:
                indices, values = self._top_k(scored[i], seen, q)
                results.append(Ranked(q, indices, values))
            else:
                indices, values = self._popular(seen, q)
                results.append(Ranked(q, indices, values, fallback=FALLBACK_POPULARITY))
        n_fallback = sum(r.fallback is not None for r in results)
        logger.debug("recommend: %d answered, %d by popularity fallback", len(results), n_fallback)
        return {**payload, "results": results}

    # postprocess --------------------------------------------------------------------------

    def postprocess(
        self,
        result: dict[str, Any],
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        """V1: ``{"predictions": [...]}``; V2: item_id/description/score/fallback tensors."""
        cat = self.catalogue
        results: list[Ranked] = result["results"]
        if result["protocol"] == "v1":
            return {
                "predictions": [
                    {
                        "user_id": r.query.user_id,
                        "items": [
                            {
                                "item_id": cat.item_ids[ix],
                                "description": cat.descriptions[ix],
                                "score": score,
                                "price_band": int(cat.price_bands[ix]),
                            }
                            for ix, score in zip(r.indices, r.scores, strict=True)
                        ],
                        "fallback": r.fallback,
                        "model_version": self.version,
                        "variant": self.variant,
                    }
                    for r in results
                ]
            }
        k = results[0].query.k
        b = len(results)
        item_ids = [["" for _ in range(k)] for _ in range(b)]
        descriptions = [["" for _ in range(k)] for _ in range(b)]
        scores = np.zeros((b, k), dtype=np.float32)
        for row, r in enumerate(results):
            for col, (ix, score) in enumerate(zip(r.indices, r.scores, strict=True)):
                item_ids[row][col] = cat.item_ids[ix]
                descriptions[row][col] = cat.descriptions[ix]
                scores[row, col] = score
        outputs = [
            InferOutput("item_id", [b, k], "BYTES", data=item_ids),
            InferOutput("description", [b, k], "BYTES", data=descriptions),
            InferOutput("score", [b, k], "FP32", data=scores),
            InferOutput("fallback", [b], "BYTES", data=[r.fallback or "" for r in results]),
        ]
        return self.v2_response(result, outputs)

    # push (POST /v1/models/recommender/purchases) ----------------------------------------

    def push_purchase(self, customer_id: str, items: list[str], ts: Any) -> dict[str, Any]:
        """Append a purchase to the customer's online history (blocking; run in the executor).

        Returns:
            What the feature store reports about the write (JSON-able), or ``{}``.

        Raises:
            BadRequest: an item is not in the model's catalogue (``body.items[j]``); nothing is
                written then.
            NotReady: not loaded, no feature store, one that cannot take pushes, or a failed
                write.
        """
        if self._history is None:
            raise NotReady(
                "this recommender was started without --feature-repo; purchases cannot be pushed"
            )
        push = getattr(self._history, "push_purchase", None)
        if push is None:
            raise NotReady("this feature store client has no push_purchase")
        if self.catalogue is None:
            raise NotReady("the recommender is not loaded yet; retry")
        # An item outside the catalogue would be stored, then dropped at ranking; a history of
        # only such items sends the customer to the fallback. Refused like a request's items.
        self._check_items(items, "body.items")
        try:
            result = push(customer_id, items, ts)
        except (BadRequest, NotReady):
            raise
        except ValueError as exc:
            raise BadRequest(f"the feature store refused the purchase: {exc}") from exc
        except Exception as exc:  # sqlite/redis/feast errors surface as many types
            raise NotReady(f"the online feature store could not be written: {exc}") from exc
        return dict(result) if isinstance(result, dict) else {}

    # metadata (GET /v2/models/recommender) ------------------------------------------------

    def get_input_types(self) -> list[dict]:
        """The V2 inputs, for the model metadata endpoint."""
        return [
            {"name": "user_id", "datatype": "BYTES", "shape": [-1]},
            {"name": "items", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "k", "datatype": "INT32", "shape": [1]},
            {"name": "exclude_seen", "datatype": "BOOL", "shape": [1]},
            {"name": "price_band", "datatype": "INT32", "shape": [1]},
        ]

    def get_output_types(self) -> list[dict]:
        """The V2 outputs, for the model metadata endpoint."""
        return [
            {"name": "item_id", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "description", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "score", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "fallback", "datatype": "BYTES", "shape": [-1]},
        ]
