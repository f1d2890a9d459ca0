"""Export the synthetic-session generator to ONNX, twice, each graph checked against torch.

``model.onnx`` (the contract graph) takes ``input_ids`` int64 [batch, seq] and returns ``logits``
float32 [batch, seq, vocab]: the next-token logits at every position, with causal attention and no
key/value cache, so a client decodes by re-running the growing prefix. Rows of different lengths
are right-padded with ``pad_id``; under causal attention padding after a row's last real token
does not change that row's earlier logits, so a client reads each row at its own last real
position.

``decoder_kv.onnx`` is the same network with an explicit key/value cache, for serving. One graph
is both the prefill and the decode step, because its ``seq`` axis is dynamic:

- inputs: ``input_ids`` int64 [batch, seq], ``attention_mask`` int64 [batch, past + seq] (1 for a
  real token, 0 for padding), and per layer ``past_key_values.{i}.key`` / ``.value`` float32
  [batch, kv_heads, past, head_dim];
- outputs: ``logits`` float32 [batch, vocab] (the last position only: what sampling reads) and
  ``present.{i}.key`` / ``.value`` [batch, kv_heads, past + seq, head_dim].

Prefill: left-pad the prompts, pass a past of one zero slot whose mask is 0 (torch.export cannot
trace a zero-length axis, and a masked slot changes nothing), and ``seq`` = the prompt length.
Decode: ``seq`` = 1, the presents as the next pasts, the mask grown by one column. Positions are
``cumsum(attention_mask) - 1`` per row, so left padding and finished rows fed with a masked pad
shift nothing. Both graphs hold their weights inside the file (no external .data): a server loads
each from the PVC as one file, at the price of the weights being stored twice.

Before anything is written, ONNX Runtime's output is compared with torch's on token sequences of
the generator's own format for every configured batch size and length: the full graph against
torch, and the cache graph (prefill then teacher-forced decode steps) against torch's no-cache
logits at every real position.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common.errors import ConfigError, ExportError, InputError
from components.export.config import ExportConfig
from components.export.onnx_io import checked_signature, export_single_file, parity_cases
from components.generate.model import load_model
from components.generate.sample import sample_sequences
from components.generate.tokenizer import PAD_ID, TOKENIZER_FILE, VOCAB_FILE, ItemVocab

logger = logging.getLogger(__name__)

MODEL_ONNX = "model.onnx"
KV_ONNX = "decoder_kv.onnx"
METADATA = "metadata.json"
INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"
MASK_NAME = "attention_mask"
PARITY_SEED = 0


def past_names(n_layers: int) -> list[str]:
    """Input names of the cache graph's past keys and values, layer by layer."""
    return [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    """Output names of the cache graph's updated keys and values, layer by layer."""
    return [f"present.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]


class LogitsOnly(torch.nn.Module):
    """``input_ids -> logits`` with per-row positions and no cache: the served signature."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0).repeat(batch, 1)
        return self.lm(input_ids=input_ids, position_ids=positions, use_cache=False).logits


class CachedStep(torch.nn.Module):
    """``(input_ids, attention_mask, pasts) -> (last logits, presents)``: the cache graph.

    ``pasts`` is a flat tuple (key, value per layer). Positions come from the mask, so a row that
    is left-padded, or fed a masked pad after it finished, keeps its own positions.
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.n_layers = int(lm.config.num_hidden_layers)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pasts: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        length = input_ids.shape[1]
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -length:]
        cache = DynamicCache(
            ddp_cache_data=[(pasts[2 * i], pasts[2 * i + 1]) for i in range(self.n_layers)],
            config=self.lm.config,
        )
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        presents: list[torch.Tensor] = []
        for layer in out.cache.layers:
            presents += [layer.keys, layer.values]
        return (out.logits[:, -1, :], *presents)


def cache_shape(lm: torch.nn.Module) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of the model's cache, read off one torch forward."""
    with torch.inference_mode():
        out = lm(input_ids=torch.tensor([[1]]), use_cache=True)
    layers = out.cache.layers
    _, heads, _, head_dim = layers[0].keys.shape
    return len(layers), int(heads), int(head_dim)


def empty_past(batch: int, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """The prefill's past: one zero slot per layer (its mask column is 0)."""
    n_layers, heads, head_dim = shape
    return [np.zeros((batch, heads, 1, head_dim), np.float32) for _ in range(2 * n_layers)]


def parity_inputs(records: list[list[int]], batch_size: int, length: int) -> np.ndarray:
    """A right-padded ``[batch_size, length]`` batch cut from token ``records``.

    Rows cycle through the records; every other row is cut shorter than ``length`` (when it can
    be) so the padding path is exercised as well.
    """
    out = np.full((batch_size, length), PAD_ID, dtype=np.int64)
    for row in range(batch_size):
        rec = records[row % len(records)][:length]
        keep = len(rec) if row % 2 == 0 else max(1, min(len(rec), length - 1 - row // 2))
        out[row, :keep] = rec[:keep]
    return out


def _check_graph(path: Path, vocab_size: int) -> dict[str, Any]:
    """The graph's signature, after checking it is the promised ``[batch, seq, vocab]``."""
    signature = checked_signature(path, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    out_dims = signature["outputs"][0]["shape"]
    if len(out_dims) != 3 or out_dims[2] != vocab_size:
        raise ExportError(f"output shape {out_dims}; expected [batch, seq, {vocab_size}]")
    return signature


def check_parity(
    wrapper: LogitsOnly,
    onnx_path: Path,
    records: list[list[int]],
    *,
    batch_sizes: tuple[int, ...],
    lengths: tuple[int, ...],
    max_length: int,
    atol: float,
) -> list[dict[str, Any]]:
    """Max |ORT - torch| per (batch size, length); raises ExportError above ``atol``.

    Lengths above ``max_length`` are capped at it: the model has no positions beyond.
    """
    shapes = [
        (batch_size, length)
        for length in sorted({min(int(n), max_length) for n in lengths})
        for batch_size in sorted({int(b) for b in batch_sizes})
    ]
    return parity_cases(
        wrapper,
        onnx_path,
        lambda batch_size, length: parity_inputs(records, batch_size, length),
        shapes,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        length_key="seq",
        atol=atol,
    )


def export_cached(lm: torch.nn.Module, path: Path, *, opset: int) -> dict[str, Any]:
    """Export :class:`CachedStep` of ``lm`` to ``path`` (weights inside) and check its signature.

    Batch, seq, past and the mask's length are dynamic axes.

    Returns:
        ``inputs``/``outputs`` (name, dtype, shape) and the cache geometry.

    Raises:
        ExportError: the exporter fails, writes external weights, or the graph's inputs and
            outputs are not the promised ones.
    """
    import onnx

    shape = cache_shape(lm)
    n_layers, heads, head_dim = shape
    step = CachedStep(lm).eval()
    batch, length, total = 2, 3, 5  # a past of 2 and 3 new tokens
    example = (
        torch.full((batch, length), 6, dtype=torch.long),
        torch.ones((batch, total), dtype=torch.long),
        tuple(torch.zeros(batch, heads, total - length, head_dim) for _ in range(2 * n_layers)),
    )
    dims = {
        "batch": torch.export.Dim("batch", min=1),
        "seq": torch.export.Dim("seq", min=1),
        "total": torch.export.Dim("total", min=2),
        "past": torch.export.Dim("past", min=1),
    }
    dynamic = (
        {0: dims["batch"], 1: dims["seq"]},
        {0: dims["batch"], 1: dims["total"]},
        tuple({0: dims["batch"], 2: dims["past"]} for _ in range(2 * n_layers)),
    )
    try:
        program = torch.onnx.export(
            step,
            example,
            dynamo=True,
            external_data=False,
            verbose=False,  # the exporter otherwise prints its progress to stdout
            input_names=[INPUT_NAME, MASK_NAME, *past_names(n_layers)],
            output_names=[OUTPUT_NAME, *present_names(n_layers)],
            opset_version=opset,
            dynamic_shapes=dynamic,
        )
        program.save(str(path), external_data=False)
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export failed for the generator's cache graph: {exc}"
        ) from exc
    leftovers = sorted(p.name for p in path.parent.iterdir() if p.suffix == ".data")
    if leftovers:
        raise ExportError(f"export wrote external weight files {leftovers}; expected one .onnx")

    model = onnx.load(str(path))
    onnx.checker.check_model(model)

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
            dims_ = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            out.append({"name": v.name, "dtype": str(np.dtype(dtype)), "shape": dims_})
        return out

    inputs, outputs = describe(model.graph.input), describe(model.graph.output)
    want_in = [INPUT_NAME, MASK_NAME, *past_names(n_layers)]
    want_out = [OUTPUT_NAME, *present_names(n_layers)]
    if [i["name"] for i in inputs] != want_in or [o["name"] for o in outputs] != want_out:
        raise ExportError(
            f"cache graph has inputs {[i['name'] for i in inputs]} and outputs "
            f"{[o['name'] for o in outputs]}; expected {want_in} and {want_out}"
        )
    if outputs[0]["dtype"] != "float32" or len(outputs[0]["shape"]) != 2:
        raise ExportError(f"cache graph logits are {outputs[0]}; expected float32 [batch, vocab]")
    return {
        "inputs": inputs,
        "outputs": outputs,
        "n_layers": n_layers,
        "kv_heads": heads,
        "head_dim": head_dim,
    }


def check_cached_parity(
    wrapper: LogitsOnly,
    kv_path: Path,
    records: list[list[int]],
    *,
    shape: tuple[int, int, int],
    batch_sizes: tuple[int, ...],
    lengths: tuple[int, ...],
    max_length: int,
    atol: float,
) -> list[dict[str, Any]]:
    """Max |cache graph - torch without cache| per (batch size, length), at every real position.

    Each row's first half (at least one token) is the prefill, left-padded to the longest
    prompt of the batch; the rest is fed one token per decode step, teacher-forced. Rows whose
    record is shorter are fed a masked pad once they run out, as a server feeds finished rows.
    The reference is torch's no-cache forward of the right-padded batch.

    Raises:
        ExportError: a case differs by more than ``atol``, or the graph's shapes are wrong.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(kv_path), providers=["CPUExecutionProvider"])
    n_layers = shape[0]
    names = past_names(n_layers)
    cases = []
    for length in sorted({min(int(n), max_length) for n in lengths}):
        for batch_size in sorted({int(b) for b in batch_sizes}):
            rows = parity_inputs(records, batch_size, length)
            real = [[int(t) for t in row if t != PAD_ID] or [int(row[0])] for row in rows]
            with torch.inference_mode():
                # right padding leaves each row's real positions as they are alone (causal)
                want = wrapper(torch.from_numpy(rows)).float().numpy()
            prompt_len = [max(1, len(r) // 2) for r in real]
            width = max(prompt_len)
            ids = np.full((batch_size, width), PAD_ID, np.int64)
            mask = np.zeros((batch_size, 1 + width), np.int64)
            for i, (r, p) in enumerate(zip(real, prompt_len, strict=True)):
                ids[i, width - p :] = r[:p]
                mask[i, 1 + width - p :] = 1
            feed = {
                INPUT_NAME: ids,
                MASK_NAME: mask,
                **dict(zip(names, empty_past(batch_size, shape), strict=True)),
            }
            diff = 0.0
            step = 0
            while True:
                logits, *presents = session.run(None, feed)
                if logits.shape != (batch_size, want[0].shape[-1]):
                    raise ExportError(
                        f"cache graph returned logits {logits.shape} for batch {batch_size}"
                    )
                for i, r in enumerate(real):
                    pos = prompt_len[i] - 1 + step
                    if pos < len(r):
                        diff = max(diff, float(np.max(np.abs(logits[i] - want[i][pos]))))
                step += 1
                nxt = [prompt_len[i] - 1 + step for i in range(batch_size)]
                live = np.array([n < len(r) for n, r in zip(nxt, real, strict=True)])
                if not live.any():
                    break
                tok = np.array(
                    [r[n] if ok else PAD_ID for r, n, ok in zip(real, nxt, live, strict=True)],
                    np.int64,
                )
                mask = np.concatenate([mask, live[:, None].astype(np.int64)], axis=1)
                feed = {
                    INPUT_NAME: tok[:, None],
                    MASK_NAME: mask,
                    **dict(zip(names, presents, strict=True)),
                }
            cases.append({"batch_size": batch_size, "seq": length, "max_abs_diff": diff})
    failed = [c for c in cases if not c["max_abs_diff"] <= atol]
    if failed:
        raise ExportError(
            f"the cache graph and torch disagree beyond parity_atol={atol}: "
            + ", ".join(
                f"batch {c['batch_size']} x seq {c['seq']}: {c['max_abs_diff']:.3g}" for c in failed
            )
        )
    return cases


def export_generator(
    generator_dir: Path,
    out_dir: Path,
    *,
    cfg: ExportConfig,
    real_sequences: list[list[str]] | None = None,
) -> dict[str, Any]:
    """Write ``model.onnx``, ``decoder_kv.onnx``, ``vocab.json``, ``tokenizer.json``, metadata.

    Parity is checked on ``real_sequences`` (stock codes of real training sequences) when given:
    the training set carries no customer's country, month or price band, so each record gets the
    vocabulary's condition tokens in turn. Without them (the exporter run alone) it checks
    sequences sampled from the model itself, in the same format.

    ``out_dir`` is created (it sits inside the export step's atomic directory, which is what
    keeps a failed export from leaving files behind).

    Returns:
        The metadata: graph signature, opset, vocabulary size, max_length, the parity figures
        (``max_abs_diff`` per batch size and length, and their maximum) and, under ``kv_cache``,
        the cache graph's file, signature, geometry and its own parity figures.

    Raises:
        InputError: ``generator_dir`` lacks the model or its vocabulary.
        ExportError: an export fails, a graph is not the promised one, or ORT and torch
            disagree beyond ``cfg.parity_atol``.
    """
    from components.common.artifacts import write_json

    generator_dir, out_dir = Path(generator_dir), Path(out_dir)
    if not cfg.parity_batch_sizes or not cfg.parity_lengths:
        raise ConfigError(
            f"export.parity_batch_sizes={cfg.parity_batch_sizes} and export.parity_lengths="
            f"{cfg.parity_lengths} must both be non-empty: the export is only written once checked"
        )
    bad = [v for v in (*cfg.parity_batch_sizes, *cfg.parity_lengths) if v < 1]
    if bad:
        raise ConfigError(f"export parity batch sizes and lengths must be >= 1, got {bad}")
    if not generator_dir.is_dir():
        raise InputError("generator model directory is missing", file=str(generator_dir))
    vocab = ItemVocab.load(generator_dir)
    lm = load_model(generator_dir).float()
    if lm.config.vocab_size != len(vocab):
        raise InputError(
            f"model vocab_size={lm.config.vocab_size} disagrees with vocab.json ({len(vocab)})",
            file=str(generator_dir / VOCAB_FILE),
        )
    wrapper = LogitsOnly(lm).eval()

    records = _condition_records(vocab, real_sequences or [])
    parity_source = "real training sequences"
    if not records:
        records = _sampled_records(lm, vocab, max(cfg.parity_batch_sizes))
        parity_source = "sequences sampled from the model"

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / MODEL_ONNX
    example = torch.from_numpy(parity_inputs(records, 2, min(8, vocab.max_length)))
    export_single_file(
        wrapper,
        onnx_path,
        example=example,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        axes=("batch", "seq"),
        opset=cfg.opset,
        what="generator",
    )
    signature = _check_graph(onnx_path, len(vocab))
    cases = check_parity(
        wrapper,
        onnx_path,
        records,
        batch_sizes=cfg.parity_batch_sizes,
        lengths=cfg.parity_lengths,
        max_length=vocab.max_length,
        atol=cfg.parity_atol,
    )

    # The serving graph with a key/value cache, checked against torch without a cache.
    kv_path = out_dir / KV_ONNX
    kv = export_cached(lm, kv_path, opset=cfg.opset)
    kv_cases = check_cached_parity(
        wrapper,
        kv_path,
        records,
        shape=(kv["n_layers"], kv["kv_heads"], kv["head_dim"]),
        batch_sizes=cfg.parity_batch_sizes,
        lengths=cfg.parity_lengths,
        max_length=vocab.max_length,
        atol=cfg.parity_atol,
    )

    shutil.copyfile(generator_dir / VOCAB_FILE, out_dir / VOCAB_FILE)
    if (generator_dir / TOKENIZER_FILE).is_file():
        shutil.copyfile(generator_dir / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    else:
        vocab.to_tokenizers().save(str(out_dir / TOKENIZER_FILE))
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    kv_digest = hashlib.sha256(kv_path.read_bytes()).hexdigest()
    metadata = {
        "model": "generator",
        # The version each served prediction carries: the content hash of both graphs.
        "model_version": hashlib.sha256(f"{digest}:{kv_digest}".encode()).hexdigest()[:12],
        "onnx_sha256": digest,
        "architecture": lm.config.model_type,
        **signature,
        "vocab_size": len(vocab),
        "max_length": vocab.max_length,
        "pad_id": PAD_ID,
        "padding": "right; read each row's logits at its last real token",
        "parity": {
            "inputs": parity_source,
            "atol": cfg.parity_atol,
            "cases": cases,
            "max_abs_diff": max(c["max_abs_diff"] for c in cases),
        },
        "onnx_bytes": onnx_path.stat().st_size,
        "kv_cache": {
            "file": KV_ONNX,
            "onnx_sha256": kv_digest,
            "onnx_bytes": kv_path.stat().st_size,
            **kv,
            "past_axis": 2,
            "usage": (
                "prefill: left-padded prompts, attention_mask [batch, 1 + seq] whose first "
                "column is 0, pasts of one zero slot; decode: seq 1, presents as the next pasts, "
                "attention_mask grown by one column (0 for a finished row)"
            ),
            "parity": {
                "inputs": parity_source,
                "reference": "torch without cache, every real position",
                "atol": cfg.parity_atol,
                "cases": kv_cases,
                "max_abs_diff": max(c["max_abs_diff"] for c in kv_cases),
            },
        },
    }
    write_json(out_dir / METADATA, metadata)
    logger.info(
        "exported generator: vocab %d, max_length %d, opset %d, parity max |diff| %.2e over %d "
        "shapes, cache graph %.2e",
        len(vocab),
        vocab.max_length,
        signature["opset"],
        metadata["parity"]["max_abs_diff"],
        len(cases),
        metadata["kv_cache"]["parity"]["max_abs_diff"],
    )
    return metadata


def _condition_records(vocab: ItemVocab, sequences: list[list[str]]) -> list[list[int]]:
    """Token records of ``sequences``, cycling through countries, months, bands and categories."""
    countries = sorted(vocab.countries)
    months = sorted(int(m) for m in (getattr(vocab, "months", None) or {}))
    bands = sorted(int(b) for b in (getattr(vocab, "price_bands", None) or {}))
    categories = sorted(getattr(vocab, "categories", None) or {})
    records = []
    for i, items in enumerate(sequences):
        conditions = {}
        if months:
            conditions["month"] = months[i % len(months)]
        if bands:
            conditions["price_band"] = bands[i % len(bands)]
        if categories:
            conditions["category"] = categories[i % len(categories)]
        records.append(vocab.encode(countries[i % len(countries)], items, **conditions))
    # A record without an item ([bos, conditions..., eos]) checks nothing the others do not.
    frame = 3 + bool(months) + bool(bands) + bool(categories)
    return [r for r in records if len(r) > frame]


def _sampled_records(lm: torch.nn.Module, vocab: ItemVocab, n: int) -> list[list[int]]:
    """Records of sequences sampled from the model (the exporter run without real sequences)."""
    sessions = sample_sequences(lm, vocab, n, seed=PARITY_SEED)
    items = [s[1] if isinstance(s, tuple) else s.items for s in sessions]
    return _condition_records(vocab, items)
