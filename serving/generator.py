"""The "generator" model: synthetic shop sessions sampled in numpy over ONNX Runtime.

A session is the token sequence ``[bos, country, [month], [band], prefix..., items..., eos]``
(month and band only where the vocabulary has them: see the conditioning contract in
docs/serving.md). Each condition is forced to the value asked for, or is sampled by the
model among that condition's tokens only; the prefix is forced; then item tokens or eos are
sampled with everything else masked (pad, bos, unk and condition tokens never reach the output),
each item at most once per session, and eos only once the session holds an item.

Decoding runs over ``decoder_kv.onnx`` (a key/value cache: one prefill over the left-padded
prompts, then one decode step per token) when the export has it, and otherwise over the no-cache
``model.onnx`` by re-running the growing sequences. Rows that finish are dropped from the batch
(and their cache with them), so the rest decode at the batch size still running.

Concurrent requests are batched: ``predict`` hands its jobs to a :class:`Batcher` that waits up
to ``batch_wait_ms`` for more (or until ``MAX_BATCH_ROWS`` sessions are queued) and decodes them
all in one ORT batch. Each job draws its uniforms from its own random generator, one per row and
step, before decoding, so a seeded request gets the same sessions alone or batched with others.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable
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
MODEL_ONNX = "model.onnx"
KV_ONNX = "decoder_kv.onnx"
MAX_INSTANCES = 16
MAX_N = 32
MAX_ITEMS_CAP = 64
DEFAULT_MAX_ITEMS = 20
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**32 - 1
# One decode batch holds at most this many sessions (16 instances x 32 sessions = 512 is one
# full request); more queued requests wait for the next batch.
MAX_BATCH_ROWS = 512
# How long a request waits for others to share its batch. 2 ms is small against a session's
# decode (tens of ms) and was enough to gather concurrent clients in bench/generator_speed.py.
DEFAULT_BATCH_WAIT_MS = 2.0
BATCH_WAIT_ENV = "RECSYNTH_GENERATOR_BATCH_WAIT_MS"
INSTANCE_KEYS = (
    "prefix",
    "n",
    "max_items",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "country",
    "month",
    "price_band",
    "category",
)

V2_INPUTS = {
    "prefix": TensorSpec("BYTES"),
    "n": TensorSpec("INT32"),
    "max_items": TensorSpec("INT32"),
    "temperature": TensorSpec("FP32"),
    "top_k": TensorSpec("INT32"),
    "top_p": TensorSpec("FP32"),
    "seed": TensorSpec("INT64"),
    "country": TensorSpec("BYTES"),
    "month": TensorSpec("INT32"),
    "price_band": TensorSpec("INT32"),
    "category": TensorSpec("BYTES"),
}

V2_OUTPUTS = ("items", "length", "country", "month", "price_band", "category")


# vocabulary -------------------------------------------------------------------------------------


def _id_group(raw: Any, name: str, path: Path) -> dict[int, int] | None:
    """An optional ``{"1": id, ...}`` group of vocab.json as int -> id (None when absent)."""
    if raw is None:
        return None
    try:
        group = {int(k): int(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: {name} must map integers to token ids: {exc}") from exc
    if not group:
        raise ModelLoadError(f"{path}: {name} is present but empty")
    return group


def _name_group(raw: Any, name: str, path: Path) -> dict[str, int] | None:
    """An optional ``{"NAME": id, ...}`` group of vocab.json (None when absent)."""
    if raw is None:
        return None
    try:
        group = {str(k): int(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: {name} must map names to token ids: {exc}") from exc
    if not group:
        raise ModelLoadError(f"{path}: {name} is present but empty")
    return group


@dataclass
class Vocab:
    """``vocab.json`` (format in docs/serving.md and the project's common contract).

    ``months`` (1..12 -> id), ``price_bands`` (0..B-1 -> id) and ``categories`` (name -> id) are
    None for a vocabulary trained without that conditioning.
    """

    tokens: list[str]
    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int
    first_item_id: int
    countries: dict[str, int]
    max_length: int
    months: dict[int, int] | None = None
    price_bands: dict[int, int] | None = None
    categories: dict[str, int] | None = None

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def n_items(self) -> int:
        return self.size - self.first_item_id

    @property
    def frame_tokens(self) -> int:
        """Tokens around a session's items: bos, country, [month], [band], [category], eos."""
        return (
            3
            + (self.months is not None)
            + (self.price_bands is not None)
            + (self.categories is not None)
        )

    @property
    def max_session_items(self) -> int:
        """Most items (prefix included) one session holds, as in the training records."""
        return self.max_length - self.frame_tokens

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
                months=_id_group(raw.get("months"), "months", path),
                price_bands=_id_group(raw.get("price_bands"), "price_bands", path),
                categories=_name_group(raw.get("categories"), "categories", path),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{path}: missing or malformed field: {exc}") from exc
        specials = [vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id]
        if not 0 < vocab.first_item_id < vocab.size:
            raise ModelLoadError(
                f"{path}: first_item_id {vocab.first_item_id} leaves no item tokens "
                f"in a vocabulary of {vocab.size}"
            )
        conditions = [
            *vocab.countries.values(),
            *(vocab.months or {}).values(),
            *(vocab.price_bands or {}).values(),
            *(vocab.categories or {}).values(),
        ]
        for i in [*specials, *conditions]:
            if not 0 <= i < vocab.first_item_id:
                raise ModelLoadError(
                    f"{path}: special/country/month/band/category id {i} is not below "
                    f"first_item_id "
                    f"{vocab.first_item_id}"
                )
        if len(set(specials + conditions)) != len(specials + conditions):
            raise ModelLoadError(f"{path}: a special or condition token id is used twice")
        if not vocab.countries:
            raise ModelLoadError(f"{path}: no country tokens")
        if vocab.max_length < vocab.frame_tokens + 1:
            raise ModelLoadError(
                f"{path}: max_length {vocab.max_length} leaves no room for an item after "
                f"{vocab.frame_tokens} frame and condition tokens"
            )
        return vocab


@dataclass
class Job:
    """One validated instance: ``n`` sessions sampled with the same options.

    ``country``, ``month``, ``price_band`` and ``category`` are token ids (None: sampled by the
    model).
    ``top_k`` None and ``top_p`` None mean off; ``temperature`` 0 is greedy.
    """

    prefix: list[int]
    n: int
    max_items: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    country: int | None = None
    month: int | None = None
    price_band: int | None = None
    category: int | None = None
    # Not a request parameter: the speed benchmark turns eos off so that every session decodes
    # exactly max_items tokens on both sides of the comparison.
    allow_eos: bool = True


# sampling ---------------------------------------------------------------------------------------


# float32 -inf as int32 bits (0xff800000)
_NEG_INF_BITS = np.float32(-np.inf).view(np.int32)


def _mask_bias(allowed: np.ndarray) -> np.ndarray:
    """float32 [rows, vocab]: 0 where ``allowed``, -inf elsewhere, to add to the logits.

    Built from bits (True -> 1 - 1 = 0 -> +0.0; False -> -1 & 0xff800000 -> -inf): the same
    masking as ``np.where(allowed, logits, -inf)``, which measured about 2x slower than building
    and adding this bias at 32 rows of a 3,447-token vocabulary.
    """
    bits = allowed.astype(np.int32)
    bits -= 1
    bits &= _NEG_INF_BITS
    return bits.view(np.float32)


def sample_rows(
    logits: np.ndarray,
    allowed: np.ndarray,
    *,
    temperature: np.ndarray,
    top_k: np.ndarray,
    top_p: np.ndarray,
    u: np.ndarray,
) -> np.ndarray:
    """Draw one token per row among the ``allowed`` ones, each row with its own options.

    Masking first, then temperature, top-k and top-p, in that order (as transformers' generate
    applies a logits processor before its warpers).

    Args:
        logits: float [rows, vocab], the next-token logits.
        allowed: bool [rows, vocab]; every row has at least one True.
        temperature: float [rows]; 0 picks the best allowed token (lowest id on ties), otherwise
            the logits are divided by it before the softmax (any positive value is safe: the
            maximum is subtracted first, so nothing overflows).
        top_k: int [rows]; keep the k best allowed tokens (ties at the cut are kept); 0 = off.
        top_p: float [rows] in (0, 1]; keep the smallest set of best tokens whose probability
            reaches top_p (the best token always stays); 1 = off.
        u: float [rows] uniform draws in [0, 1), one per row (unused for greedy rows).

    Returns:
        int64 [rows] token ids.
    """
    bias = _mask_bias(allowed)
    hot = temperature > 0.0
    if not hot.any():
        # Greedy only: the argmax in the logits' own dtype (widening float32 is exact, so the
        # picks equal the float64 ones), without a float64 copy of every row.
        return np.argmax(logits + bias, axis=1).astype(np.int64)
    z = logits.astype(np.float64)
    z += bias
    picks = np.argmax(z, axis=1).astype(np.int64)
    idx = np.flatnonzero(hot)
    if idx.size < z.shape[0]:
        z = z[idx]
    z -= z.max(axis=1, keepdims=True)
    z /= temperature[idx, None]
    k = top_k[idx]
    cut = np.flatnonzero(k > 0)
    if cut.size:
        zc = z[cut]
        kk = np.minimum(k[cut], np.isfinite(zc).sum(axis=1))
        kth = -np.sort(-zc, axis=1)[np.arange(cut.size), kk - 1]
        z[cut] = np.where(zc >= kth[:, None], zc, -np.inf)
    # Unnormalised probabilities (the best allowed token has 1): the draw below scales by each
    # row's total, so only top-p needs them to sum to 1.
    p = np.exp(z, out=z)
    nucleus = np.flatnonzero(top_p[idx] < 1.0)
    if nucleus.size:
        pn = p[nucleus]
        pn /= pn.sum(axis=1, keepdims=True)
        order = np.argsort(-pn, axis=1, kind="stable")
        sorted_p = np.take_along_axis(pn, order, axis=1)
        # keep a token while the mass before it is still below top_p (so the first always stays)
        keep_sorted = (np.cumsum(sorted_p, axis=1) - sorted_p) < top_p[idx][nucleus, None]
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        pn = np.where(keep, pn, 0.0)
        p[nucleus] = pn / pn.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    draw = u[idx] * cdf[:, -1]
    chosen = np.minimum((cdf <= draw[:, None]).sum(axis=1), p.shape[1] - 1)
    # Rounding at the top end can land on a zero-probability token: never pick one.
    bad = p[np.arange(idx.size), chosen] == 0.0
    if bad.any():
        chosen[bad] = np.argmax(p[bad], axis=1)
    picks[idx] = chosen
    return picks


def sample_tokens(
    logits: np.ndarray,
    allowed: np.ndarray,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """:func:`sample_rows` with one set of options for every row and draws from ``rng``."""
    rows = logits.shape[0]
    return sample_rows(
        logits,
        allowed,
        temperature=np.full(rows, float(temperature)),
        top_k=np.full(rows, 0 if top_k is None else int(top_k), dtype=np.int64),
        top_p=np.full(rows, 1.0 if top_p is None else float(top_p)),
        u=rng.random(rows),
    )


# decoders: the same interface over the cache graph and the no-cache graph ----------------------


class CachedDecoder:
    """Prefill + decode steps over ``decoder_kv.onnx`` (format in components/export/generator.py).

    Args:
        session: the ORT session of the cache graph.
        pad_id: the token left-padded prompts are filled with (masked out).
    """

    def __init__(self, session: Any, pad_id: int) -> None:
        self.session = session
        self.pad_id = pad_id
        inputs = session.get_inputs()
        self.past_names = [i.name for i in inputs[2:]]
        self.output_names = ["logits", *[o.name for o in session.get_outputs()[1:]]]
        shape = inputs[2].shape  # [batch, kv_heads, past, head_dim]
        self.heads, self.head_dim = int(shape[1]), int(shape[3])
        self.mask = np.zeros((0, 0), np.int64)
        self.past: list[np.ndarray] = []

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        """Logits [rows, vocab] after each prompt; prompts are left-padded to the longest."""
        rows, width = len(prompts), max(len(p) for p in prompts)
        ids = np.full((rows, width), self.pad_id, np.int64)
        # One masked zero slot of past: the graph's past axis cannot be empty (see the export).
        mask = np.zeros((rows, 1 + width), np.int64)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = prompt
            mask[i, 1 + width - len(prompt) :] = 1
        zero = np.zeros((rows, self.heads, 1, self.head_dim), np.float32)
        return self._run(ids, mask, [zero] * len(self.past_names))

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row; logits [rows, vocab] of the next position."""
        mask = np.concatenate([self.mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        return self._run(tokens.astype(np.int64)[:, None], mask, self.past)

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (finished rows leave the batch), and cache columns still in use."""
        mask = self.mask[rows]
        # A column masked in every remaining row (the prefill's zero slot, padding of the rows
        # that left) changes no attention score, and positions come from the mask's cumsum.
        first = int(np.argmax(mask.any(axis=0)))
        self.mask = mask[:, first:]
        self.past = [p[rows][:, :, first:] for p in self.past]

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]) -> np.ndarray:
        feed = {
            "input_ids": ids,
            "attention_mask": mask,
            **dict(zip(self.past_names, past, strict=True)),
        }
        logits, *self.past = self.session.run(self.output_names, feed)
        self.mask = mask
        return logits


class FullDecoder:
    """The same interface over the no-cache ``model.onnx``: each step re-runs every sequence.

    Sequences are right-padded; under causal attention the padding after a row's last token does
    not change its logits there, which is where each row is read.
    """

    def __init__(self, session: Any, pad_id: int) -> None:
        self.session = session
        self.pad_id = pad_id
        self.seqs: list[list[int]] = []

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        self.seqs = [list(p) for p in prompts]
        return self._run()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        for seq, tok in zip(self.seqs, tokens.tolist(), strict=True):
            seq.append(int(tok))
        return self._run()

    def keep(self, rows: np.ndarray) -> None:
        self.seqs = [self.seqs[i] for i in rows.tolist()]

    def _run(self) -> np.ndarray:
        lengths = np.array([len(s) for s in self.seqs])
        ids = np.full((len(self.seqs), int(lengths.max())), self.pad_id, np.int64)
        for i, seq in enumerate(self.seqs):
            ids[i, : len(seq)] = seq
        logits = self.session.run(["logits"], {"input_ids": ids})[0]
        return logits[np.arange(len(self.seqs)), lengths - 1]


# the sampling loop ------------------------------------------------------------------------------


def generate(
    decoder: CachedDecoder | FullDecoder, vocab: Vocab, jobs: list[Job]
) -> list[list[dict[str, Any]]]:
    """Sample every job's ``n`` sessions in one decode batch.

    Each job's script is what each position after bos holds: its conditions (a forced token, or
    a group to sample from), its prefix (forced), then sampled items. The leading forced part is
    the job's prompt, read by one prefill; after it, every row takes one token per decode step,
    so at step ``t`` a row is at script position ``len(prompt) - 1 + t``.

    Returns:
        Per job, ``n`` sessions ``{"country", ["month"], ["price_band"], ["category"], "items"}``
        (month, price_band and category where the vocabulary has them); items are stock codes,
        the prefix first.
    """
    size = vocab.size
    names = ["country"]
    groups = [list(vocab.countries.values())]
    if vocab.months is not None:
        names.append("month")
        groups.append(list(vocab.months.values()))
    if vocab.price_bands is not None:
        names.append("price_band")
        groups.append(list(vocab.price_bands.values()))
    if vocab.categories is not None:
        names.append("category")
        groups.append(list(vocab.categories.values()))
    group_masks = np.zeros((len(groups), size), dtype=bool)
    for g, ids in enumerate(groups):
        group_masks[g, ids] = True
    item_mask = np.zeros(size, dtype=bool)
    item_mask[vocab.first_item_id :] = True

    # Per row (rows of a job are consecutive): its script as a forced-token matrix (-1 where the
    # condition of group g is sampled, that g in group_of), its prompt, limits and options.
    per_job = [job.n for job in jobs]
    scripts, prompts = [], []
    for job in jobs:
        script = [getattr(job, name) for name in names] + [int(t) for t in job.prefix]
        n_forced = next((k for k, t in enumerate(script) if t is None), len(script))
        scripts.append(script)
        prompts.append([vocab.bos_id, *script[:n_forced]])
    width = max(len(sc) for sc in scripts) + 1
    forced_of = np.full((len(jobs), width), -1, dtype=np.int64)
    group_of = np.full((len(jobs), width), -1, dtype=np.int64)
    for j, script in enumerate(scripts):
        for k, tok in enumerate(script):
            if tok is None:
                group_of[j, k] = k  # conditions come first, in group order
            else:
                forced_of[j, k] = tok
    job_of = np.repeat(np.arange(len(jobs)), per_job)
    script_len = np.repeat([len(sc) for sc in scripts], per_job)
    start = np.repeat([len(p) - 1 for p in prompts], per_job)  # script position after prefill
    max_items = np.repeat([job.max_items for job in jobs], per_job)
    allow_eos = np.repeat([job.allow_eos for job in jobs], per_job)
    temperature = np.repeat([job.temperature for job in jobs], per_job)
    top_k = np.repeat([job.top_k or 0 for job in jobs], per_job)
    top_p = np.repeat([job.top_p or 1.0 for job in jobs], per_job)
    # Each job draws its uniforms up front from its own generator, one per row and step, so its
    # seeded sessions do not depend on what else is batched with it. A greedy job never reads
    # its draws (nor does a forced token's row), so it gets zeros without a generator.
    steps = int((script_len - start + max_items).max()) + 1
    uniforms = np.concatenate(
        [
            np.random.default_rng(job.seed).random((steps, job.n)).T
            if job.temperature > 0.0
            else np.zeros((job.n, steps))
            for job in jobs
        ]
    )

    total = int(sum(per_job))
    out = np.full((total, steps + width), -1, dtype=np.int64)  # tokens after the prompt
    used = np.zeros((total, size), dtype=bool)
    for j, job in enumerate(jobs):
        if job.prefix:
            used[np.ix_(np.flatnonzero(job_of == j), np.array(job.prefix))] = True
    drawn = np.zeros(total, dtype=np.int64)
    live = np.arange(total)  # rows the decoder holds, in its order
    logits = decoder.prefill([prompts[j] for j in job_of.tolist()])
    for t in range(steps):
        pos = start[live] + t
        in_script = pos < script_len[live]
        col = np.minimum(pos, width - 1)
        forced = np.where(in_script, forced_of[job_of[live], col], -1)
        group = np.where(in_script, group_of[job_of[live], col], -1)

        allowed = np.zeros((live.size, size), dtype=bool)
        items = ~in_script
        if items.any():
            rows = live[items]
            allowed[items] = item_mask & ~used[rows]
            # eos only once the session holds an item: an empty session is no session
            has_item = used[rows][:, vocab.first_item_id :].any(axis=1)
            allowed[items, vocab.eos_id] = has_item & allow_eos[rows]
        sampled_group = group >= 0
        if sampled_group.any():
            allowed[sampled_group] = group_masks[group[sampled_group]]
        is_forced = forced >= 0
        if is_forced.any():
            allowed[is_forced, forced[is_forced]] = True  # so the sampler sees a valid row
        picks = sample_rows(
            logits,
            allowed,
            temperature=np.where(is_forced, 0.0, temperature[live]),
            top_k=top_k[live],
            top_p=top_p[live],
            u=uniforms[live, t],
        )
        out[live, t] = picks

        # In the item phase eos ends a session, and so does reaching max_items (unfed).
        is_eos = items & (picks == vocab.eos_id)
        got_item = items & ~is_eos
        used[live[got_item], picks[got_item]] = True
        drawn[live[got_item]] += 1
        still = ~(is_eos | (got_item & (drawn[live] >= max_items[live])))
        if not still.all():
            live = live[still]
            if live.size == 0:
                break
            decoder.keep(np.flatnonzero(still))
        logits = decoder.step(picks[still])

    sessions: list[list[dict[str, Any]]] = []
    row = 0
    for j, job in enumerate(jobs):
        head = prompts[j][1:]
        per = []
        for _ in range(job.n):
            tail = [int(x) for x in out[row] if x >= 0]
            if tail and tail[-1] == vocab.eos_id:
                tail = tail[:-1]
            per.append(_session(vocab, head + tail))
            row += 1
        sessions.append(per)
    return sessions


def _session(vocab: Vocab, tokens: list[int]) -> dict[str, Any]:
    """A row's tokens after bos (conditions, prefix, items; no eos) as the wire's session."""
    at = 0
    session: dict[str, Any] = {}
    country_of = {i: c for c, i in vocab.countries.items()}
    session["country"] = country_of[tokens[at]]
    at += 1
    if vocab.months is not None:
        session["month"] = {i: m for m, i in vocab.months.items()}[tokens[at]]
        at += 1
    if vocab.price_bands is not None:
        session["price_band"] = {i: b for b, i in vocab.price_bands.items()}[tokens[at]]
        at += 1
    if vocab.categories is not None:
        session["category"] = {i: c for c, i in vocab.categories.items()}[tokens[at]]
        at += 1
    items = tokens[at:]
    # The masks make anything else impossible; checked so a bug cannot emit a special token.
    if any(not vocab.first_item_id <= t < vocab.size for t in items) or len(set(items)) != len(
        items
    ):
        raise RuntimeError(f"sampler produced a malformed session of {len(items)} tokens")
    session["items"] = [vocab.tokens[t] for t in items]
    return session


# batching of concurrent requests ---------------------------------------------------------------


class Batcher:
    """Gathers the jobs of concurrent requests into one blocking decode in the executor.

    A request waits at most ``max_wait_s`` for others (none when the queue already holds
    ``max_rows`` sessions); the batch then runs while the next one gathers.

    Args:
        run: the blocking decode, jobs -> per job its sessions.
        max_wait_s: the longest a request waits for company; 0 batches only what is queued.
        max_rows: sessions per decode batch.
    """

    def __init__(
        self,
        run: Callable[[list[Job]], list[list[dict[str, Any]]]],
        *,
        max_wait_s: float,
        max_rows: int = MAX_BATCH_ROWS,
    ) -> None:
        self.run = run
        self.max_wait_s = max_wait_s
        self.max_rows = max_rows
        self.batches = 0  # decode batches run, for the tests and the benchmark
        self._queue: collections.deque[tuple[list[Job], asyncio.Future]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def _rows(self) -> int:
        return sum(j.n for jobs, _ in self._queue for j in jobs)

    async def submit(self, jobs: list[Job]) -> list[list[dict[str, Any]]]:
        """Queue ``jobs`` (one request's) and wait for their sessions."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (a restarted server, or asyncio.run per call in a script): the
            # event and the worker of the old one cannot be awaited here.
            self._loop, self._wake, self._worker = loop, asyncio.Event(), None
            self._queue.clear()
        future: asyncio.Future = loop.create_future()
        self._queue.append((jobs, future))
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            deadline = loop.time() + self.max_wait_s
            while self._rows() < self.max_rows:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch, rows = [], 0
            while self._queue and (
                not batch or rows + sum(j.n for j in self._queue[0][0]) <= self.max_rows
            ):
                jobs, future = self._queue.popleft()
                batch.append((jobs, future))
                rows += sum(j.n for j in jobs)
            flat = [job for jobs, _ in batch for job in jobs]
            try:
                results = await loop.run_in_executor(None, self.run, flat)
            except Exception as exc:  # every request of the batch gets the same failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            at = 0
            for jobs, future in batch:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(results[at : at + len(jobs)])
                at += len(jobs)


def batch_wait_from_env() -> float:
    """``RECSYNTH_GENERATOR_BATCH_WAIT_MS`` in milliseconds (default 2; 0 turns waiting off)."""
    raw = os.environ.get(BATCH_WAIT_ENV, "").strip()
    if not raw:
        return DEFAULT_BATCH_WAIT_MS
    try:
        value = float(raw)
    except ValueError as exc:
        raise ModelLoadError(f"{BATCH_WAIT_ENV}={raw!r} is not a number of milliseconds") from exc
    if not 0.0 <= value <= 1000.0:
        raise ModelLoadError(f"{BATCH_WAIT_ENV}={raw!r} must be from 0 to 1000 ms")
    return value


# the KServe model -------------------------------------------------------------------------------


class GeneratorModel(BlockingModel):
    """KServe model over ``decoder_kv.onnx`` (or ``model.onnx``) + ``vocab.json``.

    Args:
        model_dir: ``exported/generator``.
        name: the model name on the wire.
        require_gpu: demand CUDA (``None`` reads ``RECSYNTH_REQUIRE_GPU``).
        batch_wait_ms: how long a request waits for concurrent ones to share its decode batch
            (``None`` reads ``RECSYNTH_GENERATOR_BATCH_WAIT_MS``, default 2).
        use_cache: decode over the cache graph when the export has one; False forces the
            no-cache graph (for comparisons).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        name: str = MODEL_NAME,
        require_gpu: bool | None = None,
        batch_wait_ms: float | None = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.require_gpu = require_gpu
        self.batch_wait_ms = batch_wait_ms
        self.use_cache = use_cache
        self.vocab: Vocab | None = None
        self.version = ""
        self.decoding = ""  # "kv-cache" or "full-sequence", once loaded
        self._session = None
        self._kv_session = None
        self._item_index: dict[str, int] = {}
        self._batcher: Batcher | None = None

    # load ---------------------------------------------------------------------------------

    def load(self) -> bool:
        """Open the vocabulary and the ONNX session(s); check the logits width matches.

        Raises:
            ModelLoadError: a file is missing or inconsistent, or CUDA is required but inactive.
        """
        vocab = Vocab.read(self.model_dir / "vocab.json")
        wait_ms = batch_wait_from_env() if self.batch_wait_ms is None else self.batch_wait_ms
        if not 0.0 <= wait_ms <= 1000.0:
            raise ModelLoadError(f"batch_wait_ms={wait_ms} must be from 0 to 1000")
        kv_path = self.model_dir / KV_ONNX
        if self.use_cache and kv_path.is_file():
            self._kv_session = self._open_cached(kv_path, vocab)
            self.decoding = "kv-cache"
        else:
            self._session = self._open_full(self.model_dir / MODEL_ONNX, vocab)
            self.decoding = "full-sequence"
        self._item_index = {
            tok: i for i, tok in enumerate(vocab.tokens) if i >= vocab.first_item_id
        }
        self.vocab = vocab
        self.version = model_version(self.model_dir)
        self._batcher = Batcher(self.decode, max_wait_s=wait_ms / 1000.0)
        self.ready = True
        logger.info(
            "generator %s ready (%s decoding, batch wait %.1f ms): %d tokens (%d items, "
            "%d countries, months %s, price bands %s, categories %s), max_length %d",
            self.version,
            self.decoding,
            wait_ms,
            vocab.size,
            vocab.n_items,
            len(vocab.countries),
            "yes" if vocab.months else "no",
            len(vocab.price_bands) if vocab.price_bands else "no",
            len(vocab.categories) if vocab.categories else "no",
            vocab.max_length,
        )
        return self.ready

    def _open_full(self, path: Path, vocab: Vocab) -> Any:
        session = create_session(path, require_gpu=self.require_gpu)
        check_io(
            session,
            inputs={"input_ids": "tensor(int64)"},
            outputs={"logits": "tensor(float)"},
            model_path=path,
        )
        probe = session.run(["logits"], {"input_ids": np.array([[vocab.bos_id]], np.int64)})[0]
        if probe.shape != (1, 1, vocab.size):
            raise ModelLoadError(
                f"{path} returns logits of shape {probe.shape} for one token, but "
                f"vocab.json has {vocab.size} tokens (expected (1, 1, {vocab.size}))"
            )
        return session

    def _open_cached(self, path: Path, vocab: Vocab) -> Any:
        session = create_session(path, require_gpu=self.require_gpu)
        inputs = session.get_inputs()
        names = [i.name for i in inputs]
        pasts = names[2:]
        if names[:2] != ["input_ids", "attention_mask"] or not pasts or len(pasts) % 2:
            raise ModelLoadError(
                f"{path} has inputs {names}; expected input_ids, attention_mask and a key and a "
                "value past per layer"
            )
        check_io(
            session,
            inputs={n: "tensor(int64)" for n in names[:2]} | {n: "tensor(float)" for n in pasts},
            outputs={"logits": "tensor(float)"},
            model_path=path,
        )
        shape = inputs[2].shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in (shape[1], shape[3])):
            raise ModelLoadError(f"{path}: past shape {shape} is not [batch, heads, past, dim]")
        probe = CachedDecoder(session, vocab.pad_id).prefill([[vocab.bos_id]])
        if probe.shape != (1, vocab.size):
            raise ModelLoadError(
                f"{path} returns logits of shape {probe.shape} for one token, but "
                f"vocab.json has {vocab.size} tokens (expected (1, {vocab.size}))"
            )
        return session

    def decoder(self) -> CachedDecoder | FullDecoder:
        """A fresh decoder over the loaded graph (one per decode batch: it holds the cache)."""
        if self._kv_session is not None:
            return CachedDecoder(self._kv_session, self.vocab.pad_id)
        return FullDecoder(self._session, self.vocab.pad_id)

    def decode(self, jobs: list[Job]) -> list[list[dict[str, Any]]]:
        """Sample every job's sessions in one blocking decode batch."""
        results = generate(self.decoder(), self.vocab, jobs)
        logger.info(
            "generate: %d jobs, %d sessions, %d items sampled",
            len(jobs),
            sum(len(r) for r in results),
            sum(len(s["items"]) for r in results for s in r),
        )
        return results

    # preprocess ---------------------------------------------------------------------------

    def _condition(
        self, inst: dict[str, Any], key: str, where: str, group: dict[int, int] | None, what: str
    ) -> int | None:
        """The token id of an optional integer condition (month, price_band); None to sample."""
        if key not in inst:
            return None
        if group is None:
            raise BadRequest(
                f"this generator was trained without {what} conditioning",
                field=f"{where}.{key}",
                value=inst[key],
                has_value=True,
                allowed=f"no {key} (omit the field)",
            )
        keys = sorted(group)
        value = get_int(inst, key, where, lo=keys[0], hi=keys[-1])
        if value not in group:
            raise BadRequest(
                f"unknown {what}",
                field=f"{where}.{key}",
                value=value,
                allowed=", ".join(str(k) for k in keys),
            )
        return group[value]

    def _job(self, inst: dict[str, Any], where: str) -> Job:
        vocab = self.vocab
        reject_unknown_keys(inst, INSTANCE_KEYS, where)
        # The frame (bos, conditions, eos) and the items fill max_length, as in the generator's
        # training records; the prefix leaves room for one sampled item.
        max_total = vocab.max_session_items
        prefix = get_str_list(
            inst, "prefix", where, max_len=max_total - 1, allow_empty=True, default=[]
        )
        prefix_ids: list[int] = []
        for j, code in enumerate(prefix):
            if code not in self._item_index:
                raise BadRequest(
                    "unknown item id",
                    field=f"{where}.prefix[{j}]",
                    value=code,
                    allowed="a stock code in the generator's vocabulary",
                )
            if self._item_index[code] in prefix_ids:
                raise BadRequest(
                    "repeats an earlier item (a session lists each item once)",
                    field=f"{where}.prefix[{j}]",
                    value=code,
                    allowed="distinct stock codes",
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
        category = self._category(inst, where)
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
            country=None if country is None else vocab.countries[country],
            month=self._condition(inst, "month", where, vocab.months, "month"),
            price_band=self._condition(inst, "price_band", where, vocab.price_bands, "price band"),
            category=category,
        )

    def _category(self, inst: dict[str, Any], where: str) -> int | None:
        """The token id of the optional ``category`` (a name); None to sample."""
        if "category" not in inst:
            return None
        group = self.vocab.categories
        if group is None:
            raise BadRequest(
                "this generator was trained without category conditioning",
                field=f"{where}.category",
                value=inst["category"],
                has_value=True,
                allowed="no category (omit the field)",
            )
        name = inst["category"]
        if not isinstance(name, str) or name not in group:
            raise BadRequest(
                "unknown category" if isinstance(name, str) else "must be a category name (string)",
                field=f"{where}.category",
                value=name,
                has_value=True,
                allowed=", ".join(sorted(group)),
            )
        return group[name]

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

    def _outputs(self) -> tuple[str, ...]:
        """The V2 outputs this model produces (month, price_band, category where it has them)."""
        vocab = self.vocab
        skip = {"month"} if vocab is None or vocab.months is None else set()
        if vocab is None or vocab.price_bands is None:
            skip.add("price_band")
        if vocab is None or vocab.categories is None:
            skip.add("category")
        return tuple(o for o in V2_OUTPUTS if o not in skip)

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
        return {"jobs": jobs, **self.request_context(payload, self._outputs())}

    # predict ------------------------------------------------------------------------------

    async def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict:
        """Decode the request's jobs in a batch shared with concurrent requests."""
        if self._batcher is None:
            raise NotReady(f"model {self.name} is not loaded")
        results = await self._batcher.submit(payload["jobs"])
        return {**payload, "results": results}

    def run_batch(self, payload: dict[str, Any]) -> dict:
        """The blocking body of one request alone, on the preprocessed payload."""
        return {**payload, "results": self.decode(payload["jobs"])}

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
                    {"sessions": sessions, "model_version": self.version, "variant": self.variant}
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
        for key in ("month", "price_band"):
            if key in self._outputs():
                values = np.array([s[key] for s in sessions], dtype=np.int32)
                outputs.append(InferOutput(key, [n], "INT32", data=values))
        if "category" in self._outputs():
            outputs.append(
                InferOutput("category", [n], "BYTES", data=[s["category"] for s in sessions])
            )
        return self.v2_response(result, outputs)

    # metadata (GET /v2/models/generator) --------------------------------------------------

    def get_input_types(self) -> list[dict]:
        """The V2 inputs, for the model metadata endpoint."""
        shapes = {"prefix": [-1]}
        skip = set(V2_OUTPUTS) - set(self._outputs())
        return [
            {"name": name, "datatype": spec.datatype, "shape": shapes.get(name, [1])}
            for name, spec in V2_INPUTS.items()
            if name not in skip
        ]

    def get_output_types(self) -> list[dict]:
        """The V2 outputs, for the model metadata endpoint."""
        types = {
            "items": ("BYTES", [-1, -1]),
            "length": ("INT32", [-1]),
            "country": ("BYTES", [-1]),
            "month": ("INT32", [-1]),
            "price_band": ("INT32", [-1]),
            "category": ("BYTES", [-1]),
        }
        return [
            {"name": name, "datatype": types[name][0], "shape": types[name][1]}
            for name in self._outputs()
        ]
