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
# KServe's name for the length of the JSON part of a body that carries binary tensors.
BINARY_HEADER = "inference-header-content-length"


class LocalScorer:
    """Scores on an ORT session of this process."""

    def __init__(self, session) -> None:
        self._session = session

    def score(self, batch: np.ndarray, *, request_id: str | None = None) -> np.ndarray:
        """``scores`` float32 [B, N+1] for ``batch`` int64 [B, max_history]."""
        return self._session.run([OUTPUT], {INPUT: batch})[0]

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
    """

    def __init__(
        self,
        predictor_host: str,
        *,
        model_name: str,
        n_scores: int,
        model_version: str | None,
        timeouts: Timeouts | None = None,
    ) -> None:
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

    def score(self, batch: np.ndarray, *, request_id: str | None = None) -> np.ndarray:
        """``scores`` float32 [B, N+1] from the predictor for ``batch`` int64 [B, H].

        Raises:
            PredictorUnavailable: connect refused, a timeout, a dropped connection, or the
                predictor's own 503 (not loaded, or its model is another version).
            BadGateway: any other answer that is not the tensor asked for.
        """
        batch = np.ascontiguousarray(batch, dtype="<i8")
        raw = batch.tobytes()
        header = orjson.dumps(
            {
                "id": request_id or "",
                "inputs": [
                    {
                        "name": INPUT,
                        "shape": list(batch.shape),
                        "datatype": "INT64",
                        "parameters": {"binary_data_size": len(raw)},
                    }
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
