"""The generate step: train the DP generator on real sequences, then sample synthetic sessions.

``run`` reads ``cleaned/``, keeps only the training part of each customer's sequence
(:func:`components.common.splits.leave_last_out`, so held-out items never reach the generator),
trains a causal LM with DP-SGD, saves it with its vocabulary and privacy record into
``generator_model/`` and writes the sampled sessions into ``synthetic/``. Both outputs go through
``atomic_dir``: a failure anywhere leaves neither behind.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from components.common import artifacts
from components.common.artifacts import StepTimer, atomic_dir, read_parquet, write_json
from components.common.errors import InputError
from components.common.splits import leave_last_out
from components.generate.config import GenerateConfig
from components.generate.model import build_model, load_model
from components.generate.sample import sample_sequences
from components.generate.tokenizer import FRAME_TOKENS, ItemVocab
from components.generate.train import train_generator

logger = logging.getLogger(__name__)

# Decoding runs many small matmuls (one token per row per step): a second intra-op thread gains
# little there, and on a busy machine a contended one made it ~7x slower (measured). Training,
# with its large batched matmuls, keeps torch's default unless cfg.num_threads says otherwise.
SAMPLE_THREADS = 1

SYNTHETIC_SCHEMA = pa.schema(
    [("synthetic_id", pa.string()), ("country", pa.string()), ("items", pa.list_(pa.string()))]
)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: leave torch's setting)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_sequences(cleaned_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The customer sequences and the catalogue's stock codes from ``cleaned/``.

    Raises:
        InputError: a missing file or column, no customers, a duplicate customer id or a
            missing country.
    """
    path = cleaned_dir / artifacts.SEQUENCES
    sequences = read_parquet(path, ["customer_id", "country", "items"])
    catalogue = read_parquet(cleaned_dir / artifacts.ITEMS, ["item_id"])
    if sequences.empty:
        raise InputError("no customer sequences to train the generator on", file=str(path))
    duplicated = sequences["customer_id"].duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise InputError(
            f"customer_id {sequences['customer_id'].iloc[row]!r} has more than one sequence",
            file=str(path),
            column="customer_id",
            row=row,
        )
    missing = sequences["country"].isna()
    if missing.any():
        row = int(missing.to_numpy().nonzero()[0][0])
        raise InputError("country is missing", file=str(path), column="country", row=row)
    return sequences[["customer_id", "country", "items"]], catalogue["item_id"].astype(str).tolist()


def customer_records(train_part: pd.DataFrame, vocab: ItemVocab) -> list[list[int]]:
    """One token record per customer of ``train_part`` (the training parts of the split).

    Each record is ``[bos, country, items..., eos]`` of at most ``vocab.max_length`` tokens. A
    customer whose training items all lie outside the catalogue has nothing to learn from and is
    left out.
    """
    records = [
        vocab.encode(country, list(items))
        for country, items in zip(train_part["country"], train_part["items"], strict=True)
    ]
    return [rec for rec in records if len(rec) > FRAME_TOKENS]


def write_synthetic(path: Path, sessions: list[tuple[str, list[str]]]) -> None:
    """Write ``synthetic_sessions.parquet`` with ids ``syn-000001``, ``syn-000002``, ..."""
    table = pa.table(
        {
            "synthetic_id": [f"syn-{i + 1:06d}" for i in range(len(sessions))],
            "country": [country for country, _ in sessions],
            "items": [items for _, items in sessions],
        },
        schema=SYNTHETIC_SCHEMA,
    )
    pq.write_table(table, path)


def run(
    cfg: GenerateConfig,
    cleaned_dir: Path,
    model_dir: Path,
    synthetic_dir: Path,
    *,
    seed: int,
) -> dict[str, Any]:
    """Train the generator on the training parts of ``cleaned_dir`` and sample from it.

    Args:
        cfg: the generate section of the run config.
        cleaned_dir: ingest's output (``sequences.parquet``, ``items.parquet``).
        model_dir: receives ``generator_model/``: the transformers model (``save_pretrained``),
            ``vocab.json``, ``tokenizer.json``, ``privacy.json`` and ``step.json``.
        synthetic_dir: receives ``synthetic_sessions.parquet`` and ``step.json``.
        seed: seeds Poisson sampling, DP noise, initialisation and sampling.

    Returns:
        A JSON-able summary: epsilon, delta, steps, noise multiplier, customers, synthetic
        sequences, the final training loss and wall times.
    """
    timer = StepTimer("generate")
    cleaned_dir, model_dir, synthetic_dir = Path(cleaned_dir), Path(model_dir), Path(synthetic_dir)

    # Training parts only: the last two items of an evaluated customer are never seen here.
    sequences, catalogue = read_sequences(cleaned_dir)
    train_part = leave_last_out(sequences).train
    vocab = ItemVocab.build(catalogue, train_part["country"], cfg.max_length)
    records = customer_records(train_part, vocab)
    if not records:
        raise InputError(
            "no customer has a training item in the catalogue",
            file=str(cleaned_dir / artifacts.SEQUENCES),
            column="items",
        )
    logger.info(
        "generator data: %d customers (%d dropped without catalogue items), %d countries, "
        "%d items, vocab %d, max_length %d",
        len(records),
        len(train_part) - len(records),
        len(vocab.countries),
        vocab.n_items,
        len(vocab),
        cfg.max_length,
    )

    torch.manual_seed(seed)  # the initial weights too
    model = build_model(cfg.architecture, cfg.size, len(vocab), cfg.max_length)
    with (
        _torch_threads(cfg.num_threads),
        atomic_dir(model_dir) as model_tmp,
        atomic_dir(synthetic_dir) as synthetic_tmp,
    ):
        train_started = time.perf_counter()
        result = train_generator(model, records, cfg, seed=seed)
        train_wall = time.perf_counter() - train_started
        model.save_pretrained(model_tmp)
        vocab.save(model_tmp)
        write_json(model_tmp / artifacts.PRIVACY, result.privacy.model_dump(mode="json"))

        # Sample from the saved weights, so the sessions come from exactly what is shipped.
        sample_started = time.perf_counter()
        with _torch_threads(cfg.num_threads or SAMPLE_THREADS):
            sessions = sample_sequences(
                load_model(model_tmp),
                vocab,
                cfg.n_synthetic,
                seed=seed,
                temperature=cfg.temperature,
                batch_size=cfg.sample_batch_size,
                no_repeat_items=cfg.no_repeat_items,
            )
        sample_wall = time.perf_counter() - sample_started
        write_synthetic(synthetic_tmp / artifacts.SYNTHETIC_SESSIONS, sessions)

        lengths = [len(items) for _, items in sessions]
        record = result.privacy
        summary = {
            "architecture": cfg.architecture,
            "size": cfg.size,
            "dp": record.dp,
            "epsilon": record.epsilon,
            "target_epsilon": record.target_epsilon,
            "delta": record.delta,
            "noise_multiplier": record.noise_multiplier,
            "sample_rate": record.sample_rate,
            "steps": record.steps,
            "clipping": result.clipping,
            "n_customers": record.n_units,
            "vocab_size": len(vocab),
            "n_items": vocab.n_items,
            "n_countries": len(vocab.countries),
            "final_train_loss": round(result.final_loss, 5),
            "epoch_losses": [round(v, 5) for v in result.epoch_losses],
            "n_synthetic": len(sessions),
            "mean_synthetic_length": round(sum(lengths) / len(lengths), 3) if lengths else 0.0,
            "n_distinct_synthetic_items": len({i for _, items in sessions for i in items}),
            "train_wall_s": round(train_wall, 3),
            "sample_wall_s": round(sample_wall, 3),
            "wall_s": round(timer.elapsed(), 3),
        }
        timer.write(model_tmp, summary)
        timer.write(synthetic_tmp, summary)
    logger.info(
        "generate done: epsilon %s over %d steps, %d synthetic sessions in %.1f s",
        summary["epsilon"],
        summary["steps"],
        summary["n_synthetic"],
        summary["wall_s"],
    )
    return summary
