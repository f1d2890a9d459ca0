"""The generate step: train the DP generator on real sequences, then sample synthetic sessions.

``run`` reads ``cleaned/``, keeps only the training part of each customer's sequence
(:func:`components.common.splits.leave_last_out`, so held-out items never reach the generator),
bounds each customer's contribution (:func:`customer_records`: at most
``max_sequences_per_customer`` sequences and ``max_tokens_per_customer`` tokens, each sequence
framed by its country, month and price band tokens), trains a causal LM with DP-SGD (one
customer = one clipped row, see ``components.generate.train``), saves it with its vocabulary and
privacy record into ``generator_model/`` and writes the sampled sessions into ``synthetic/``,
with the quality report ``synthetic/quality.html`` and ``quality.json`` measured against the
customers the audit keeps out of training (``canaries.holdout_fraction``; they count in no
``n_units``). Both outputs go through ``atomic_dir``: a failure anywhere leaves neither behind.
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

from components.common import artifacts, canaries
from components.common.artifacts import StepTimer, atomic_dir, read_parquet, write_json
from components.common.errors import ConfigError, InputError
from components.common.splits import leave_last_out
from components.generate import quality
from components.generate.config import GenerateConfig
from components.generate.model import build_model, load_model, load_pretrained
from components.generate.sample import sample_sessions
from components.generate.tokenizer import EOS_ID, VOCAB_FILE, ItemVocab, Session
from components.generate.train import train_generator
from components.generate.utility import recommender_utility
from components.ingest import countries as public_countries

logger = logging.getLogger(__name__)

# Decoding runs many small matmuls (one token per row per step): a second intra-op thread gains
# little there, and on a busy machine a contended one made it ~7x slower (measured). Training,
# with its large batched matmuls, keeps torch's default unless cfg.num_threads says otherwise.
SAMPLE_THREADS = 1

SYNTHETIC_SCHEMA = pa.schema(
    [
        ("synthetic_id", pa.string()),
        ("country", pa.string()),
        ("items", pa.list_(pa.string())),
        ("month", pa.int64()),
        ("price_band", pa.int64()),
        ("category", pa.string()),
    ]
)
# The category of items without one, in a dataset where other items have one.
OTHER_CATEGORY = "other"


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


def read_sequences(cleaned_dir: Path, *, with_ts: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The customer sequences and the catalogue's stock codes from ``cleaned/``.

    ``with_ts`` also reads the time of each item's first purchase (column ``ts``).

    Raises:
        InputError: a missing file or column, no customers, a duplicate customer id or a
            missing country.
    """
    path = cleaned_dir / artifacts.SEQUENCES
    columns = ["customer_id", "country", "items", *(["ts"] if with_ts else [])]
    sequences = read_parquet(path, columns)
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
    return sequences[columns], catalogue["item_id"].astype(str).tolist()


def read_price_bands(cleaned_dir: Path) -> dict[str, int]:
    """Each catalogue item's price band (``items.parquet``'s price_band, 0..bands-1).

    Raises:
        InputError: the column is missing or holds a negative or missing band.
    """
    path = cleaned_dir / artifacts.ITEMS
    items = read_parquet(path, ["item_id", "price_band"])
    bands = items["price_band"]
    bad = bands.isna() | (bands < 0)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(
            f"price_band {bands.iloc[row]!r} must be an integer >= 0",
            file=str(path),
            column="price_band",
            row=row,
        )
    return dict(zip(items["item_id"].astype(str), bands.astype(int), strict=True))


def read_categories(cleaned_dir: Path) -> dict[str, str] | None:
    """Each catalogue item's product category (``items.parquet``'s nullable category column).

    Returns:
        None when the dataset has no categories (no column, or every value null, as for Online
        Retail and Diginetica); else item -> category name, items without one mapped to
        :data:`OTHER_CATEGORY`.

    Raises:
        InputError: a category name is empty or would not fit in a ``<cat:NAME>`` token.
    """
    path = cleaned_dir / artifacts.ITEMS
    schema = pq.read_schema(path)
    if "category" not in schema.names:
        return None
    items = read_parquet(path, ["item_id", "category"])
    present = items["category"].notna()
    if not present.any():
        return None
    names = items["category"].where(present, OTHER_CATEGORY).astype(str)
    bad = (names.str.strip() == "") | names.str.contains(r"[\s<>]", regex=True)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(
            f"category {names.iloc[row]!r} must be a non-empty name without spaces, '<' or '>'",
            file=str(path),
            column="category",
            row=row,
        )
    return dict(zip(items["item_id"].astype(str), names, strict=True))


def session_category(items: list[str], categories: dict[str, str]) -> str:
    """The most common category among ``items`` (ties: the smallest name)."""
    counts: dict[str, int] = {}
    for item in items:
        name = categories.get(item, OTHER_CATEGORY)
        counts[name] = counts.get(name, 0) + 1
    return min(counts, key=lambda name: (-counts[name], name))


def training_histories(sequences: pd.DataFrame) -> pd.DataFrame:
    """The leave-last-out training part of each customer, with ``ts`` when ``sequences`` has it.

    Returns:
        One row per customer: customer_id, country, items (and ts, aligned with items).
    """
    train = leave_last_out(sequences).train
    if "ts" in sequences.columns:
        ts_by_customer = dict(zip(sequences["customer_id"], sequences["ts"], strict=True))
        train["ts"] = [
            list(ts_by_customer[c])[: len(items)]
            for c, items in zip(train["customer_id"], train["items"], strict=True)
        ]
    return train


def _lower_median(values: list[int]) -> int:
    ordered = sorted(values)
    return int(ordered[(len(ordered) - 1) // 2])


def _invoices(items: list[str], ts: list | None) -> list[list[int]]:
    """Positions of ``items`` grouped by first-purchase time (one group per invoice)."""
    if ts is None:
        return [list(range(len(items)))]
    groups: list[list[int]] = []
    previous = object()
    for pos, stamp in enumerate(ts):
        if stamp != previous:
            groups.append([])
            previous = stamp
        groups[-1].append(pos)
    return groups


def customer_sessions(
    row_items: list[str],
    row_ts: list | None,
    *,
    session_split: str,
    max_sequences: int,
    max_items: int,
) -> list[tuple[list[str], object]]:
    """One customer's bounded sequences: ``(items, first purchase time)``, oldest first.

    ``history``: one sequence, the most recent ``max_items`` items. ``invoice``: one sequence per
    invoice, the most recent ``max_sequences`` invoices, each cut to its last ``max_items``.
    """
    if session_split == "history":
        groups = [list(range(len(row_items)))]
    else:
        groups = _invoices(row_items, row_ts)[-max_sequences:]
    out = []
    for positions in groups:
        kept = positions[-max_items:]
        out.append(([row_items[p] for p in kept], None if row_ts is None else row_ts[kept[0]]))
    return out


def customer_records(
    train_part: pd.DataFrame,
    vocab: ItemVocab,
    *,
    bands: dict[str, int] | None = None,
    categories: dict[str, str] | None = None,
    session_split: str = "history",
    max_sequences: int = 1,
    max_tokens: int | None = None,
) -> list[list[list[int]]]:
    """The bounded token sequences of each customer of ``train_part`` (its training parts).

    This is the contribution bound of DP training. Each customer gives at most ``max_sequences``
    sequences (``invoice`` split; ``history`` gives exactly one) of at most ``vocab.max_length``
    tokens each, and at most ``max_tokens`` tokens in all (default ``max_sequences *
    max_length``): older sequences are dropped first, then the oldest items of the last one.
    Each sequence is ``[bos, country, month, band, category, items..., eos]`` (month of its
    first item's purchase, lower median of its items' price bands, most common category of its
    items; each only where the vocabulary has it).
    Items outside the vocabulary are dropped; a customer left without items is left out.

    Raises:
        ConfigError: ``max_tokens`` leaves no room for one item.
        InputError: ``ts`` is missing while the vocabulary has months.
    """
    frame = vocab.frame_tokens
    budget = max_tokens if max_tokens is not None else max_sequences * vocab.max_length
    if budget < frame + 1:
        raise ConfigError(
            f"generate.max_tokens_per_customer={budget} must be >= {frame + 1} "
            f"({frame} frame and condition tokens plus one item)"
        )
    if vocab.months is not None and "ts" not in train_part.columns:
        raise InputError("month conditioning needs each item's ts", column="ts")
    has_ts = "ts" in train_part.columns
    records = []
    for row in train_part.itertuples(index=False):
        known = [(i, t) for i, t in zip(row.items, row.ts if has_ts else row.items, strict=True)]
        known = [(str(i), t) for i, t in known if vocab.item_id(str(i)) is not None]
        if not known:
            continue
        items = [i for i, _ in known]
        ts = [t for _, t in known] if has_ts else None
        sessions = customer_sessions(
            items,
            ts,
            session_split=session_split,
            max_sequences=max_sequences,
            max_items=vocab.max_items,
        )
        # Newest first against the token budget; then back to time order.
        kept: list[list[int]] = []
        left = budget
        for seq_items, first_ts in reversed(sessions):
            if left < frame + 1:
                break
            seq_items = seq_items[-(left - frame) :]
            kept.append(
                vocab.encode(
                    row.country,
                    seq_items,
                    month=None if vocab.months is None else pd.Timestamp(first_ts).month,
                    price_band=(
                        None
                        if vocab.price_bands is None or bands is None
                        else _lower_median([bands[i] for i in seq_items])
                    ),
                    category=(
                        None
                        if vocab.categories is None or categories is None
                        else session_category(seq_items, categories)
                    ),
                )
            )
            left -= len(kept[-1])
        records.append(kept[::-1])
    return records


def write_synthetic(path: Path, sessions: list[Session]) -> None:
    """Write ``synthetic_sessions.parquet`` with ids ``syn-000001``, ``syn-000002``, ...

    Besides the contract's columns it carries each session's sampled month, price band and
    category (null for a generator without that condition).
    """
    table = pa.table(
        {
            "synthetic_id": [f"syn-{i + 1:06d}" for i in range(len(sessions))],
            "country": [s.country for s in sessions],
            "items": [list(s.items) for s in sessions],
            "month": [s.month for s in sessions],
            "price_band": [s.price_band for s in sessions],
            "category": [s.category for s in sessions],
        },
        schema=SYNTHETIC_SCHEMA,
    )
    pq.write_table(table, path)


def _vocabulary(
    cfg: GenerateConfig,
    catalogue: list[str],
    countries: pd.Series,
    bands: dict[str, int] | None,
    categories: dict[str, str] | None = None,
) -> ItemVocab:
    """The vocabulary to train with: the pretrained folder's, or one built from the data."""
    if cfg.pretrained_path is not None:
        folder = Path(cfg.pretrained_path)
        if (folder / VOCAB_FILE).is_file():
            vocab = ItemVocab.load(folder)
            if vocab.max_length != cfg.max_length:
                raise ConfigError(
                    f"generate.max_length={cfg.max_length} disagrees with the pretrained "
                    f"vocabulary's max_length={vocab.max_length} ({folder / VOCAB_FILE})"
                )
            unknown = sorted(set(countries.astype(str)) - set(vocab.countries))
            if unknown:
                raise InputError(
                    f"countries {unknown[:5]} are not in the pretrained vocabulary; allowed: "
                    f"{sorted(vocab.countries)}",
                    file=str(folder / VOCAB_FILE),
                    column="country",
                )
            logger.info("reusing the vocabulary of %s (%d tokens)", folder, len(vocab))
            return vocab
    n_bands = None
    if bands:
        n_bands = max(bands.values()) + 1
    return ItemVocab.build(
        catalogue,
        countries,
        cfg.max_length,
        months=cfg.condition_month,
        n_price_bands=n_bands,
        categories=None if categories is None else sorted(set(categories.values())),
    )


def _held_out_part(sequences: pd.DataFrame, cfg: GenerateConfig, *, seed: int) -> pd.DataFrame:
    """The customers the audit's hash rule keeps out of training (none when it is off)."""
    if not cfg.canaries.enabled or cfg.canaries.holdout_fraction <= 0:
        return sequences.iloc[:0]
    ids = sequences["customer_id"].astype(str).tolist()
    mask = canaries.held_out(ids, cfg.canaries.holdout_fraction, seed)
    return sequences.loc[mask].reset_index(drop=True)


def _decode_records(vocab: ItemVocab, records: list[list[list[int]]]) -> list[Session]:
    out = []
    for segments in records:
        for tokens in segments:
            session = vocab.decode_session(tokens)
            if session is not None and session.items:
                out.append(session)
    return out


def _quality(
    out_dir: Path,
    synthetic: list[Session],
    *,
    train_sessions: list[Session],
    held_sequences: pd.DataFrame,
    vocab: ItemVocab,
    bands: dict[str, int] | None,
    categories: dict[str, str] | None = None,
    cfg: GenerateConfig,
    seed: int,
) -> dict[str, Any] | None:
    """Write synthetic/quality.{json,html}; the headline figures, None without held-out data."""
    if held_sequences.empty:
        logger.info("quality report skipped: no customers are held out of training")
        return None
    started = time.perf_counter()
    # The held-out customers' whole sequences, bounded like the training records: the
    # generator never saw any of their items.
    held_records = customer_records(
        held_sequences,
        vocab,
        bands=bands,
        categories=categories,
        session_split=cfg.session_split,
        max_sequences=cfg.max_sequences_per_customer,
        max_tokens=cfg.max_tokens_per_customer,
    )
    held_out = _decode_records(vocab, held_records)
    if not held_out or not synthetic:
        logger.info(
            "quality report skipped: %d held-out and %d synthetic sessions",
            len(held_out),
            len(synthetic),
        )
        return None
    held_ids = set(vocab.item_ids)
    next_item_cases = [
        ([str(i) for i in items[:-1]], str(items[-1]))
        for items in held_sequences["items"]
        if len(items) >= 2 and str(items[-1]) in held_ids
    ]
    recommender = None
    if cfg.quality_recommender_epochs:
        recommender = recommender_utility(
            synthetic,
            train_sessions,
            next_item_cases,
            catalogue=vocab.item_ids,
            bands=bands,
            epochs=cfg.quality_recommender_epochs,
            seed=seed,
        )
    report = quality.evaluate(
        synthetic=synthetic,
        train=train_sessions,
        held_out=held_out,
        next_item_cases=next_item_cases,
        catalogue=vocab.item_ids,
        max_items=vocab.max_items,
        seed=seed,
        recommender=recommender,
    )
    quality.write(out_dir, report)
    headline = quality.headline(report)
    headline["wall_s"] = round(time.perf_counter() - started, 3)  # figures, plots and files
    return headline


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
        synthetic_dir: receives ``synthetic_sessions.parquet``, ``quality.html``,
            ``quality.json`` (unless ``cfg.quality_report`` is off or no customer is held out)
            and ``step.json``.
        seed: seeds Poisson sampling, DP noise, initialisation and sampling.

    Returns:
        A JSON-able summary: epsilon, delta, steps, noise multiplier, customers, synthetic
        sequences, the final training loss and wall times.
    """
    timer = StepTimer("generate")
    cleaned_dir, model_dir, synthetic_dir = Path(cleaned_dir), Path(model_dir), Path(synthetic_dir)

    # Training parts only: the last two items of an evaluated customer are never seen here.
    needs_ts = cfg.condition_month or cfg.session_split == "invoice"
    sequences, catalogue = read_sequences(cleaned_dir, with_ts=needs_ts)
    bands = read_price_bands(cleaned_dir) if cfg.condition_price_band else None
    train_part = training_histories(sequences)
    categories = read_categories(cleaned_dir) if cfg.condition_category else None
    # Country tokens: the public list of cleaned/countries.json plus the unknown country, never
    # the customers' countries (an older cleaned/ falls back to the observed ones, with a warning).
    country_names = pd.Series(
        public_countries.generator_countries(cleaned_dir, train_part["country"])
    )
    vocab = _vocabulary(cfg, catalogue, country_names, bands, categories)
    # The customers the audit keeps out of training are the quality report's real reference.
    held_part = _held_out_part(sequences, cfg, seed=seed)
    # Audit: a seeded share of customers stays out of training (membership-inference non-members).
    train_part, n_held_out = canaries.drop_held_out(train_part, cfg.canaries, seed=seed)
    records = customer_records(
        train_part,
        vocab,
        bands=bands,
        categories=categories,
        session_split=cfg.session_split,
        max_sequences=cfg.max_sequences_per_customer,
        max_tokens=cfg.max_tokens_per_customer,
    )
    if not records:
        raise InputError(
            "no customer has a training item in the catalogue",
            file=str(cleaned_dir / artifacts.SEQUENCES),
            column="items",
        )
    logger.info(
        "generator data: %d customers (%d dropped without catalogue items), %d sequences, "
        "%d countries, %d items, vocab %d, max_length %d",
        len(records),
        len(train_part) - len(records),
        sum(len(r) for r in records),
        len(vocab.countries),
        vocab.n_items,
        len(vocab),
        cfg.max_length,
    )

    # Audit: canary customers, each included with probability 1/2 (counted as customers by DP).
    # The canary helper frames its canaries like the first sequence of each customer; every
    # canary it appends is one more customer of a single sequence.
    n_members = len(records)
    with_canaries, canary_set = canaries.add_generator_canaries(
        [segments[0] for segments in records],
        first_item_id=vocab.first_item_id,
        vocab_size=len(vocab),
        eos_id=EOS_ID,
        max_length=cfg.max_length,
        cfg=cfg.canaries,
        seed=seed,
        n_held_out=n_held_out,
    )
    records = [*records, *([canary] for canary in with_canaries[n_members:])]
    torch.manual_seed(seed)  # the initial weights too
    if cfg.pretrained_path is not None:
        model = load_pretrained(
            cfg.pretrained_path, len(vocab), cfg.max_length, clipping=cfg.clipping
        )
    else:
        model = build_model(cfg.architecture, cfg.size, len(vocab), cfg.max_length)
    with (
        _torch_threads(cfg.num_threads),
        atomic_dir(model_dir) as model_tmp,
        atomic_dir(synthetic_dir) as synthetic_tmp,
    ):
        train_started = time.perf_counter()
        result = train_generator(model, records, cfg, seed=seed, first_item_id=vocab.first_item_id)
        train_wall = time.perf_counter() - train_started
        model.save_pretrained(model_tmp)
        vocab.save(model_tmp)
        write_json(model_tmp / artifacts.PRIVACY, result.privacy.model_dump(mode="json"))
        canaries.save(model_tmp, canary_set)

        # Sample from the saved weights, so the sessions come from exactly what is shipped.
        sample_started = time.perf_counter()
        with _torch_threads(cfg.num_threads or SAMPLE_THREADS):
            shipped = load_model(model_tmp)
            sessions = sample_sessions(
                shipped,
                vocab,
                cfg.n_synthetic,
                seed=seed,
                temperature=cfg.temperature,
                condition_temperature=cfg.condition_temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                batch_size=cfg.sample_batch_size,
                no_repeat_items=cfg.no_repeat_items,
            )
        sample_wall = time.perf_counter() - sample_started
        write_synthetic(synthetic_tmp / artifacts.SYNTHETIC_SESSIONS, sessions)

        quality_summary = None
        if cfg.quality_report:
            quality_summary = _quality(
                synthetic_tmp,
                sessions,
                train_sessions=_decode_records(vocab, records[:n_members]),
                held_sequences=held_part,
                vocab=vocab,
                bands=bands,
                categories=categories,
                cfg=cfg,
                seed=seed,
            )

        lengths = [len(s.items) for s in sessions]
        countries = pd.Series([s.country for s in sessions], dtype=object)
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
            "unit": record.unit,
            "n_held_out_customers": n_held_out,
            "n_training_sequences": sum(len(r) for r in records),
            "session_split": cfg.session_split,
            "max_sequences_per_customer": cfg.max_sequences_per_customer,
            "max_tokens_per_customer": cfg.max_tokens_per_customer
            or cfg.max_sequences_per_customer * cfg.max_length,
            "conditioning": [
                name
                for name, on in (
                    ("country", True),
                    ("month", vocab.months is not None),
                    ("price_band", vocab.price_bands is not None),
                    ("category", vocab.categories is not None),
                )
                if on
            ],
            "pretrained_path": cfg.pretrained_path,
            "vocab_size": len(vocab),
            "n_items": vocab.n_items,
            "n_countries": len(vocab.countries),
            "final_train_loss": round(result.final_loss, 5),
            "epoch_losses": [round(v, 5) for v in result.epoch_losses],
            "n_synthetic": len(sessions),
            "mean_synthetic_length": round(sum(lengths) / len(lengths), 3) if lengths else 0.0,
            "n_distinct_synthetic_items": len({i for s in sessions for i in s.items}),
            "synthetic_top_country_share": (
                round(float(countries.value_counts(normalize=True).iloc[0]), 4)
                if len(countries)
                else None
            ),
            "quality": quality_summary,
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
