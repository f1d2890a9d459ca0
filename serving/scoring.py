"""Where the recommender's scores come from: ORT in this process, or a predictor over V2 HTTP.

One process (``--role all``) scores with a local ORT session. The cluster shape splits the work
the way KServe does: a transformer process (Feast lookup, validation, ranking) and a predictor
process (``--role predictor``, bare ONNX scoring) that talk the Open Inference Protocol over HTTP.
:class:`RemoteScorer` is the transformer's side of that hop. It sends the ``item_ids`` tensor and
asks for ``scores`` with the V2 binary tensor extension: a [B, N+1] float32 block is ~13 KB per row
for the demo catalogue, about a third of its JSON text, and needs no float formatting or parsing.

The hop has bounded connect, read and pool timeouts, so a predictor that is down, restarting or
stuck makes a request fail fast with a 503 and ``Retry-After`` instead of hanging its client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
import numpy as np
import orjson

from serving.errors import BadGateway, PredictorUnavailable

logger = logging.getLogger(__name__)

INPUT = "item_ids"
OUTPUT = "scores"
# The customer-feature inputs of a graph exported with them (int64 [B] each); an older graph
# takes item_ids only, and the scorers then send nothing else.
COUNTRY_INPUT = "country_ids"
N_BEFORE_INPUT = "n_before"
CUSTOMER_INPUTS = (COUNTRY_INPUT, N_BEFORE_INPUT)


def has_customer_inputs(input_names: set[str] | list[str]) -> bool:
    """Whether a graph with these input names takes the customer features."""
    return set(CUSTOMER_INPUTS) <= set(input_names)


def customer_feeds(
    rows: int, country_ids: np.ndarray | None, n_before: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The two customer inputs of a batch as int64 [rows] (missing ones are 0: unknown, none)."""
    zeros = np.zeros(rows, dtype=np.int64)
    return {
        COUNTRY_INPUT: zeros if country_ids is None else np.asarray(country_ids, dtype=np.int64),
        N_BEFORE_INPUT: zeros if n_before is None else np.asarray(n_before, dtype=np.int64),
    }


# KServe's name for the length of the JSON part of a body that carries binary tensors.
BINARY_HEADER = "inference-header-content-length"


class LocalScorer:
    """Scores on an ORT session of this process."""

    def __init__(self, session) -> None:
        self._session = session
        self.customer_inputs = has_customer_inputs([i.name for i in session.get_inputs()])

    def score(
        self,
        batch: np.ndarray,
        *,
        country_ids: np.ndarray | None = None,
        n_before: np.ndarray | None = None,
        request_id: str | None = None,
    ) -> np.ndarray:
        """``scores`` float32 [B, N+1] for ``batch`` int64 [B, max_history].

        ``country_ids`` and ``n_before`` (int64 [B], already range-checked) reach a graph with
        customer inputs; a graph without them ignores them.
        """
        feeds = {INPUT: batch}
        if self.customer_inputs:
            feeds.update(customer_feeds(batch.shape[0], country_ids, n_before))
        return self._session.run([OUTPUT], feeds)[0]

    def close(self) -> None:
        """Nothing to release (the session lives as long as the model)."""


@dataclass(frozen=True)
class Timeouts:
    """Bounds on one predictor call, in seconds.

    Attributes:
        connect: TCP connect; a predictor that is down is refused at once on loopback and within
            this bound across a cluster network.
        read: waiting for the answer; a [256, 20] batch of the demo model scores in ~5 ms, so a
            second means the predictor is stuck or overloaded.
        pool: waiting for a free keep-alive connection when every one is busy.
    """

    connect: float = 0.5
    read: float = 2.0
    pool: float = 1.0


def parse_predictor_host(host: str) -> str:
    """``host[:port]`` (KServe injects ``<isvc>-predictor.<namespace>``) -> base URL.

    Raises:
        ValueError: an empty host, a path, or a port that is not 1-65535.
    """
    text = host.strip()
    if text.startswith(("http://", "https://")):
        scheme, _, text = text.partition("://")
    else:
        scheme = "http"
    if not text or "/" in text.rstrip("/"):
        raise ValueError(f"--predictor-host {host!r}: expected host or host:port")
    text = text.rstrip("/")
    name, sep, port = text.rpartition(":")
    if sep and not text.endswith("]"):
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"--predictor-host {host!r}: port must be 1-65535")
        if not name:
            raise ValueError(f"--predictor-host {host!r}: no host name")
    return f"{scheme}://{text}"


class RemoteScorer:
    """Scores on a ``--role predictor`` server over V2 REST with binary tensors.

    Args:
        predictor_host: ``host[:port]`` of the predictor.
        model_name: the model's name on the predictor (the same wire name, ``recommender``).
        n_scores: the expected width of ``scores`` (catalogue size + 1); another width means the
            predictor serves another model, which would map scores to the wrong items.
        model_version: the version this transformer's catalogue belongs to; ``None`` skips the
            check.
        timeouts: connect/read/pool bounds.
        customer_inputs: send ``country_ids`` and ``n_before`` with every batch (the exported
            model has them: its countries.json is beside this transformer's catalogue).
    """

    def __init__(
        self,
        predictor_host: str,
        *,
        model_name: str,
        n_scores: int,
        model_version: str | None,
        timeouts: Timeouts | None = None,
        customer_inputs: bool = False,
    ) -> None:
        self.customer_inputs = customer_inputs
        self.base_url = parse_predictor_host(predictor_host)
        self.url = f"{self.base_url}/v2/models/{model_name}/infer"
        self.ready_url = f"{self.base_url}/v2/models/{model_name}/ready"
        self.n_scores = n_scores
        self.model_version = model_version
        t = timeouts or Timeouts()
        self._client = httpx.Client(
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.pool),
            # Enough keep-alive connections for the executor's threads; more would only queue.
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def probe(self) -> bool:
        """Whether the predictor answers its readiness route now (logged, never raised)."""
        try:
            ok = self._client.get(self.ready_url).status_code == 200
        except httpx.HTTPError as exc:
            logger.warning("predictor %s not reachable yet: %s", self.base_url, exc)
            return False
        log = logger.info if ok else logger.warning
        log("predictor %s ready: %s", self.base_url, ok)
        return ok

    def score(
        self,
        batch: np.ndarray,
        *,
        country_ids: np.ndarray | None = None,
        n_before: np.ndarray | None = None,
        request_id: str | None = None,
    ) -> np.ndarray:
        """``scores`` float32 [B, N+1] from the predictor for ``batch`` int64 [B, H].

        With ``customer_inputs`` the body also carries ``country_ids`` and ``n_before`` INT64
        [B] (zeros where not given), binary like ``item_ids``.

        Raises:
            PredictorUnavailable: connect refused, a timeout, a dropped connection, or the
                predictor's own 503 (not loaded, or its model is another version).
            BadGateway: any other answer that is not the tensor asked for.
        """
        batch = np.ascontiguousarray(batch, dtype="<i8")
        tensors = {INPUT: batch}
        if self.customer_inputs:
            tensors.update(customer_feeds(batch.shape[0], country_ids, n_before))
        parts = {n: np.ascontiguousarray(t, dtype="<i8").tobytes() for n, t in tensors.items()}
        raw = b"".join(parts.values())
        header = orjson.dumps(
            {
                "id": request_id or "",
                "inputs": [
                    {
                        "name": name,
                        "shape": list(tensors[name].shape),
                        "datatype": "INT64",
                        "parameters": {"binary_data_size": len(data)},
                    }
                    for name, data in parts.items()
                ],
                "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
            }
        )
        headers = {
            BINARY_HEADER: str(len(header)),
            "content-type": "application/octet-stream",
        }
        if request_id:
            headers["x-request-id"] = request_id
        try:
            response = self._client.post(self.url, content=header + raw, headers=headers)
        except httpx.TimeoutException as exc:
            raise PredictorUnavailable(
                f"predictor {self.base_url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise PredictorUnavailable(
                f"predictor {self.base_url} unreachable ({type(exc).__name__})"
            ) from exc
        if response.status_code == 503:
            raise PredictorUnavailable(f"predictor {self.base_url} is not ready")
        if response.status_code != 200:
            raise BadGateway(
                f"predictor {self.base_url} answered {response.status_code}: {response.text[:200]}"
            )
        return self._decode(response, batch.shape[0])

    def _decode(self, response: httpx.Response, rows: int) -> np.ndarray:
        body = response.content
        json_len = response.headers.get(BINARY_HEADER)
        try:
            meta = orjson.loads(body[: int(json_len)] if json_len else body)
            (out,) = [o for o in meta["outputs"] if o["name"] == OUTPUT]
            shape = [int(d) for d in out["shape"]]
            if json_len:
                data = np.frombuffer(body[int(json_len) :], dtype="<f4")
            else:
                data = np.asarray(out["data"], dtype=np.float32)
            scores = data.reshape(shape)
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise BadGateway(f"predictor {self.base_url} sent an unreadable answer: {exc}") from exc
        if scores.shape != (rows, self.n_scores):
            raise BadGateway(
                f"predictor {self.base_url} returned scores of shape {list(scores.shape)}, "
                f"expected [{rows}, {self.n_scores}] (another model or catalogue?)"
            )
        version = meta.get("model_version")
        if self.model_version is not None and version != self.model_version:
            # During a rollout a transformer can briefly meet a predictor of the other revision;
            # its scores index another catalogue, so the request is retried, not answered.
            raise PredictorUnavailable(
                f"predictor {self.base_url} serves model {version!r}, this transformer "
                f"expects {self.model_version!r}"
            )
        return scores

    def close(self) -> None:
        """Close the keep-alive connections."""
        self._client.close()
