"""Export the synthetic-session generator to one self-contained ONNX file, checked against torch.

The graph takes ``input_ids`` int64 [batch, seq] and returns ``logits`` float32
[batch, seq, vocab]: the next-token logits at every position, with causal attention and no key/
value cache, so a client decodes by re-running the growing prefix. Rows of different lengths are
right-padded with ``pad_id``; under causal attention padding after a row's last real token does not
change that row's earlier logits, so a client reads each row at its own last real position. The
weights live inside the .onnx file (no external .data).

Before anything is written, ONNX Runtime's output is compared with torch's on token sequences of
the generator's own format (``[bos, country, items..., eos]``) for every configured batch size and
length.
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
METADATA = "metadata.json"
INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"
PARITY_SEED = 0


class LogitsOnly(torch.nn.Module):
    """``input_ids -> logits`` with per-row positions and no cache: the served signature."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0).repeat(batch, 1)
        return self.lm(input_ids=input_ids, position_ids=positions, use_cache=False).logits


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


def export_generator(
    generator_dir: Path,
    out_dir: Path,
    *,
    cfg: ExportConfig,
    real_sequences: list[list[str]] | None = None,
) -> dict[str, Any]:
    """Write ``model.onnx``, ``vocab.json``, ``tokenizer.json`` and ``metadata.json``.

    Parity is checked on ``real_sequences`` (stock codes of real training sequences) when given:
    the training set carries no customer's country, so each record gets the vocabulary's country
    tokens in turn. Without them (the exporter run alone) it checks sequences sampled from the
    model itself, in the same ``[bos, country, items..., eos]`` format.

    ``out_dir`` is created (it sits inside the export step's atomic directory, which is what
    keeps a failed export from leaving files behind).

    Returns:
        The metadata: graph signature, opset, vocabulary size, max_length and the parity figures
        (``max_abs_diff`` per batch size and length, and their maximum).

    Raises:
        InputError: ``generator_dir`` lacks the model or its vocabulary.
        ExportError: the export fails, the graph is not the promised one, or ORT and torch
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

    countries = sorted(vocab.countries)
    records = [
        vocab.encode(countries[i % len(countries)], items)
        for i, items in enumerate(real_sequences or [])
    ]
    records = [r for r in records if len(r) > 3]  # [bos, country, eos] holds no item
    parity_source = "real training sequences"
    if not records:
        sessions = sample_sequences(lm, vocab, max(cfg.parity_batch_sizes), seed=PARITY_SEED)
        records = [vocab.encode(country, items) for country, items in sessions]
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

    shutil.copyfile(generator_dir / VOCAB_FILE, out_dir / VOCAB_FILE)
    if (generator_dir / TOKENIZER_FILE).is_file():
        shutil.copyfile(generator_dir / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    else:
        vocab.to_tokenizers().save(str(out_dir / TOKENIZER_FILE))
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    metadata = {
        "model": "generator",
        # The version each served prediction carries: the graph's content hash.
        "model_version": digest[:12],
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
    }
    write_json(out_dir / METADATA, metadata)
    logger.info(
        "exported generator: vocab %d, max_length %d, opset %d, parity max |diff| %.2e over %d "
        "shapes",
        len(vocab),
        vocab.max_length,
        signature["opset"],
        metadata["parity"]["max_abs_diff"],
        len(cases),
    )
    return metadata
