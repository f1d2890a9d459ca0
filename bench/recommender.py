"""Recommender benchmark: baselines and recommenders, with and without DP and synthetic data.

    python -m bench.recommender                      # the whole table (~90 min on 2 cores)
    python -m bench.recommender --datasets online_retail --epsilons none 4 --jobs 1

The table is cut into blocks, one per (dataset, protocol), run by ``--jobs`` worker processes
(longest first, one torch thread each) and merged into one results file as they progress. Each
block builds the data once (ingest and fuse, cached), then per epsilon trains one generator
(``components.generate``, cached per dataset, protocol, epsilon and generator settings; shared by
the recommender seeds unless ``--generator-per-seed``), filters its sessions as fuse does, and
trains and evaluates:

- ``popularity`` and ``cooc_knn`` (item-to-item co-occurrence kNN): non-private baselines;
- ``real_only``: the recommender on real sequences, DP-SGD at the epsilon;
- ``synthetic_only``: the recommender on synthetic sequences only (no real record is touched,
  so it runs without DP; its guarantee is the generator's epsilon);
- ``real_plus_synthetic``: real + synthetic, DP-SGD at the epsilon (with the generator's spend
  that is twice the epsilon by basic composition). The synthetic weight and amount are chosen
  on the validation items (never the test items) with the first seed, then fixed.

``none`` means no DP anywhere. Protocols: ``leave_last_out`` (last item test, second-to-last
validation) and ``temporal`` (train on purchases before a cutoff at the 80 % quantile of event
time; test each customer's first new item after it; Amazon Beauty has no real timestamps and
skips it). Metrics: full-catalogue HR@10, NDCG@10, MRR and coverage, on all test cases and on
the slices ``cold_users`` (at most 3 earlier purchases) and ``cold_items`` (test items no real
training customer bought; in the temporal protocol, first seen after the cutoff), and a sampled
mode (target against 99 negatives drawn uniformly from the items the customer never touched)
for comparison with papers. Amazon Beauty's full data gets the non-private rows only; its DP
and synthetic rows run on a customer subsample (``--subsample``), reported as its own dataset
key (``amazon_beauty_sub<N>``).

Results in ``bench/results/recommender.json``, keyed dataset -> protocol -> model -> epsilon
(mean and std over seeds, and the per-seed values), plus per block ``synthetic_effect``
(real_plus_synthetic minus real_only, paired by seed) and per dataset ``step_time``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import multiprocessing as mp
import queue
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.generator import NO_DP_BATCH, no_dp_batch
from components.common import artifacts as art
from components.common.errors import ConfigError, InputError
from components.common.privacy import default_delta
from components.fuse import logic as fuse
from components.fuse.config import FuseConfig
from components.train import evaluate as ev
from components.train.baselines import CooccurrenceKNN
from components.train.config import TrainConfig
from components.train.data import TrainingSet, load_training_set, next_item_records
from components.train.logic import fit, validation_scorer

logger = logging.getLogger(__name__)

DATASETS = ("online_retail", "amazon_beauty", "diginetica")
PROTOCOLS = ("leave_last_out", "temporal")
EPSILONS = ("none", "1", "4", "8")
MODELS = ("popularity", "cooc_knn", "real_only", "synthetic_only", "real_plus_synthetic")
NON_PRIVATE_MODELS = ("popularity", "cooc_knn", "real_only")
METRIC_KEYS = ("hr@10", "ndcg@10", "mrr", "coverage")
SLICES = ("all", "cold_users", "cold_items")
EFFECT_METRICS = ("hr@10", "ndcg@10")
RESULTS = Path("bench/results/recommender.json")
CACHE = Path(".recsynth/bench-recommender")
K = 10
COLD_USER_MAX = 3
# A block with fewer test cases is skipped (with the reason): its metrics would be noise.
MIN_TEST_CASES = 50
TEMPORAL_QUANTILE = 0.8
# Datasets whose timestamps are synthetic (the loader invents them): no temporal protocol.
NO_REAL_TIME = {"amazon_beauty"}
# Datasets whose customer is a session (a day at most): the temporal protocol finds almost nobody
# on both sides of the cutoff. It is still tried (and skipped under MIN_TEST_CASES); the
# estimate counts it as the data preparation only.
SESSION_UNIT = {"diginetica"}
# The verdict rule of synthetic_effect: at least this many paired seeds, and |mean| above this
# many sample standard deviations of the paired differences.
EFFECT_MIN_SEEDS = 3
# Published figures the non-private real-only model is held against: SASRec on Amazon Beauty,
# leave-last-out, the target against 99 sampled negatives, as reproduced in the S3-Rec paper
# (Zhou et al., CIKM 2020).
PUBLISHED: dict[str, dict[str, Any]] = {
    "amazon_beauty": {
        "model": "SASRec as reproduced in S3-Rec (99 sampled negatives)",
        "protocol": "leave_last_out",
        "sampled": {"hr@10": 0.4696, "ndcg@10": 0.3156},
    }
}
EFFECT_STD_FACTOR = 2.0

# Recommender settings per dataset: Beauty uses SASRec's published shape (max length 50,
# width 64, 2 blocks, dropout 0.5); the shop datasets the train step's defaults. The epochs here
# apply where early stopping does not (EARLY_STOPPING below replaces them for non-DP rows).
TRAIN_SETTINGS: dict[str, dict[str, Any]] = {
    "amazon_beauty": {
        "content_dim": 32,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 1,
        "max_history": 50,
        "dropout": 0.5,
        "epochs": 4,
        "batch_size": 256,
        "learning_rate": 2e-3,
        "id_dropout": 0.0,
        # SASRec's tying, only without DP (the DP rows fall back to untied). Early-stopped on
        # validation (at most 12 epochs) it reached sampled HR@10 0.5061, NDCG@10 0.3425 over
        # 3 seeds (bench/results/recommender.json); untied, 12 fixed epochs gave HR@10 0.434.
        "tie_output": True,
    },
    "online_retail": {"epochs": 5, "max_history": 20},
    # Sessions of 4.7 views on average over 6,743 items: 8 steps an epoch at batch 256 left the
    # model near popularity after 5 epochs, and an epoch costs ~1 s, so it trains longer.
    "diginetica": {"epochs": 20, "max_history": 20, "batch_size": 128},
}
# What the DP trainings (real_only and real_plus_synthetic at an epsilon) change. A DP step costs
# ~2.7x a plain one here (Online Retail, 1 thread: 16.5 s against 6.2 s per epoch; Diginetica
# 0.9 CPU s a step against 0.1), and at a fixed epsilon fewer epochs mean less noise per step,
# so the DP rows train fewer epochs, in Diginetica's case with its larger batch.
DP_SETTINGS: dict[str, dict[str, Any]] = {
    "amazon_beauty": {"epochs": 2},
    "online_retail": {"epochs": 2},
    "diginetica": {"epochs": 2, "batch_size": 256},
}
# Without DP, trainings that may look at real validation items (real_only, real_plus_synthetic, and
# synthetic_only of the non-DP generator) stop early: at most these epochs, stopping once
# `patience` epochs in a row have not raised validation NDCG@10, keeping the best epoch. Fixed
# epoch counts chosen by hand had left Online Retail under-trained (5 epochs: HR@10 0.207, below
# co-occurrence kNN's 0.246) and would otherwise have to be tuned on test figures. DP rows keep
# fixed epochs (their noise is calibrated to the planned steps; choosing the stop on real items
# would spend privacy outside the accountant), and so does synthetic_only at an epsilon (its
# only guarantee is the generator's, so it must not look at real items).
EARLY_STOPPING: dict[str, dict[str, Any]] = {
    "online_retail": {"epochs": 40, "early_stopping_patience": 3},
    # An epoch costs ~47 CPU s plus ~19 s of validation: at most 12.
    "amazon_beauty": {"epochs": 12, "early_stopping_patience": 2},
    "diginetica": {"epochs": 60, "early_stopping_patience": 3},
}
# What a subsample block (``<dataset>_sub<N>``) changes for every training in it. Beauty's
# sessions average 8.9 items, so a window of 20 holds nearly all of them, and ghost clipping's
# cost of the output layer grows with the window squared (B x T^2 x catalogue).
SUBSAMPLE_SETTINGS: dict[str, dict[str, Any]] = {"amazon_beauty": {"max_history": 20}}
INGEST_SETTINGS: dict[str, dict[str, Any]] = {
    "online_retail": {"dataset": "online_retail", "min_items_per_customer": 2, "price_bands": 5},
    "amazon_beauty": {"dataset": "amazon_beauty", "min_items_per_customer": 1, "price_bands": 1},
    "diginetica": {"dataset": "diginetica", "min_items_per_customer": 2, "price_bands": 1},
}
SOURCES = {"online_retail": "bundled", "amazon_beauty": "shared", "diginetica": "shared"}
# CPU seconds per training epoch with one torch thread (no DP, DP) and per evaluation of one
# row, measured on this machine with the settings above and the customer features (Beauty's
# full data: no DP rows; its subsample: window 20; Beauty's DP figure is a lower bound from an
# aborted epoch): used only to order the blocks and to print an estimate.
EPOCH_SECONDS: dict[str, tuple[float, float]] = {
    "online_retail": (7.0, 18.7),
    "amazon_beauty": (47.0, 300.0),
    "amazon_beauty_sub1500": (2.2, 15.0),
    "diginetica": (1.0, 14.0),
}
EVAL_SECONDS = {"online_retail": 1.5, "amazon_beauty": 19.0, "diginetica": 1.0}
# The demo's generator (small, 3 epochs), 2000 sessions of at most 32 tokens: CPU s per epoch.
GENERATOR_EPOCH_SECONDS = 40.0
# Epochs the early-stopped (non-DP) trainings ran on this machine, for the estimate only.
EXPECTED_EARLY_EPOCHS = {"online_retail": 14, "amazon_beauty": 12, "diginetica": 8}
PROTOCOL_NOTES = {
    "sampled": "target vs 99 negatives drawn uniformly without replacement from items the "
    "customer never interacted with (history, valid and test excluded); ties count against the "
    "target; negatives seeded (seed 0) and shared by all models",
    "cold_users": f"test cases with at most {COLD_USER_MAX} earlier purchases",
    "cold_items": "test items no real training customer bought (leave_last_out) or first seen "
    "at or after the cutoff (temporal)",
    "epsilon": "real_only: recommender epsilon; synthetic_only: generator epsilon (recommender "
    "without DP); real_plus_synthetic: generator and recommender each at epsilon (2x by basic "
    "composition); popularity and cooc_knn are non-private",
    "mix": "synthetic weight and amount chosen on validation NDCG@10 with the first seed; that "
    "first-seed model is also the first seed's test row (it is the same training)",
    "generator": "one generator per (dataset, protocol, epsilon), trained with the first seed "
    "and shared by all recommender seeds unless settings.generator_per_seed: the seed spread "
    "of synthetic_only and real_plus_synthetic is then the recommender's only",
    "synthetic_effect": "real_plus_synthetic minus real_only at the same epsilon, paired by "
    f"seed; std is the sample std (ddof 1) of the paired differences; verdict 'helps' if mean > "
    f"{EFFECT_STD_FACTOR:g} x std, 'hurts' if mean < -{EFFECT_STD_FACTOR:g} x std, else 'no clear "
    f"difference'; 'too few seeds' under {EFFECT_MIN_SEEDS} pairs ('no test cases' for an empty "
    "slice). At an epsilon, "
    "real_plus_synthetic spends the generator's epsilon too",
    "diginetica": "the privacy unit is the session (customer_id s<session_id>): 62 % of views "
    "are anonymous and cannot be linked; in this sample every known user_id has exactly one "
    "session (1,270 users, 1,268 sessions), so session-level is user-level here. No customer "
    "returns after the temporal cutoff, so that protocol is skipped for too few test cases",
    "subsample": "<dataset>_sub<N>: N customers drawn uniformly (seed 0) before ingest's "
    "outputs are used; items nobody among them bought are dropped",
}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One (dataset, protocol) of the table, run start to end by one worker."""

    dataset: str
    protocol: str
    models: tuple[str, ...]
    epsilons: tuple[str, ...]
    subsample: int | None = None  # customers drawn before anything else (None: all)

    @property
    def key(self) -> str:
        """The dataset key in the results."""
        return self.dataset if self.subsample is None else f"{self.dataset}_sub{self.subsample}"

    @property
    def name(self) -> str:
        return f"{self.key}/{self.protocol}"


# --------------------------------------------------------------------------------------------
# Logging: every line carries the block it belongs to.

_BLOCK = "-"


class _BlockFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.block = _BLOCK
        return True


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_BlockFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s [%(block)s] %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


# --------------------------------------------------------------------------------------------
# Data.


def code_fingerprint() -> str:
    """A short hash of the code that builds the cached data (ingest, fuse, generate, common).

    The cache lives under it, so a change in those steps never reuses stale artifacts.
    """
    root = Path(__file__).resolve().parent.parent / "components"
    digest = hashlib.sha256()
    for part in ("common", "ingest", "fuse", "generate"):
        for file in sorted((root / part).glob("*.py")):
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def _ingest(dataset: str, cache: Path, source: str) -> Path:
    """``cleaned/`` of a dataset, built once per cache."""
    from components.ingest import logic as ingest
    from components.ingest.config import IngestConfig

    out = cache / dataset / "cleaned"
    if not (out / art.SEQUENCES).is_file():
        ingest.run(IngestConfig(**INGEST_SETTINGS[dataset]), source, out)
    return out


def _copy_other_files(cleaned: Path, out: Path, rewritten: Sequence[str]) -> None:
    """Copy the files of ``cleaned/`` that a derived copy keeps as they are (countries.json...)."""
    for file in cleaned.iterdir():
        if file.is_file() and file.name not in rewritten:
            shutil.copyfile(file, out / file.name)


def _subsample_cleaned(cleaned: Path, n: int, out: Path) -> Path:
    """A ``cleaned/`` with ``n`` customers drawn uniformly (seed 0) and the items they bought."""
    if (out / art.SEQUENCES).is_file():
        return out
    seqs = pd.read_parquet(cleaned / art.SEQUENCES)
    ids = np.sort(seqs["customer_id"].astype(str).to_numpy())
    if n >= len(ids):
        raise ConfigError(f"--subsample {n} must be below the dataset's {len(ids)} customers")
    keep = set(np.random.default_rng(0).choice(ids, size=n, replace=False).tolist())
    with art.atomic_dir(out) as tmp:
        _copy_other_files(cleaned, tmp, (art.SEQUENCES, art.EVENTS, art.CUSTOMERS, art.ITEMS))
        seqs = seqs[seqs["customer_id"].astype(str).isin(keep)]
        seqs.to_parquet(tmp / art.SEQUENCES, index=False)
        events = pd.read_parquet(cleaned / art.EVENTS)
        events = events[events["customer_id"].astype(str).isin(keep)]
        events.to_parquet(tmp / art.EVENTS, index=False)
        customers = pd.read_parquet(cleaned / art.CUSTOMERS)
        customers[customers["customer_id"].astype(str).isin(keep)].to_parquet(
            tmp / art.CUSTOMERS, index=False
        )
        items = pd.read_parquet(cleaned / art.ITEMS)
        bought = set(events["item_id"].astype(str))
        items[items["item_id"].astype(str).isin(bought)].to_parquet(tmp / art.ITEMS, index=False)
    logger.info("subsample: %d customers, %d items", len(seqs), len(bought))
    return out


def _cutoff(cleaned: Path) -> pd.Timestamp:
    events = pd.read_parquet(cleaned / art.EVENTS, columns=["ts"])
    return pd.Timestamp(events["ts"].quantile(TEMPORAL_QUANTILE)).floor("D")


def _cleaned_before(cleaned: Path, cutoff: pd.Timestamp, out: Path) -> Path:
    """A ``cleaned/`` holding only the purchases before ``cutoff`` (what the generator sees)."""
    if (out / art.SEQUENCES).is_file():
        return out
    with art.atomic_dir(out) as tmp:
        _copy_other_files(cleaned, tmp, (art.EVENTS, art.SEQUENCES))
        events = pd.read_parquet(cleaned / art.EVENTS)
        events[events["ts"] < cutoff].to_parquet(tmp / art.EVENTS, index=False)
        seqs = fuse.events_before(pd.read_parquet(cleaned / art.SEQUENCES), cutoff)
        seqs.to_parquet(tmp / art.SEQUENCES, index=False)
    return out


def _empty_synthetic(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    schema = {"synthetic_id": pa.string(), "country": pa.string(), "items": pa.list_(pa.string())}
    table = pa.table({k: pa.array([], type=t) for k, t in schema.items()})
    pq.write_table(table, out / art.SYNTHETIC_SESSIONS)
    return out


def _synthetic(
    args: argparse.Namespace, gen_cleaned: Path, root: Path, eps: str, seed: int
) -> tuple[Path, float]:
    """Synthetic sessions from components.generate at ``eps`` and the seconds it took (0 cached).

    Cached per epsilon, seed and generator settings.
    """
    from components.generate import logic as generate
    from components.generate.config import GenerateConfig

    # Without DP the generator trains the same epochs in ordinary small batches (as
    # bench.generator's no-DP row): DP-SGD needs large batches to drown its noise, plain training
    # does not, and 39 steps of 256 left it at the unigram distribution's held-out loss.
    batch, lr = args.gen_batch_size, GenerateConfig.model_fields["learning_rate"].default
    if eps == "none":
        batch, lr = no_dp_batch(batch, lr)
    tag = (
        f"eps{eps}-seed{seed}-{args.gen_size}-e{args.gen_epochs}-b{batch}"
        f"-l{args.gen_max_length}"
        f"-n{args.n_synthetic}"
    )
    out = root / f"synthetic-{tag}"
    if (out / art.SYNTHETIC_SESSIONS).is_file():
        return out, 0.0
    dp = {"enabled": False} if eps == "none" else {"target_epsilon": float(eps)}
    cfg = GenerateConfig.model_validate(
        {
            "size": args.gen_size,
            "epochs": args.gen_epochs,
            "batch_size": batch,
            "learning_rate": lr,
            "max_length": args.gen_max_length,
            "n_synthetic": args.n_synthetic,
            "dp": dp,
            "quality_report": False,
            "canaries": {"enabled": False, "holdout_fraction": 0.0},
        }
    )
    started = time.perf_counter()
    generate.run(cfg, gen_cleaned, root / f"generator-{tag}", out, seed=seed)
    seconds = time.perf_counter() - started
    logger.info("generator eps=%s seed=%d: %.0f s", eps, seed, seconds)
    return out, seconds


def _training_set(cleaned: Path, synthetic: Path, out: Path, cutoff: pd.Timestamp | None) -> Path:
    """fuse's training_set/ (real sequences, item features, eval cases), built once."""
    if not (out / art.TRAIN_SEQUENCES).is_file():
        cfg = FuseConfig(cutoff=cutoff.to_pydatetime() if cutoff is not None else None)
        fuse.run(cfg, cleaned, synthetic, out, seed=0)
    return out


def _country_ids(ts: TrainingSet, countries: Sequence[Any]) -> np.ndarray:
    """Country strings mapped with the training set's countries.json (unknown or unseen: 0)."""
    index = {name: i for i, name in enumerate(ts.countries)}
    return np.asarray([index.get(c, 0) if isinstance(c, str) else 0 for c in countries], np.int64)


def _with_synthetic(ts_real: TrainingSet, synthetic_dir: Path) -> tuple[TrainingSet, dict]:
    """``ts_real`` plus the synthetic sessions that pass fuse's filters (weight 1).

    The same filters as the fuse step (fuse.map_synthetic with FuseConfig's defaults), applied
    here so the MiniLM item features are not recomputed for every generator. The generated
    country is mapped with the real countries.json, as fuse does (unseen: 0).
    """
    cfg = FuseConfig()
    synthetic = art.read_parquet(synthetic_dir / art.SYNTHETIC_SESSIONS, fuse.SYNTHETIC_COLUMNS)
    real = ts_real.real
    syn, dropped = fuse.map_synthetic(
        ts_real.item_map,
        synthetic,
        [list(map(int, s)) for s in real["items"]],
        min_length=cfg.min_synthetic_length,
        near_duplicate_jaccard=cfg.near_duplicate_jaccard,
    )
    frame = pd.DataFrame(
        {
            "seq_id": [f"syn-{s}" for s in syn["synthetic_id"]],
            "source": "synthetic",
            "customer_id": None,
            "items": list(syn["items"]),
            "weight": 1.0,
        }
    )
    if "country_id" in real.columns:
        countries = syn["country"] if "country" in syn.columns else [None] * len(frame)
        frame["country_id"] = _country_ids(ts_real, list(countries))
    sequences = pd.concat([real, frame], ignore_index=True)
    ts = dataclasses.replace(ts_real, sequences=sequences)
    return ts, {"read": len(synthetic), "kept": len(frame), "dropped": dropped}


def _case_countries(ts: TrainingSet, n: int, column: Any = None) -> np.ndarray:
    if column is None:
        return np.zeros(n, dtype=np.int64)
    return np.asarray(column, dtype=np.int64)


def _test_cases(
    ts: TrainingSet, cleaned: Path, protocol: str, cutoff: pd.Timestamp | None
) -> dict[str, Any]:
    """Test histories, targets, countries, everything each customer touched, and slice masks."""
    n_items = len(ts.item_map)
    trained = ts.popularity > 0
    if protocol == "leave_last_out":
        e = ts.eval_cases
        hist = [list(h) + [int(v)] for h, v in zip(e["history"], e["valid_item"], strict=True)]
        target = [int(t) for t in e["test_item"]]
        seen = [h + [t] for h, t in zip(hist, target, strict=True)]
        cold_item = np.array([not trained[t] for t in target], dtype=bool)
        country = _case_countries(ts, len(hist), e.get("country_id"))
    else:
        seqs = pd.read_parquet(cleaned / art.SEQUENCES)
        items = pd.read_parquet(cleaned / art.ITEMS, columns=["item_id", "first_seen"])
        first_seen = dict(zip(items["item_id"].astype(str), items["first_seen"], strict=True))
        hist, target, seen, cold_item, names = [], [], [], [], []
        for its, times, cty in zip(seqs["items"], seqs["ts"], seqs["country"], strict=True):
            times = pd.to_datetime(pd.Series(list(times)), utc=True).to_numpy()
            before = [str(i) for i, t in zip(its, times, strict=True) if t < cutoff]
            after = [str(i) for i, t in zip(its, times, strict=True) if t >= cutoff]
            if not before or not after:
                continue
            hist.append(ts.item_map.encode(before))
            target.append(ts.item_map.index(after[0]))
            seen.append(ts.item_map.encode([str(i) for i in its]))
            cold_item.append(first_seen[after[0]] >= cutoff)
            names.append(cty)
        cold_item = np.array(cold_item, dtype=bool)
        country = _country_ids(ts, names)
    cold_user = np.array([len(h) <= COLD_USER_MAX for h in hist], dtype=bool)
    return {
        "hist": hist,
        "target": target,
        "country": country,
        "seen": seen,
        "slices": {
            "all": np.ones(len(hist), dtype=bool),
            "cold_users": cold_user,
            "cold_items": cold_item,
        },
        "n_items": n_items,
    }


def _valid_cases(ts: TrainingSet) -> dict[str, Any]:
    e = ts.eval_cases
    hist = [list(h) for h in e["history"]]
    country = _case_countries(ts, len(hist), e.get("country_id"))
    return {"hist": hist, "target": [int(v) for v in e["valid_item"]], "country": country}


# --------------------------------------------------------------------------------------------
# Scoring.

CHUNK = 2048  # test cases scored at once: a full score matrix of Beauty would take GBs
ScoreFn = Callable[[list[list[int]], np.ndarray], np.ndarray]


def _ranked(
    score_fn: ScoreFn, cases: dict[str, Any], negatives: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Full-catalogue ranks, top-k lists and (with negatives) sampled ranks, chunk by chunk."""
    hist, target, country = cases["hist"], cases["target"], cases["country"]
    ranks, recommended, sampled = [], [], []
    for start in range(0, len(hist), CHUNK):
        stop = start + CHUNK
        h, t = hist[start:stop], target[start:stop]
        scores = np.asarray(score_fn(h, country[start:stop]), dtype=np.float64)
        ranks.append(ev.ranks(scores, h, t))
        recommended.append(ev.top_k(scores, h, K))
        if negatives is not None:
            sampled.append(ev.sampled_ranks(scores, t, negatives[start:stop]))
    cat = (lambda xs: np.concatenate(xs)) if hist else (lambda xs: np.zeros(0, dtype=np.int64))
    return cat(ranks), cat(recommended), cat(sampled) if negatives is not None else None


def _metrics(score_fn: ScoreFn, cases: dict[str, Any], negatives: np.ndarray) -> dict[str, Any]:
    rank, recommended, sampled = _ranked(score_fn, cases, negatives)
    out: dict[str, Any] = {}
    for name, mask in cases["slices"].items():
        if not mask.any():
            out[name] = {"n": 0}
            continue
        m = ev.ranking_metrics(rank[mask], K)
        m["coverage"] = ev.coverage(recommended[mask], cases["n_items"])
        m["n"] = int(mask.sum())
        out[name] = m
    out["sampled"] = ev.ranking_metrics(sampled, K)
    return out


def customer_features_supported() -> bool:
    """Whether this checkout's recommender takes country and activity inputs."""
    return "country_ids" in inspect.signature(ev.model_scores).parameters


def _dp_epochs(dataset: str) -> int:
    return DP_SETTINGS.get(dataset, {}).get("epochs", TRAIN_SETTINGS[dataset].get("epochs", 5))


def _train_cfg(
    dataset: str,
    eps: str,
    epochs: int | None,
    subsample: int | None = None,
    *,
    early_stop: bool | None = None,
) -> TrainConfig:
    """The recommender settings of one row; ``epochs`` (``--epochs``) fixes the epochs.

    ``early_stop`` (default: without DP) stops on the validation items (``EARLY_STOPPING``).
    """
    settings = dict(TRAIN_SETTINGS[dataset])
    if subsample is not None:
        settings.update(SUBSAMPLE_SETTINGS.get(dataset, {}))
    if eps != "none":
        settings.update(DP_SETTINGS.get(dataset, {}))
        settings["tie_output"] = False  # ghost clipping cannot clip a layer used twice
    if early_stop is None:
        early_stop = eps == "none"
    if early_stop and epochs is None:
        settings.update(EARLY_STOPPING.get(dataset, {}))
    if epochs is not None:
        settings["epochs"] = epochs
    settings["dp"] = (
        {"enabled": False} if eps == "none" else {"enabled": True, "target_epsilon": float(eps)}
    )
    return TrainConfig.model_validate(settings)


def _fit_and_score(
    name: str,
    ts: TrainingSet,
    sequences: pd.DataFrame,
    cfg: TrainConfig,
    seed: int,
    n_units: int,
) -> tuple[ScoreFn, dict[str, float]]:
    features = customer_features_supported() and "country_id" in sequences.columns
    extra = {"country_ids": sequences["country_id"].tolist()} if features else {}
    data = next_item_records(
        sequences["items"].tolist(), sequences["weight"].tolist(), cfg.max_history, **extra
    )
    validate = validation_scorer(ts, cfg) if cfg.early_stopping_patience is not None else None
    result = fit(
        name,
        data,
        ts,
        cfg,
        seed=seed,
        n_units=n_units,
        delta=cfg.dp.delta or default_delta(n_units),
        training=name,
        validate=validate,
    )
    steps = max(1, result.record.steps)
    timing = {
        "epochs": len(result.epoch_seconds),
        "best_epoch": result.best_epoch,
        "train_seconds": float(sum(result.epoch_seconds)),
        "step_ms": 1000 * float(sum(result.epoch_seconds)) / steps,
        "step_cpu_ms": 1000 * float(sum(result.epoch_cpu_seconds)) / steps,
        "epsilon": result.record.epsilon,
    }

    def score_fn(histories: list[list[int]], countries: np.ndarray) -> np.ndarray:
        if not features:
            return ev.model_scores(
                result.model, histories, max_history=cfg.max_history, batch_size=512
            )
        # Whole histories are passed: model_scores counts what falls before the window itself.
        return ev.model_scores(
            result.model,
            histories,
            country_ids=countries,
            n_before=np.zeros(len(histories), dtype=np.int64),
            max_history=cfg.max_history,
            batch_size=512,
        )

    return score_fn, timing


def _mix(ts: TrainingSet, weight: float, amount: float) -> pd.DataFrame:
    """Real sequences plus the first ``amount`` x n_real synthetic ones at ``weight``."""
    real = ts.real
    syn = ts.sequences[ts.sequences["source"] == "synthetic"]
    syn = syn.iloc[: int(round(amount * len(real)))].assign(weight=weight)
    return pd.concat([real, syn], ignore_index=True)


def _select_mix(
    args: argparse.Namespace, ts: TrainingSet, cfg: TrainConfig, n_real: int
) -> tuple[dict[str, float], ScoreFn, dict[str, float]]:
    """Synthetic weight and amount with the best validation NDCG@10 (first seed only).

    Returns the choice with the winning first-seed model and its timing, which is the first
    seed's real_plus_synthetic row as well (the same data, settings and seed).
    """
    valid = _valid_cases(ts)
    best: dict[str, float] = {}
    best_fn: ScoreFn | None = None
    best_timing: dict[str, float] = {}
    for weight in args.weights:
        for amount in args.amounts:
            score_fn, timing = _fit_and_score(
                "real_plus_synthetic", ts, _mix(ts, weight, amount), cfg, args.seeds[0], n_real
            )
            ndcg = ev.ranking_metrics(_ranked(score_fn, valid)[0], K)[f"ndcg@{K}"]
            logger.info("mix weight=%.2f amount=%.2f: valid NDCG@10 %.4f", weight, amount, ndcg)
            if not best or ndcg > best["valid_ndcg@10"]:
                best = {"weight": weight, "amount": amount, "valid_ndcg@10": ndcg}
                best_fn, best_timing = score_fn, timing
    if best_fn is None:
        raise ConfigError("--weights and --amounts need at least one value each")
    return best, best_fn, best_timing


# --------------------------------------------------------------------------------------------
# Summaries.


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every metric of every slice, and the per-seed values."""
    out: dict[str, Any] = {"n_seeds": len(runs)}
    for part, values in runs[0].items():
        if part == "seed":
            continue
        if isinstance(values, dict):
            out[part] = {}
            for key, v in values.items():
                xs = [r[part][key] for r in runs if r[part].get(key) is not None]
                if key == "n" or not xs:
                    out[part][key] = v
                elif isinstance(v, (int, float)):
                    out[part][key] = {"mean": float(np.mean(xs)), "std": float(np.std(xs))}
    out["per_seed"] = [
        {
            "seed": r.get("seed"),
            **{
                s: {m: r[s][m] for m in EFFECT_METRICS if m in r.get(s, {})}
                for s in (*SLICES, "sampled")
            },
        }
        for r in runs
    ]
    return out


def effect_verdict(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean and sample std of paired differences and the verdict by the stated rule.

    ``helps`` when mean > EFFECT_STD_FACTOR x std, ``hurts`` when mean < -EFFECT_STD_FACTOR x
    std, else ``no clear difference``; ``too few seeds`` with fewer than EFFECT_MIN_SEEDS pairs,
    ``no test cases`` with none (an empty slice).
    """
    xs = np.asarray(list(diffs), dtype=np.float64)
    n = int(xs.size)
    mean = float(xs.mean()) if n else math.nan
    std = float(xs.std(ddof=1)) if n > 1 else math.nan
    if n == 0:
        verdict = "no test cases"  # the slice is empty in this block
    elif n < EFFECT_MIN_SEEDS:
        verdict = "too few seeds"
    elif mean > EFFECT_STD_FACTOR * std:
        verdict = "helps"
    elif mean < -EFFECT_STD_FACTOR * std:
        verdict = "hurts"
    else:
        verdict = "no clear difference"
    return {"mean": mean, "std": std, "n": n, "diffs": [float(x) for x in xs], "verdict": verdict}


def synthetic_effect(block: dict[str, Any]) -> dict[str, Any]:
    """real_plus_synthetic minus real_only per epsilon, slice and metric, paired by seed."""
    out: dict[str, Any] = {}
    for eps, mixed in block.get("real_plus_synthetic", {}).items():
        real = block.get("real_only", {}).get(eps)
        if real is None:
            continue
        by_seed = {r["seed"]: r for r in real.get("per_seed", [])}
        pairs = [(by_seed[r["seed"]], r) for r in mixed.get("per_seed", []) if r["seed"] in by_seed]
        out[eps] = {}
        for slice_name in SLICES:
            out[eps][slice_name] = {}
            for metric in EFFECT_METRICS:
                diffs = [
                    b[slice_name][metric] - a[slice_name][metric]
                    for a, b in pairs
                    if metric in a.get(slice_name, {}) and metric in b.get(slice_name, {})
                ]
                out[eps][slice_name][metric] = effect_verdict(diffs)
    return out


def step_time(results: dict[str, Any]) -> dict[str, Any]:
    """Per dataset: mean training step time (ms) over the rows without and with DP, and ratio."""
    out: dict[str, Any] = {}
    for dataset, protocols in results.get("datasets", {}).items():
        rows: dict[str, dict[str, list[float]]] = {
            "non_dp": {"wall": [], "cpu": []},
            "dp": {"wall": [], "cpu": []},
        }
        for block in protocols.values():
            for model in ("real_only", "synthetic_only", "real_plus_synthetic"):
                for eps, row in block.get(model, {}).items():
                    timing = row.get("timing", {})
                    if "step_ms" not in timing:
                        continue
                    # synthetic_only always trains without DP (see PROTOCOL_NOTES["epsilon"]).
                    kind = "non_dp" if eps == "none" or model == "synthetic_only" else "dp"
                    rows[kind]["wall"].append(timing["step_ms"]["mean"])
                    rows[kind]["cpu"].append(timing["step_cpu_ms"]["mean"])
        entry: dict[str, Any] = {}
        for kind, values in rows.items():
            entry[f"{kind}_step_ms"] = float(np.mean(values["wall"])) if values["wall"] else None
            entry[f"{kind}_step_cpu_ms"] = float(np.mean(values["cpu"])) if values["cpu"] else None
            entry[f"{kind}_rows"] = len(values["wall"])
        for unit in ("step_ms", "step_cpu_ms"):
            a, b = entry[f"dp_{unit}"], entry[f"non_dp_{unit}"]
            entry[f"dp_ratio_{unit.removesuffix('_ms')}"] = a / b if a and b else None
        out[dataset] = entry
    return out


# --------------------------------------------------------------------------------------------
# One block.


def published_comparison(results: dict[str, Any]) -> dict[str, Any]:
    """The non-private real-only model's sampled figures against ``PUBLISHED``, per dataset."""
    out: dict[str, Any] = {}
    for dataset, ref in PUBLISHED.items():
        block = results.get("datasets", {}).get(dataset, {}).get(ref["protocol"], {})
        row = block.get("real_only", {}).get("none", {})
        sampled = row.get("sampled", {})
        if not all(isinstance(sampled.get(m), dict) for m in ref["sampled"]):
            continue
        ours = {m: sampled[m]["mean"] for m in ref["sampled"]}
        out[dataset] = {
            "model": ref["model"],
            "protocol": ref["protocol"],
            "published": ref["sampled"],
            "ours": ours,
            "ours_std": {m: sampled[m]["std"] for m in ref["sampled"]},
            "n_seeds": row.get("n_seeds"),
            "difference": {m: ours[m] - v for m, v in ref["sampled"].items()},
            "reaches_published": all(ours[m] >= v for m, v in ref["sampled"].items()),
        }
    return out


def format_published(results: dict[str, Any]) -> str:
    """One line per dataset: our sampled HR@10 / NDCG@10 against the published figure."""
    lines = []
    for dataset, c in published_comparison(results).items():
        parts = [
            f"{m} {c['ours'][m]:.4f}+-{c['ours_std'][m]:.4f} vs {c['published'][m]:.4f} "
            f"({c['difference'][m]:+.4f})"
            for m in c["published"]
        ]
        lines.append(f"{dataset} real_only none, sampled: " + ", ".join(parts) + f" [{c['model']}]")
    return "\n".join(lines) or "(no dataset with a published figure in these results)"


def _used(
    args: argparse.Namespace,
    cfg: TrainConfig,
    seeds: Sequence[int],
    n_sequences: int,
    spec: BlockSpec,
    generator: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "seeds": list(seeds),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "max_history": cfg.max_history,
        "dp": cfg.dp.enabled,
        "tie_output": cfg.tie_output,
        "n_train_sequences": n_sequences,
        "customers": "all" if spec.subsample is None else f"subsample of {spec.subsample}",
        "customer_features": customer_features_supported(),
        "generator": generator,
    }


def run_protocol(
    args: argparse.Namespace,
    dataset: str,
    protocol: str,
    save: Callable[[dict[str, Any]], None] = lambda block: None,
    *,
    spec: BlockSpec | None = None,
) -> dict[str, Any]:
    """Every model and epsilon of one dataset under one protocol (one block of the table).

    ``save`` is called with the block so far after the baselines and after each row, so an
    interrupted run keeps what it finished.

    Args:
        args: the parsed command line (``parse_args``).
        dataset: one of DATASETS.
        protocol: one of PROTOCOLS.
        save: called with the block so far.
        spec: models, epsilons and subsample of the block (default: ``args``' models and
            epsilons, all customers).

    Returns:
        The block: sizes, rows keyed model -> epsilon, and ``synthetic_effect``.
    """
    if spec is None:
        spec = BlockSpec(dataset, protocol, tuple(args.models), tuple(args.epsilons))
    cache = Path(args.cache) / code_fingerprint()
    cleaned = _ingest(dataset, cache, dict(args.source).get(dataset, SOURCES[dataset]))
    if spec.subsample is not None:
        cleaned = _subsample_cleaned(cleaned, spec.subsample, cache / spec.key / "cleaned")
    root = cache / spec.key / protocol
    cutoff = _cutoff(cleaned) if protocol == "temporal" else None
    gen_cleaned = _cleaned_before(cleaned, cutoff, root / "cleaned-before") if cutoff else cleaned
    out: dict[str, Any] = {"cutoff": cutoff.isoformat() if cutoff is not None else None}
    models = [m for m in MODELS if m in spec.models]
    needs_synthetic = {"synthetic_only", "real_plus_synthetic"} & set(models)

    base_ts_dir = _training_set(
        cleaned, _empty_synthetic(root / "no-synthetic"), root / "training-real", cutoff
    )
    ts_real = load_training_set(base_ts_dir)
    cases = _test_cases(ts_real, cleaned, protocol, cutoff)
    negatives = ev.sample_negatives(cases["seen"], cases["n_items"], 99, seed=0)
    n_real = len(ts_real.real)
    if len(cases["target"]) < args.min_test_cases:
        raise InputError(
            f"only {len(cases['target'])} test cases under protocol {protocol} (at least "
            f"{args.min_test_cases} needed): too few customers have purchases before and after the "
            "cutoff"
            if protocol == "temporal"
            else f"only {len(cases['target'])} test cases (at least {args.min_test_cases} needed)"
        )
    out["n_test"] = len(cases["target"])
    out["n_real_sequences"] = n_real
    out["n_items"] = cases["n_items"]
    out["subsample"] = spec.subsample
    out["slice_sizes"] = {k: int(v.sum()) for k, v in cases["slices"].items()}
    logger.info(
        "%d real sequences, %d items, %d test cases", n_real, cases["n_items"], len(cases["target"])
    )

    # Baselines do not depend on epsilon or seed.
    if "popularity" in models:

        def pop_fn(h: list[list[int]], _countries: np.ndarray) -> np.ndarray:
            return ev.popularity_scores(ts_real.popularity, len(h))

        out["popularity"] = {"none": _summarise([_metrics(pop_fn, cases, negatives)])}
    if "cooc_knn" in models:
        knn = CooccurrenceKNN(ts_real.real["items"].tolist(), cases["n_items"])
        out["cooc_knn"] = {
            "none": _summarise([_metrics(lambda h, _c: knn.scores(h), cases, negatives)])
        }
    save(out)

    for eps in spec.epsilons:
        cfg = _train_cfg(dataset, eps, args.epochs, spec.subsample)
        if "real_only" in models:
            runs = []
            for seed in args.seeds:
                scores, timing = _fit_and_score(
                    "real_only", ts_real, ts_real.real, cfg, seed, n_real
                )
                runs.append({"seed": seed, **_metrics(scores, cases, negatives), "timing": timing})
            row = _summarise(runs)
            row["used"] = _used(args, cfg, args.seeds, n_real, spec)
            out.setdefault("real_only", {})[eps] = row
            _log_row(spec, "real_only", eps, row)
            save(out)
        if not needs_synthetic or dataset in args.no_synthetic:
            continue
        syn_runs: dict[str, list[dict[str, Any]]] = {
            "synthetic_only": [],
            "real_plus_synthetic": [],
        }
        mix: dict[str, float] = {}
        used: dict[str, dict[str, Any]] = {}
        first_fn: ScoreFn | None = None
        first_timing: dict[str, float] = {}
        for seed in args.seeds:
            gen_seed = seed if args.generator_per_seed else args.seeds[0]
            syn_dir, gen_seconds = _synthetic(args, gen_cleaned, root, eps, gen_seed)
            ts, filtered = _with_synthetic(ts_real, syn_dir)
            key = f"eps{eps}-seed{gen_seed}"
            if gen_seconds:
                filtered["generator_seconds"] = gen_seconds
            out.setdefault("synthetic_filter", {}).setdefault(key, filtered)
            generator = {
                "size": args.gen_size,
                "epochs": args.gen_epochs,
                "n_synthetic": args.n_synthetic,
                "epsilon": eps,
                "shared_by_seeds": not args.generator_per_seed,
                "seeds": list(args.seeds) if args.generator_per_seed else [args.seeds[0]],
            }
            syn = ts.sequences[ts.sequences["source"] == "synthetic"]
            if syn.empty:
                logger.warning("no synthetic sequence survived the filters (eps=%s)", eps)
                continue
            if "synthetic_only" in models:
                # Touches no real record: trained without DP (the generator's epsilon covers it).
                # Early stopping looks at real validation items: only for the non-DP generator.
                syn_cfg = _train_cfg(
                    dataset, "none", args.epochs, spec.subsample, early_stop=eps == "none"
                )
                scores, timing = _fit_and_score(
                    "synthetic_only", ts, syn, syn_cfg, seed, max(1, len(syn))
                )
                syn_runs["synthetic_only"].append(
                    {"seed": seed, **_metrics(scores, cases, negatives), "timing": timing}
                )
                used["synthetic_only"] = _used(args, syn_cfg, args.seeds, len(syn), spec, generator)
            if "real_plus_synthetic" in models:
                if not mix:
                    mix, first_fn, first_timing = _select_mix(args, ts, cfg, n_real)
                if seed == args.seeds[0] and first_fn is not None:
                    scores, timing = first_fn, first_timing
                else:
                    scores, timing = _fit_and_score(
                        "real_plus_synthetic",
                        ts,
                        _mix(ts, mix["weight"], mix["amount"]),
                        cfg,
                        seed,
                        n_real,
                    )
                syn_runs["real_plus_synthetic"].append(
                    {"seed": seed, **_metrics(scores, cases, negatives), "timing": timing}
                )
                n_mixed = len(_mix(ts, mix["weight"], mix["amount"]))
                used["real_plus_synthetic"] = _used(args, cfg, args.seeds, n_mixed, spec, generator)
        for name, runs in syn_runs.items():
            if runs:
                row = _summarise(runs)
                row["used"] = used[name]
                if name == "real_plus_synthetic":
                    row["mix"] = mix
                out.setdefault(name, {})[eps] = row
                _log_row(spec, name, eps, row)
        out["synthetic_effect"] = synthetic_effect(out)
        save(out)
    out["synthetic_effect"] = synthetic_effect(out)
    save(out)
    return out


def _log_row(spec: BlockSpec, model: str, eps: str, row: dict[str, Any]) -> None:
    a = row.get("all", {})
    logger.info(
        "%s %s eps=%s: HR@10 %.4f NDCG@10 %.4f MRR %.4f cov %.3f (sampled HR@10 %.4f)",
        spec.name,
        model,
        eps,
        a.get("hr@10", {}).get("mean", math.nan),
        a.get("ndcg@10", {}).get("mean", math.nan),
        a.get("mrr", {}).get("mean", math.nan),
        a.get("coverage", {}).get("mean", math.nan),
        row.get("sampled", {}).get("hr@10", {}).get("mean", math.nan),
    )


# --------------------------------------------------------------------------------------------
# Tables.


def format_header(results: dict[str, Any]) -> str:
    """The settings every row of the table depends on, in words."""
    s = results.get("settings", {})
    lines = [
        f"seeds {s.get('seeds')} (recommender); epsilons {s.get('epsilons')}; "
        f"jobs {s.get('jobs')}; mix grid weights {s.get('weights')} x amounts {s.get('amounts')} "
        "chosen on validation NDCG@10 (first seed)",
        f"generator: size {s.get('gen_size')}, {s.get('gen_epochs')} epochs, batch "
        f"{s.get('gen_batch_size')} (without DP {NO_DP_BATCH}), max length "
        f"{s.get('gen_max_length')}, "
        f"{s.get('n_synthetic')} sessions, "
        + (
            "one per recommender seed"
            if s.get("generator_per_seed")
            else "one per (dataset, protocol, epsilon) shared by the seeds: the seed spread of "
            "synthetic rows is the recommender's only"
        ),
        "epochs: "
        + (
            f"all fixed to {s['epochs']}"
            if s.get("epochs")
            else "; ".join(
                f"{d} without DP early-stopped on validation NDCG@10 (at most "
                f"{EARLY_STOPPING[d]['epochs']}, "
                f"patience {EARLY_STOPPING[d]['early_stopping_patience']}), "
                f"DP {_dp_epochs(d)}, synthetic_only at an epsilon "
                f"{TRAIN_SETTINGS[d].get('epochs', 5)}"
                for d in s.get("datasets", DATASETS)
                if d in EARLY_STOPPING
            )
        ),
        f"DP rows change {DP_SETTINGS}; subsample blocks change {SUBSAMPLE_SETTINGS}; "
        "customer features (country, activity) "
        + ("on" if results.get("customer_features") else "off"),
    ]
    for dataset, n in s.get("subsample", []) or []:
        lines.append(
            f"{dataset}: full data for the non-private rows; DP and synthetic rows on "
            f"{dataset}_sub{n} ({n} customers drawn uniformly, seed 0), "
            f"{len(s.get('seeds', []))} seeds each"
        )
    return "\n".join("# " + line for line in lines)


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table (mean +- population std over seeds)."""
    lines = [
        f"{'dataset':22} {'protocol':15} {'model':20} {'eps':5} {'slice':10} "
        f"{'HR@10':>15} {'NDCG@10':>15} {'MRR':>15} {'cov':>6} {'sampledHR':>9} {'seeds':>5}"
    ]
    for dataset, protocols in results.get("datasets", {}).items():
        for protocol, block in protocols.items():
            for model in MODELS:
                for eps, row in block.get(model, {}).items():
                    for slice_name in SLICES:
                        m = row.get(slice_name, {})
                        if "hr@10" not in m:
                            continue

                        def cell(key: str, m: dict = m, seeds: int = row.get("n_seeds", 1)) -> str:
                            v = m[key]
                            # one run (the baselines): no spread to show
                            spread = f"+-{v['std']:.4f}" if seeds > 1 else " " * 7
                            return f"{v['mean']:.4f}{spread}"

                        sampled = row["sampled"]["hr@10"]["mean"] if slice_name == "all" else None
                        lines.append(
                            f"{dataset:22} {protocol:15} {model:20} {eps:5} {slice_name:10} "
                            f"{cell('hr@10'):>15} {cell('ndcg@10'):>15} {cell('mrr'):>15} "
                            f"{m['coverage']['mean']:6.3f} "
                            f"{'' if sampled is None else f'{sampled:.4f}':>9} "
                            f"{row.get('n_seeds', 1):>5}"
                        )
    return "\n".join(lines)


def format_effect_table(results: dict[str, Any]) -> str:
    """synthetic_effect of every block: mean +- std of the paired differences and the verdict."""
    lines = [
        f"{'dataset':22} {'protocol':15} {'eps':5} {'slice':10} "
        f"{'dHR@10':>17} {'verdict':20} {'dNDCG@10':>17} {'verdict':20}"
    ]
    for dataset, protocols in results.get("datasets", {}).items():
        for protocol, block in protocols.items():
            for eps, slices in block.get("synthetic_effect", {}).items():
                for slice_name, metrics in slices.items():
                    cells = []
                    for metric in EFFECT_METRICS:
                        e = metrics[metric]
                        cells.append(f"{e['mean']:+.4f}+-{e['std']:.4f}".rjust(17))
                        cells.append(f"{e['verdict']:20}")
                    lines.append(
                        f"{dataset:22} {protocol:15} {eps:5} {slice_name:10} " + " ".join(cells)
                    )
    return "\n".join(lines)


def format_step_time(results: dict[str, Any]) -> str:
    lines = [f"{'dataset':22} {'non-DP ms':>10} {'DP ms':>10} {'ratio':>6} {'ratio CPU':>9}"]
    for dataset, t in results.get("step_time", {}).items():

        def num(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        lines.append(
            f"{dataset:22} {num(t['non_dp_step_ms'], '10.1f'):>10} "
            f"{num(t['dp_step_ms'], '10.1f'):>10} {num(t['dp_ratio_step'], '6.2f'):>6} "
            f"{num(t['dp_ratio_step_cpu'], '9.2f'):>9}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The table: blocks, workers, merging.


def plan_blocks(args: argparse.Namespace) -> tuple[list[BlockSpec], dict[str, str]]:
    """The blocks of the table, longest first, and the (dataset/protocol) ones skipped."""
    subsample = dict(args.subsample or [])
    blocks, skipped = [], {}
    for dataset in args.datasets:
        for protocol in args.protocols:
            if protocol == "temporal" and dataset in NO_REAL_TIME:
                skipped[f"{dataset}/{protocol}"] = "no real timestamps in the data"
                continue
            models, epsilons = tuple(args.models), tuple(args.epsilons)
            if dataset in subsample:
                full_models = tuple(m for m in models if m in NON_PRIVATE_MODELS)
                if full_models and "none" in epsilons:
                    blocks.append(BlockSpec(dataset, protocol, full_models, ("none",)))
                blocks.append(BlockSpec(dataset, protocol, models, epsilons, subsample[dataset]))
            else:
                blocks.append(BlockSpec(dataset, protocol, models, epsilons))
    blocks.sort(key=lambda b: estimate_seconds(args, b), reverse=True)
    return blocks, skipped


def estimate_seconds(args: argparse.Namespace, spec: BlockSpec) -> float:
    """Rough one-thread seconds of a block, from EPOCH_SECONDS (ordering and the printout)."""
    if spec.protocol == "temporal" and spec.dataset in SESSION_UNIT:
        return 60.0
    if spec.key in EPOCH_SECONDS:
        plain, dp = EPOCH_SECONDS[spec.key]
    else:
        plain, dp = EPOCH_SECONDS.get(spec.dataset, (10.0, 30.0))
        if spec.subsample is not None:
            plain, dp = plain * 0.1, dp * 0.1
    evaluation = EVAL_SECONDS.get(spec.dataset, 2.0) * (0.2 if spec.subsample else 1.0)
    seeds = len(args.seeds)
    n_grid = len(args.weights) * len(args.amounts)
    mix = 1.0 + min(args.amounts)
    total = 60.0  # fuse (MiniLM) and the baselines
    for eps in spec.epsilons:
        if args.epochs is None and spec.dataset in EARLY_STOPPING:
            # one validation pass per epoch
            e_plain = EXPECTED_EARLY_EPOCHS[spec.dataset] * (plain + evaluation)
        else:
            e_plain = (args.epochs or TRAIN_SETTINGS[spec.dataset].get("epochs", 5)) * plain
        e_dp = (args.epochs or _dp_epochs(spec.dataset)) * dp
        train = (e_plain if eps == "none" else e_dp) + 3.0  # model build, Opacus wrapping
        if "real_only" in spec.models:
            total += seeds * (train + evaluation)
        if {"synthetic_only", "real_plus_synthetic"} & set(spec.models) and (
            spec.dataset not in args.no_synthetic
        ):
            n_gen = seeds if args.generator_per_seed else 1
            total += n_gen * GENERATOR_EPOCH_SECONDS * args.gen_epochs
            if "synthetic_only" in spec.models:
                total += seeds * (e_plain * 0.6 + evaluation)
            if "real_plus_synthetic" in spec.models:
                total += (n_grid + seeds - 1) * (train * mix + evaluation)
    return total * (0.9 if spec.protocol == "temporal" else 1.0)


def _worker(args: argparse.Namespace, spec: BlockSpec, messages: Any) -> None:
    """Run one block in a worker process, sending each partial block to the parent."""
    global _BLOCK
    _BLOCK = spec.name
    _configure_logging()
    torch.set_num_threads(args.threads)
    try:
        run_protocol(
            args,
            spec.dataset,
            spec.protocol,
            lambda block: messages.put(
                ("partial", spec, json.loads(json.dumps(block, default=float)))
            ),
            spec=spec,
        )
        messages.put(("done", spec, None))
    except InputError as exc:
        messages.put(("skipped", spec, str(exc)))
    except Exception:  # noqa: BLE001 - the parent records the failure and runs the other blocks
        messages.put(("failed", spec, traceback.format_exc()))


class _Results:
    """The results file, rewritten atomically whenever a block reports progress."""

    def __init__(self, args: argparse.Namespace, out: Path, skipped: dict[str, str]) -> None:
        self.args, self.out = args, out
        self.started = time.perf_counter()
        self.previous = json.loads(out.read_text()) if args.merge and out.is_file() else None
        self.results: dict[str, Any] = {"datasets": {}, "skipped": dict(skipped), "blocks": {}}

    def block(self, spec: BlockSpec, status: str, block: dict[str, Any] | None = None) -> None:
        entry = self.results["blocks"].setdefault(spec.name, {})
        entry["status"] = status
        entry["estimate_seconds"] = round(estimate_seconds(self.args, spec))
        entry.setdefault("started_at", time.perf_counter() - self.started)
        if status != "running":
            entry["finished_at"] = time.perf_counter() - self.started
        if block is not None:
            self.results["datasets"].setdefault(spec.key, {})[spec.protocol] = block

    def save(self, complete: bool = False) -> None:
        r = self.results
        r["wall_seconds"] = time.perf_counter() - self.started
        r["complete"] = complete
        r["settings"] = {
            k: v for k, v in vars(self.args).items() if k not in ("cache", "out", "merge")
        }
        r["train_settings"] = TRAIN_SETTINGS
        r["dp_settings"] = DP_SETTINGS
        r["subsample_settings"] = SUBSAMPLE_SETTINGS
        r["protocol_notes"] = PROTOCOL_NOTES
        r["customer_features"] = customer_features_supported()
        r["step_time"] = step_time(r)
        r["published_comparison"] = published_comparison(r)
        written = r
        if self.previous is not None:
            # Runs of different datasets/protocols add up in one file.
            written = json.loads(json.dumps(self.previous))
            for dataset, protocols in r["datasets"].items():
                written.setdefault("datasets", {}).setdefault(dataset, {}).update(protocols)
            written.setdefault("skipped", {}).update(r["skipped"])
            written.setdefault("runs", []).append(
                {"settings": r["settings"], "wall_seconds": r["wall_seconds"]}
            )
            written["step_time"] = step_time(written)
            written["published_comparison"] = published_comparison(written)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(written, indent=1, default=float))
        tmp.replace(self.out)
        self.written = written


def run_table(args: argparse.Namespace) -> dict[str, Any]:
    """Every block of the table, ``args.jobs`` at a time; returns what was written."""
    global _BLOCK
    blocks, skipped = plan_blocks(args)
    results = _Results(args, Path(args.out), skipped)
    estimate = sum(estimate_seconds(args, b) for b in blocks)
    logger.info(
        "%d blocks, longest first: %s; estimate %.0f min of one core (%.0f min on %d jobs)",
        len(blocks),
        ", ".join(f"{b.name} ~{estimate_seconds(args, b) / 60:.0f} min" for b in blocks),
        estimate / 60,
        _makespan([estimate_seconds(args, b) for b in blocks], args.jobs) / 60,
        args.jobs,
    )
    blocks = _prepare(args, blocks, results)
    results.save()
    if args.jobs <= 1:
        for spec in blocks:
            _BLOCK = spec.name
            results.block(spec, "running")
            try:
                block = run_protocol(
                    args,
                    spec.dataset,
                    spec.protocol,
                    lambda b, spec=spec: (results.block(spec, "running", b), results.save()),
                    spec=spec,
                )
                results.block(spec, "done", block)
            except InputError as exc:
                # A dataset that is not on this machine is skipped, with the reason.
                results.results["skipped"][spec.name] = str(exc)
                results.block(spec, "skipped")
                logger.warning("skipping %s: %s", spec.name, exc)
            results.save()
        _BLOCK = "-"
    else:
        _run_parallel(args, blocks, results)
    results.save(complete=True)
    return results.written


def _prepare(
    args: argparse.Namespace, blocks: list[BlockSpec], results: _Results
) -> list[BlockSpec]:
    """Ingest (and subsample) each dataset once, here: workers sharing a cleaned/ would race.

    Returns the blocks whose data is there; the others are recorded as skipped, with the reason.
    """
    cache = Path(args.cache) / code_fingerprint()
    sources = dict(args.source)
    missing: dict[str, str] = {}
    for spec in blocks:
        if spec.key in missing or spec.dataset in missing:
            continue
        try:
            cleaned = _ingest(spec.dataset, cache, sources.get(spec.dataset, SOURCES[spec.dataset]))
            if spec.subsample is not None:
                _subsample_cleaned(cleaned, spec.subsample, cache / spec.key / "cleaned")
        except InputError as exc:
            missing[spec.dataset if spec.subsample is None else spec.key] = str(exc)
            logger.warning("skipping %s: %s", spec.dataset, exc)
    ready = []
    for spec in blocks:
        reason = missing.get(spec.dataset) or missing.get(spec.key)
        if reason is None:
            ready.append(spec)
        else:
            results.results["skipped"][spec.name] = reason
            results.block(spec, "skipped")
    return ready


def _makespan(costs: list[float], jobs: int) -> float:
    """Greedy longest-first finish time of ``costs`` on ``jobs`` workers."""
    workers = [0.0] * max(1, jobs)
    for c in sorted(costs, reverse=True):
        workers[workers.index(min(workers))] += c
    return max(workers) if costs else 0.0


def _run_parallel(args: argparse.Namespace, blocks: list[BlockSpec], results: _Results) -> None:
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch threads
    messages = ctx.Queue()
    pending = list(blocks)
    running: dict[str, Any] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            spec = pending.pop(0)
            proc = ctx.Process(target=_worker, args=(args, spec, messages), name=spec.name)
            proc.start()
            running[spec.name] = (spec, proc)
            results.block(spec, "running")
            logger.info("started %s (pid %d)", spec.name, proc.pid)
        try:
            kind, spec, payload = messages.get(timeout=2.0)
        except queue.Empty:
            for name, (spec, proc) in list(running.items()):
                if not proc.is_alive():
                    # Died without a last message (killed, out of memory): keep what it saved.
                    proc.join()
                    results.block(spec, "failed")
                    results.results["blocks"][name]["error"] = f"exit code {proc.exitcode}"
                    logger.error("%s died with exit code %s", name, proc.exitcode)
                    del running[name]
                    results.save()
            continue
        if kind == "partial":
            results.block(spec, "running", payload)
        elif kind == "done":
            results.block(spec, "done")
            logger.info("finished %s", spec.name)
        elif kind == "skipped":
            results.results["skipped"][spec.name] = payload
            results.block(spec, "skipped")
            logger.warning("skipping %s: %s", spec.name, payload)
        else:
            results.block(spec, "failed")
            results.results["blocks"][spec.name]["error"] = payload
            logger.error("%s failed:\n%s", spec.name, payload)
        if kind != "partial":
            _, proc = running.pop(spec.name)
            proc.join()
        results.save()


# --------------------------------------------------------------------------------------------
# Command line.


def _dataset_int(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if name not in DATASETS or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected DATASET=N with DATASET in {DATASETS}, N >= 1")
    return name, int(value)


def _dataset_path(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    if name not in DATASETS or not value:
        raise argparse.ArgumentTypeError(f"expected DATASET=PATH with DATASET in {DATASETS}")
    return name, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options; every default is saved in the results' ``settings``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--epsilons", nargs="+", choices=EPSILONS, default=list(EPSILONS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--epochs", type=int, default=None, help="override every recommender's epochs")
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        default=[0.25, 1.0],
        help="synthetic weights tried on the validation split",
    )
    p.add_argument(
        "--amounts",
        nargs="+",
        type=float,
        default=[0.5],
        help="synthetic sequences per real one tried on the validation split",
    )
    p.add_argument("--n-synthetic", type=int, default=2000)
    # The demo's generator: at epsilon 4 a tiny one (3 epochs) stayed at the uniform
    # distribution's held-out item loss (8.18 nats against ln(3,445) = 8.13).
    p.add_argument("--gen-size", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--gen-epochs", type=int, default=3)
    p.add_argument("--gen-batch-size", type=int, default=256, help="generator's expected batch")
    p.add_argument(
        "--gen-max-length",
        type=int,
        default=32,
        help="generator tokens per session; the recommenders read the last 21 items (Beauty 51) "
        "only, and sampling time grows with it",
    )
    p.add_argument(
        "--generator-per-seed",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train a generator per recommender seed (else the first seed's for all)",
    )
    p.add_argument(
        "--no-synthetic",
        nargs="*",
        choices=DATASETS,
        default=[],
        help="datasets run without synthetic models",
    )
    p.add_argument(
        "--subsample",
        nargs="*",
        type=_dataset_int,
        default=[("amazon_beauty", 1500)],
        metavar="DATASET=N",
        help="run the dataset's DP and synthetic rows on N customers (its full data keeps the "
        "non-private rows); default amazon_beauty=1500; none given: DP rows on the full data",
    )
    p.add_argument(
        "--source",
        nargs="*",
        type=_dataset_path,
        default=[],
        metavar="DATASET=PATH",
        help="read a dataset from PATH instead of its default source",
    )
    p.add_argument(
        "--min-test-cases",
        type=int,
        default=MIN_TEST_CASES,
        help="a block with fewer test cases is skipped, with the reason",
    )
    p.add_argument("--jobs", type=int, default=2, help="blocks run at once, in worker processes")
    p.add_argument("--cache", default=str(CACHE))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--merge", action="store_true", help="merge into an existing --out file")
    p.add_argument(
        "--show",
        action="store_true",
        help="print the tables of an existing --out file, run nothing",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _configure_logging()
    if args.show:
        out = Path(args.out)
        if not out.is_file():
            print(f"--show: no results file at {out}", file=sys.stderr)
            return 2
        written = json.loads(out.read_text())
    else:
        torch.set_num_threads(args.threads)
        logger.info("settings: %s", {k: v for k, v in vars(args).items()})
        written = run_table(args)
    print(format_header(written))
    print(
        "# mean +- std over seeds (no spread shown for one run); eps 'none' = no DP; "
        "sampledHR = HR@10 of the target against 99 sampled negatives (papers' protocol)"
    )
    print(format_table(written))
    print()
    print(
        "# synthetic_effect: real_plus_synthetic minus real_only, paired by seed; 'helps' / "
        f"'hurts' when |mean| > {EFFECT_STD_FACTOR:g} x the sample std of the differences "
        f"(at least {EFFECT_MIN_SEEDS} seeds)"
    )
    print(format_effect_table(written))
    print()
    print("# training step time (mean over rows)")
    print(format_step_time(written))
    print()
    print("# against published figures")
    print(format_published(written))
    print(f"wall time {written['wall_seconds']:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    # Run as the module bench.recommender, not as __main__: worker processes then unpickle the
    # blocks and messages as that module's objects, and log under its name.
    from bench import recommender

    sys.exit(recommender.main())
