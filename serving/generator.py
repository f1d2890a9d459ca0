"""The "generator" model: synthetic shop sessions sampled from the ONNX causal LM.

The exported model maps ``input_ids`` int64 [batch, seq] to ``logits`` float32
[batch, seq, vocab] with no cache, so each step re-reads the whole (short) sequence; sessions
are at most ``max_length`` tokens. Sampling runs in numpy: a sequence is
``[bos, country, item, item, ..., eos]``; the country is the one asked for or is sampled from the
country tokens; then item tokens or eos are sampled, with pad/bos/unk/country tokens masked and
each item at most once per session (a session lists distinct items in order of first purchase,
as the training data does). The ``n`` samples of one instance run as one batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.artifacts import model_version, read_json
from serving.base import BlockingModel
from serving.errors import BadRequest, ModelLoadError, NotReady
from serving.kserve_compat import InferOutput, InferRequest, InferResponse
from serving.onnx_session import check_io, create_session
from serving.validation import (
    TensorSpec,
    get_float,
    get_int,
    get_str,
    get_str_list,
    instances_of,
    reject_unknown_keys,
    v2_tensors,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "generator"
MAX_INSTANCES = 16
MAX_N = 32
MAX_ITEMS_CAP = 64
DEFAULT_MAX_ITEMS = 20
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**32 - 1
INSTANCE_KEYS = ("prefix", "n", "max_items", "temperature", "top_k", "top_p", "seed", "country")

V2_INPUTS = {
    "prefix": TensorSpec("BYTES"),
    "n": TensorSpec("INT32"),
    "max_items": TensorSpec("INT32"),
    "temperature": TensorSpec("FP32"),
    "top_k": TensorSpec("INT32"),
    "top_p": TensorSpec("FP32"),
    "seed": TensorSpec("INT64"),
    "country": TensorSpec("BYTES"),
}

V2_OUTPUTS = ("items", "length", "country")


@dataclass
class Vocab:
    """``vocab.json`` (format in docs/serving.md and the project's common contract)."""

    tokens: list[str]
    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int
    first_item_id: int
    countries: dict[str, int]
    max_length: int

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def n_items(self) -> int:
        return self.size - self.first_item_id

    @classmethod
    def read(cls, path: Path) -> Vocab:
        """Read and check ``vocab.json``: ids in range, item tokens after the specials."""
        raw = read_json(path)
        try:
            vocab = cls(
                tokens=[str(t) for t in raw["tokens"]],
                pad_id=int(raw["pad_id"]),
                bos_id=int(raw["bos_id"]),
                eos_id=int(raw["eos_id"]),
                unk_id=int(raw["unk_id"]),
                first_item_id=int(raw["first_item_id"]),
                countries={str(k): int(v) for k, v in dict(raw["countries"]).items()},
                max_length=int(raw["max_length"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: missing or malformed field: {exc}") from exc
        specials = [vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id]
        if not 0 < vocab.first_item_id < vocab.size:
            raise ModelLoadError(
                f"{path}: first_item_id {vocab.first_item_id} leaves no item tokens "
                f"in a vocabulary of {vocab.size}"
            )
        for i in [*specials, *vocab.countries.values()]:
            if not 0 <= i < vocab.first_item_id:
                raise ModelLoadError(
                    f"{path}: special/country id {i} is not below first_item_id "
                    f"{vocab.first_item_id}"
                )
        if not vocab.countries:
            raise ModelLoadError(f"{path}: no country tokens")
        if vocab.max_length < 4:
            raise ModelLoadError(f"{path}: max_length {vocab.max_length} is below 4")
        return vocab


@dataclass
class Job:
    """One validated instance."""

    prefix: list[int]
    n: int
    max_items: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    country: str | None


def sample_tokens(
    logits: np.ndarray,
    allowed: np.ndarray,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw one token per row among the ``allowed`` ones.

    Args:
        logits: float [rows, vocab], the last position's logits.
        allowed: bool [rows, vocab]; every row has at least one True.
        temperature: 0 picks the best allowed token (lowest id on ties); otherwise logits are
            divided by it before the softmax.
        top_k: keep the k best allowed tokens of each row (ties at the cut are kept).
        top_p: keep the smallest set of best tokens whose probability reaches top_p.
        rng: the random source.

    Returns:
        int64 [rows] token ids.
    """
    z = np.where(allowed, logits.astype(np.float64), -np.inf)
    if temperature == 0.0:
        return np.argmax(z, axis=1).astype(np.int64)
    z = z / temperature
    if top_k is not None:
        k = np.minimum(top_k, allowed.sum(axis=1))  # [rows]
        kth = -np.sort(-z, axis=1)[np.arange(z.shape[0]), k - 1]
        z = np.where(z >= kth[:, None], z, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        # keep a token if the mass before it is still below top_p (so the first always stays)
        keep_sorted = (np.cumsum(sorted_p, axis=1) - sorted_p) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    u = rng.random(p.shape[0]) * cdf[:, -1]
    picks = (cdf < u[:, None]).sum(axis=1)
    # Guard against rounding at the top end: never pick a zero-probability token.
    picks = np.minimum(picks, p.shape[1] - 1)
    bad = p[np.arange(p.shape[0]), picks] == 0.0
    if bad.any():
        picks[bad] = np.argmax(p[bad], axis=1)
    return picks.astype(np.int64)


class GeneratorModel(BlockingModel):
    """KServe model over ``model.onnx`` + ``vocab.json``.

    Args:
        model_dir: ``exported/generator``.
        name: the model name on the wire.
        require_gpu: demand CUDA (``None`` reads ``RECSYNTH_REQUIRE_GPU``).
    """

    def __init__(
        self, model_dir: Path, *, name: str = MODEL_NAME, require_gpu: bool | None = None
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.require_gpu = require_gpu
        self.vocab: Vocab | None = None
        self.version = ""
        self._session = None
        self._item_index: dict[str, int] = {}
        self._country_of_id: dict[int, str] = {}

    # load ---------------------------------------------------------------------------------

    def load(self) -> bool:
        """Open the vocabulary and the ONNX session; check the logits width matches.

        Raises:
            ModelLoadError: a file is missing or inconsistent, or CUDA is required but inactive.
        """
        vocab = Vocab.read(self.model_dir / "vocab.json")
        model_path = self.model_dir / "model.onnx"
        session = create_session(model_path, require_gpu=self.require_gpu)
        check_io(
            session,
            inputs={"input_ids": "tensor(int64)"},
            outputs={"logits": "tensor(float)"},
            model_path=model_path,
        )
        probe = session.run(["logits"], {"input_ids": np.array([[vocab.bos_id]], np.int64)})[0]
        if probe.shape != (1, 1, vocab.size):
            raise ModelLoadError(
                f"{model_path} returns logits of shape {probe.shape} for one token, but "
                f"vocab.json has {vocab.size} tokens (expected (1, 1, {vocab.size}))"
            )
        self._item_index = {
            tok: i for i, tok in enumerate(vocab.tokens) if i >= vocab.first_item_id
        }
        self._country_of_id = {i: c for c, i in vocab.countries.items()}
        self.vocab = vocab
        self._session = session
        self.version = model_version(self.model_dir)
        self.ready = True
        logger.info(
            "generator %s ready: %d tokens (%d items, %d countries), max_length %d",
            self.version,
            vocab.size,
            vocab.n_items,
            len(vocab.countries),
            vocab.max_length,
        )
        return self.ready

    # preprocess ---------------------------------------------------------------------------

    def _job(self, inst: dict[str, Any], where: str) -> Job:
        vocab = self.vocab
        reject_unknown_keys(inst, INSTANCE_KEYS, where)
        # bos, country and eos frame a session, so at most max_length - 3 items fit, as in
        # the generator's training records; the prefix leaves room for one sampled item.
        max_total = vocab.max_length - 3
        prefix = get_str_list(
            inst, "prefix", where, max_len=max_total - 1, allow_empty=True, default=[]
        )
        prefix_ids = []
        for j, code in enumerate(prefix):
            if code not in self._item_index:
                raise BadRequest(
                    "unknown item id",
                    field=f"{where}.prefix[{j}]",
                    value=code,
                    allowed="a stock code in the generator's vocabulary",
                )
            prefix_ids.append(self._item_index[code])
        cap = min(MAX_ITEMS_CAP, max_total - len(prefix))
        country = get_str(inst, "country", where, default=None)
        if country is not None and country not in vocab.countries:
            raise BadRequest(
                "unknown country",
                field=f"{where}.country",
                value=country,
                allowed=", ".join(sorted(vocab.countries)[:10])
                + (" ..." if len(vocab.countries) > 10 else ""),
            )
        top_p = get_float(inst, "top_p", where, default=None, lo=0.0, hi=1.0, lo_open=True)
        return Job(
            prefix=prefix_ids,
            n=get_int(inst, "n", where, default=1, lo=1, hi=MAX_N),
            max_items=get_int(
                inst, "max_items", where, default=min(DEFAULT_MAX_ITEMS, cap), lo=1, hi=cap
            ),
            temperature=get_float(
                inst, "temperature", where, default=1.0, lo=0.0, hi=MAX_TEMPERATURE
            ),
            top_k=get_int(inst, "top_k", where, default=None, lo=1, hi=vocab.n_items),
            top_p=top_p,
            seed=get_int(inst, "seed", where, default=None, lo=0, hi=MAX_SEED),
            country=country,
        )

    def _v2_instance(self, request: InferRequest) -> dict[str, Any]:
        tensors = v2_tensors(request.inputs, V2_INPUTS)
        inst: dict[str, Any] = {}
        for name, (shape, flat) in tensors.items():
            if name == "prefix":
                if len(shape) != 1:
                    raise BadRequest(
                        "must be 1-D", field="inputs.prefix.shape", value=shape, allowed="[P]"
                    )
                inst[name] = flat
            else:
                if len(flat) != 1 or len(shape) > 1:
                    raise BadRequest(
                        f"input {name!r} takes one value",
                        field=f"inputs.{name}.shape",
                        value=shape,
                        allowed="[1]",
                    )
                inst[name] = flat[0]
        return inst

    async def preprocess(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Validate the request into jobs; every problem is a 400/413 naming the field."""
        if not self.ready or self.vocab is None:
            raise NotReady(f"model {self.name} is not loaded")
        if isinstance(payload, InferRequest):
            jobs, protocol = [self._job(self._v2_instance(payload), "inputs")], "v2"
        else:
            instances = instances_of(payload, max_instances=MAX_INSTANCES)
            jobs = [self._job(inst, f"instances[{i}]") for i, inst in enumerate(instances)]
            protocol = "v1"
        logger.info(
            "generate: %d instances, %d sessions via %s",
            len(jobs),
            sum(j.n for j in jobs),
            protocol,
        )
        return {"jobs": jobs, **self.request_context(payload, V2_OUTPUTS)}

    # predict ------------------------------------------------------------------------------

    def _logits(self, seq: np.ndarray) -> np.ndarray:
        return self._session.run(["logits"], {"input_ids": seq})[0][:, -1, :]

    def _generate(self, job: Job) -> list[dict[str, Any]]:
        vocab = self.vocab
        rng = np.random.default_rng(job.seed)
        n, size = job.n, vocab.size
        opts = {"temperature": job.temperature, "top_k": job.top_k, "top_p": job.top_p}

        # [bos] then the country: given, or sampled among the country tokens only
        seq = np.full((n, 1), vocab.bos_id, dtype=np.int64)
        if job.country is not None:
            country_ids = np.full(n, vocab.countries[job.country], dtype=np.int64)
        else:
            allowed = np.zeros((n, size), dtype=bool)
            allowed[:, list(vocab.countries.values())] = True
            country_ids = sample_tokens(self._logits(seq), allowed, rng=rng, **opts)
        seq = np.concatenate([seq, country_ids[:, None]], axis=1)
        if job.prefix:
            seq = np.concatenate([seq, np.tile(np.array(job.prefix, np.int64), (n, 1))], axis=1)

        # then item tokens or eos, each item at most once per row, until eos or max_items
        used = np.zeros((n, size), dtype=bool)
        used[:, job.prefix] = True
        done = np.zeros(n, dtype=bool)
        generated: list[list[int]] = [[] for _ in range(n)]
        for _ in range(job.max_items):
            allowed = np.zeros((n, size), dtype=bool)
            allowed[:, vocab.first_item_id :] = True
            allowed &= ~used
            # eos only once the session holds an item: an empty session is no session
            allowed[:, vocab.eos_id] = used[:, vocab.first_item_id :].any(axis=1)
            tokens = sample_tokens(self._logits(seq), allowed, rng=rng, **opts)
            for row in np.flatnonzero(~done):
                if tokens[row] == vocab.eos_id:
                    done[row] = True
                else:
                    generated[row].append(int(tokens[row]))
                    used[row, tokens[row]] = True
            if done.all():
                break
            # finished rows are fed pad: the model is causal, so it cannot affect other rows
            tokens = np.where(done, vocab.pad_id, tokens)
            seq = np.concatenate([seq, tokens[:, None]], axis=1)
        return [
            {
                "country": self._country_of_id[int(country_ids[row])],
                "items": [vocab.tokens[i] for i in job.prefix + generated[row]],
            }
            for row in range(n)
        ]

    def run_batch(self, payload: dict[str, Any]) -> dict:
        """The blocking body of ``predict`` (run in the executor), on the preprocessed payload."""
        results = [self._generate(job) for job in payload["jobs"]]
        logger.info("generate: %d sessions sampled", sum(len(r) for r in results))
        return {**payload, "results": results}

    # postprocess --------------------------------------------------------------------------

    def postprocess(
        self,
        result: dict[str, Any],
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        """V1: ``{"predictions": [{"sessions": [...]}]}``; V2: items/length/country tensors."""
        if result["protocol"] == "v1":
            return {
                "predictions": [
                    {"sessions": sessions, "model_version": self.version}
                    for sessions in result["results"]
                ]
            }
        sessions = result["results"][0]
        n = len(sessions)
        width = max(1, max(len(s["items"]) for s in sessions))
        items = [s["items"] + [""] * (width - len(s["items"])) for s in sessions]
        outputs = [
            InferOutput("items", [n, width], "BYTES", data=items),
            InferOutput(
                "length",
                [n],
                "INT32",
                data=np.array([len(s["items"]) for s in sessions], dtype=np.int32),
            ),
            InferOutput("country", [n], "BYTES", data=[s["country"] for s in sessions]),
        ]
        return self.v2_response(result, outputs)

    # metadata (GET /v2/models/generator) --------------------------------------------------

    def get_input_types(self) -> list[dict]:
        """The V2 inputs, for the model metadata endpoint."""
        shapes = {"prefix": [-1]}
        return [
            {"name": name, "datatype": spec.datatype, "shape": shapes.get(name, [1])}
            for name, spec in V2_INPUTS.items()
        ]

    def get_output_types(self) -> list[dict]:
        """The V2 outputs, for the model metadata endpoint."""
        return [
            {"name": "items", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "length", "datatype": "INT32", "shape": [-1]},
            {"name": "country", "datatype": "BYTES", "shape": [-1]},
        ]
