"""Recommender benchmark: baselines and recommenders, with and without DP and synthetic data.

    python -m bench.recommender                      # the whole table (hours on 2 CPU cores)
    python -m bench.recommender --datasets online_retail --epsilons none 4 --seeds 0 1 2

For each dataset and protocol it builds the data once (ingest, cached), then per epsilon trains
the generator (``components.generate``, cached per dataset, protocol, epsilon and seed), fuses
real and synthetic sequences (``components.fuse``) and trains and evaluates:

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
for comparison with papers. Results: mean and std over seeds in
``bench/results/recommender.json``, keyed dataset -> protocol -> model -> epsilon.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from components.common import artifacts as art
from components.common.errors import InputError
from components.common.privacy import default_delta
from components.fuse import logic as fuse
from components.fuse.config import FuseConfig
from components.train import evaluate as ev
from components.train.baselines import CooccurrenceKNN
from components.train.config import TrainConfig
from components.train.data import TrainingSet, load_training_set, next_item_records
from components.train.logic import fit

logger = logging.getLogger(__name__)

DATASETS = ("online_retail", "amazon_beauty", "diginetica")
PROTOCOLS = ("leave_last_out", "temporal")
EPSILONS = ("none", "1", "4", "8")
MODELS = ("popularity", "cooc_knn", "real_only", "synthetic_only", "real_plus_synthetic")
METRIC_KEYS = ("hr@10", "ndcg@10", "mrr", "coverage")
RESULTS = Path("bench/results/recommender.json")
CACHE = Path(".recsynth/bench-recommender")
K = 10
COLD_USER_MAX = 3
TEMPORAL_QUANTILE = 0.8
# Datasets whose timestamps are synthetic (the loader invents them): no temporal protocol.
NO_REAL_TIME = {"amazon_beauty"}

# Recommender settings per dataset: Beauty uses SASRec's published shape (max length 50,
# width 64, 2 blocks, dropout 0.5); the shop datasets the train step's defaults.
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
        # SASRec's tying: sampled HR@10 0.4935 after 4 epochs, against 0.451 (3 epochs) and
        # 0.434 (12 epochs) untied; only without DP (the DP rows fall back to untied).
        "tie_output": True,
    },
    "online_retail": {"epochs": 5, "max_history": 20},
    "diginetica": {"epochs": 5, "max_history": 20},
}
INGEST_SETTINGS: dict[str, dict[str, Any]] = {
    "online_retail": {"dataset": "online_retail", "min_items_per_customer": 2, "price_bands": 5},
    "amazon_beauty": {"dataset": "amazon_beauty", "min_items_per_customer": 1, "price_bands": 1},
    "diginetica": {"dataset": "diginetica", "min_items_per_customer": 2, "price_bands": 1},
}
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
    "mix": "synthetic weight and amount chosen on validation NDCG@10 with the first seed",
}
SOURCES = {"online_retail": "bundled", "amazon_beauty": "shared", "diginetica": "shared"}


def _ingest(dataset: str, cache: Path) -> Path:
    """``cleaned/`` of a dataset, built once per cache."""
    from components.ingest import logic as ingest
    from components.ingest.config import IngestConfig

    out = cache / dataset / "cleaned"
    if not (out / art.SEQUENCES).is_file():
        ingest.run(IngestConfig(**INGEST_SETTINGS[dataset]), SOURCES[dataset], out)
    return out


def _cutoff(cleaned: Path) -> pd.Timestamp:
    events = pd.read_parquet(cleaned / art.EVENTS, columns=["ts"])
    return pd.Timestamp(events["ts"].quantile(TEMPORAL_QUANTILE)).floor("D")


def _cleaned_before(cleaned: Path, cutoff: pd.Timestamp, out: Path) -> Path:
    """A ``cleaned/`` holding only the purchases before ``cutoff`` (what the generator sees)."""
    if (out / art.SEQUENCES).is_file():
        return out
    with art.atomic_dir(out) as tmp:
        for name in (art.ITEMS, art.CUSTOMERS):
            shutil.copyfile(cleaned / name, tmp / name)
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
) -> Path:
    """Synthetic sessions from components.generate at ``eps``, cached per (eps, seed)."""
    from components.generate import logic as generate
    from components.generate.config import GenerateConfig

    out = root / f"synthetic-eps{eps}-seed{seed}"
    if (out / art.SYNTHETIC_SESSIONS).is_file():
        return out
    dp = {"enabled": False} if eps == "none" else {"target_epsilon": float(eps)}
    cfg = GenerateConfig.model_validate(
        {
            "size": args.gen_size,
            "epochs": args.gen_epochs,
            "n_synthetic": args.n_synthetic,
            "dp": dp,
            "quality_report": False,
            "canaries": {"enabled": False, "holdout_fraction": 0.0},
        }
    )
    started = time.perf_counter()
    generate.run(cfg, gen_cleaned, root / f"generator-eps{eps}-seed{seed}", out, seed=seed)
    logger.info("generator eps=%s seed=%d: %.0f s", eps, seed, time.perf_counter() - started)
    return out


def _training_set(cleaned: Path, synthetic: Path, out: Path, cutoff: pd.Timestamp | None) -> Path:
    """fuse's training_set/ (real sequences, item features, eval cases), built once."""
    if not (out / art.TRAIN_SEQUENCES).is_file():
        cfg = FuseConfig(cutoff=cutoff.to_pydatetime() if cutoff is not None else None)
        fuse.run(cfg, cleaned, synthetic, out, seed=0)
    return out


def _with_synthetic(ts_real: TrainingSet, synthetic_dir: Path) -> tuple[TrainingSet, dict]:
    """``ts_real`` plus the synthetic sessions that pass fuse's filters (weight 1).

    The same filters as the fuse step (fuse.map_synthetic with FuseConfig's defaults), applied
    here so the MiniLM item features are not recomputed for every generator.
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
    sequences = pd.concat([real, frame], ignore_index=True)
    ts = dataclasses.replace(ts_real, sequences=sequences)
    return ts, {"read": len(synthetic), "kept": len(frame), "dropped": dropped}


def _test_cases(
    ts: TrainingSet, cleaned: Path, protocol: str, cutoff: pd.Timestamp | None
) -> dict[str, Any]:
    """Test histories, targets, everything each customer touched, and the slice masks."""
    n_items = len(ts.item_map)
    trained = ts.popularity > 0
    if protocol == "leave_last_out":
        e = ts.eval_cases
        hist = [list(h) + [int(v)] for h, v in zip(e["history"], e["valid_item"], strict=True)]
        target = [int(t) for t in e["test_item"]]
        seen = [h + [t] for h, t in zip(hist, target, strict=True)]
        cold_item = np.array([not trained[t] for t in target])
    else:
        seqs = pd.read_parquet(cleaned / art.SEQUENCES)
        items = pd.read_parquet(cleaned / art.ITEMS, columns=["item_id", "first_seen"])
        first_seen = dict(zip(items["item_id"].astype(str), items["first_seen"], strict=True))
        hist, target, seen, cold_item = [], [], [], []
        for its, times in zip(seqs["items"], seqs["ts"], strict=True):
            times = pd.to_datetime(pd.Series(list(times)), utc=True).to_numpy()
            before = [str(i) for i, t in zip(its, times, strict=True) if t < cutoff]
            after = [str(i) for i, t in zip(its, times, strict=True) if t >= cutoff]
            if not before or not after:
                continue
            hist.append(ts.item_map.encode(before))
            target.append(ts.item_map.index(after[0]))
            seen.append(ts.item_map.encode([str(i) for i in its]))
            cold_item.append(first_seen[after[0]] >= cutoff)
        cold_item = np.array(cold_item, dtype=bool)
    cold_user = np.array([len(h) <= COLD_USER_MAX for h in hist], dtype=bool)
    return {
        "hist": hist,
        "target": target,
        "seen": seen,
        "slices": {
            "all": np.ones(len(hist), dtype=bool),
            "cold_users": cold_user,
            "cold_items": cold_item,
        },
        "n_items": n_items,
    }


def _valid_cases(ts: TrainingSet) -> tuple[list[list[int]], list[int]]:
    e = ts.eval_cases
    return [list(h) for h in e["history"]], [int(v) for v in e["valid_item"]]


CHUNK = 2048  # test cases scored at once: a full score matrix of Beauty would take GBs


def _ranked(
    score_fn: Callable[[list[list[int]]], np.ndarray],
    hist: list[list[int]],
    target: list[int],
    negatives: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Full-catalogue ranks, top-k lists and (with negatives) sampled ranks, chunk by chunk."""
    ranks, recommended, sampled = [], [], []
    for start in range(0, len(hist), CHUNK):
        h, t = hist[start : start + CHUNK], target[start : start + CHUNK]
        scores = np.asarray(score_fn(h), dtype=np.float64)
        ranks.append(ev.ranks(scores, h, t))
        recommended.append(ev.top_k(scores, h, K))
        if negatives is not None:
            sampled.append(ev.sampled_ranks(scores, t, negatives[start : start + CHUNK]))
    cat = (lambda xs: np.concatenate(xs)) if hist else (lambda xs: np.zeros(0, dtype=np.int64))
    return cat(ranks), cat(recommended), cat(sampled) if negatives is not None else None


def _metrics(
    score_fn: Callable[[list[list[int]]], np.ndarray],
    cases: dict[str, Any],
    negatives: np.ndarray,
) -> dict[str, Any]:
    rank, recommended, sampled = _ranked(score_fn, cases["hist"], cases["target"], negatives)
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


def _train_cfg(dataset: str, eps: str, epochs: int | None) -> TrainConfig:
    settings = dict(TRAIN_SETTINGS[dataset])
    if epochs is not None:
        settings["epochs"] = epochs
    settings["dp"] = (
        {"enabled": False} if eps == "none" else {"enabled": True, "target_epsilon": float(eps)}
    )
    if eps != "none":
        settings["tie_output"] = False  # ghost clipping cannot clip a layer used twice
    return TrainConfig.model_validate(settings)


def _fit_and_score(
    name: str,
    ts: TrainingSet,
    sequences: pd.DataFrame,
    cfg: TrainConfig,
    seed: int,
    n_units: int,
) -> tuple[Callable[[list[list[int]]], np.ndarray], dict[str, float]]:
    data = next_item_records(
        sequences["items"].tolist(), sequences["weight"].tolist(), cfg.max_history
    )
    result = fit(
        name,
        data,
        ts,
        cfg,
        seed=seed,
        n_units=n_units,
        delta=cfg.dp.delta or default_delta(n_units),
        training=name,
    )
    steps = max(1, result.record.steps)
    timing = {
        "train_seconds": float(sum(result.epoch_seconds)),
        "step_ms": 1000 * float(sum(result.epoch_seconds)) / steps,
        "step_cpu_ms": 1000 * float(sum(result.epoch_cpu_seconds)) / steps,
        "epsilon": result.record.epsilon,
    }

    def score_fn(histories: list[list[int]]) -> np.ndarray:
        return ev.model_scores(result.model, histories, max_history=cfg.max_history, batch_size=512)

    return score_fn, timing


def _mix(ts: TrainingSet, weight: float, amount: float) -> pd.DataFrame:
    """Real sequences plus the first ``amount`` x n_real synthetic ones at ``weight``."""
    real = ts.real
    syn = ts.sequences[ts.sequences["source"] == "synthetic"]
    syn = syn.iloc[: int(round(amount * len(real)))].assign(weight=weight)
    return pd.concat([real, syn], ignore_index=True)


def _select_mix(
    args: argparse.Namespace, ts: TrainingSet, cfg: TrainConfig, n_real: int
) -> dict[str, float]:
    """Synthetic weight and amount with the best validation NDCG@10 (first seed only)."""
    hist, target = _valid_cases(ts)
    best: dict[str, float] = {}
    for weight in args.weights:
        for amount in args.amounts:
            score_fn, _ = _fit_and_score(
                "select", ts, _mix(ts, weight, amount), cfg, args.seeds[0], n_real
            )
            ndcg = ev.ranking_metrics(_ranked(score_fn, hist, target)[0], K)[f"ndcg@{K}"]
            logger.info("mix weight=%.2f amount=%.2f: valid NDCG@10 %.4f", weight, amount, ndcg)
            if not best or ndcg > best["valid_ndcg@10"]:
                best = {"weight": weight, "amount": amount, "valid_ndcg@10": ndcg}
    return best


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every metric of every slice."""
    out: dict[str, Any] = {"n_seeds": len(runs)}
    for part, values in runs[0].items():
        if isinstance(values, dict):
            out[part] = {}
            for key, v in values.items():
                xs = [r[part][key] for r in runs if r[part].get(key) is not None]
                if key == "n" or not xs:
                    out[part][key] = v
                elif isinstance(v, (int, float)):
                    out[part][key] = {"mean": float(np.mean(xs)), "std": float(np.std(xs))}
        elif isinstance(values, (int, float)):
            out[part] = {
                "mean": float(np.mean([r[part] for r in runs])),
                "std": float(np.std([r[part] for r in runs])),
            }
    return out


def run_protocol(
    args: argparse.Namespace,
    dataset: str,
    protocol: str,
    save: Callable[[dict[str, Any]], None] = lambda block: None,
) -> dict[str, Any]:
    """Every model and epsilon of one dataset under one protocol.

    ``save`` is called with the block so far after the baselines and after each epsilon, so an
    interrupted run keeps what it finished.
    """
    cache = Path(args.cache)
    cleaned = _ingest(dataset, cache)
    root = cache / dataset / protocol
    cutoff = _cutoff(cleaned) if protocol == "temporal" else None
    gen_cleaned = _cleaned_before(cleaned, cutoff, root / "cleaned-before") if cutoff else cleaned
    out: dict[str, Any] = {"cutoff": cutoff.isoformat() if cutoff is not None else None}
    models = [m for m in MODELS if m in args.models]
    needs_synthetic = {"synthetic_only", "real_plus_synthetic"} & set(models)

    base_ts_dir = _training_set(
        cleaned, _empty_synthetic(root / "no-synthetic"), root / "training-real", cutoff
    )
    ts_real = load_training_set(base_ts_dir)
    cases = _test_cases(ts_real, cleaned, protocol, cutoff)
    negatives = ev.sample_negatives(cases["seen"], cases["n_items"], 99, seed=0)
    n_real = len(ts_real.real)
    out["n_test"] = len(cases["target"])
    out["n_real_sequences"] = n_real
    out["slice_sizes"] = {k: int(v.sum()) for k, v in cases["slices"].items()}

    # Baselines do not depend on epsilon or seed.
    if "popularity" in models:

        def pop_fn(h: list[list[int]]) -> np.ndarray:
            return ev.popularity_scores(ts_real.popularity, len(h))

        out["popularity"] = {"none": _summarise([_metrics(pop_fn, cases, negatives)])}
    if "cooc_knn" in models:
        knn = CooccurrenceKNN(ts_real.real["items"].tolist(), cases["n_items"])
        out["cooc_knn"] = {"none": _summarise([_metrics(knn.scores, cases, negatives)])}

    save(out)
    for eps in args.epsilons:
        save(out)
        cfg = _train_cfg(dataset, eps, args.epochs)
        if "real_only" in models:
            runs = []
            for seed in args.seeds:
                scores, timing = _fit_and_score(
                    "real_only", ts_real, ts_real.real, cfg, seed, n_real
                )
                runs.append({**_metrics(scores, cases, negatives), "timing": timing})
            out.setdefault("real_only", {})[eps] = _summarise(runs)
            _log_row(dataset, protocol, "real_only", eps, out["real_only"][eps])
            save(out)
        if not needs_synthetic or dataset in args.no_synthetic:
            continue
        syn_runs: dict[str, list[dict[str, Any]]] = {
            "synthetic_only": [],
            "real_plus_synthetic": [],
        }
        mix: dict[str, float] = {}
        for seed in args.seeds:
            gen_seed = seed if args.generator_per_seed else args.seeds[0]
            syn_dir = _synthetic(args, gen_cleaned, root, eps, gen_seed)
            ts, filtered = _with_synthetic(ts_real, syn_dir)
            out.setdefault("synthetic_filter", {})[f"eps{eps}-seed{gen_seed}"] = filtered
            syn = ts.sequences[ts.sequences["source"] == "synthetic"]
            if syn.empty:
                logger.warning("no synthetic sequence survived the filters (eps=%s)", eps)
                continue
            if "synthetic_only" in models:
                # Touches no real record: trained without DP (the generator's epsilon covers it).
                syn_cfg = _train_cfg(dataset, "none", args.epochs)
                scores, timing = _fit_and_score(
                    "synthetic_only", ts, syn, syn_cfg, seed, max(1, len(syn))
                )
                syn_runs["synthetic_only"].append(
                    {**_metrics(scores, cases, negatives), "timing": timing}
                )
            if "real_plus_synthetic" in models:
                if not mix:
                    mix = _select_mix(args, ts, cfg, n_real)
                scores, timing = _fit_and_score(
                    "real_plus_synthetic",
                    ts,
                    _mix(ts, mix["weight"], mix["amount"]),
                    cfg,
                    seed,
                    n_real,
                )
                syn_runs["real_plus_synthetic"].append(
                    {**_metrics(scores, cases, negatives), "timing": timing}
                )
        for name, runs in syn_runs.items():
            if runs:
                out.setdefault(name, {})[eps] = _summarise(runs)
                if name == "real_plus_synthetic":
                    out[name][eps]["mix"] = mix
                _log_row(dataset, protocol, name, eps, out[name][eps])
    save(out)
    return out


def _log_row(dataset: str, protocol: str, model: str, eps: str, row: dict[str, Any]) -> None:
    a = row.get("all", {})
    logger.info(
        "%s %s %s eps=%s: HR@10 %.4f NDCG@10 %.4f MRR %.4f cov %.3f (sampled HR@10 %.4f)",
        dataset,
        protocol,
        model,
        eps,
        a.get("hr@10", {}).get("mean", math.nan),
        a.get("ndcg@10", {}).get("mean", math.nan),
        a.get("mrr", {}).get("mean", math.nan),
        a.get("coverage", {}).get("mean", math.nan),
        row.get("sampled", {}).get("hr@10", {}).get("mean", math.nan),
    )


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table (mean +- std over seeds)."""
    lines = [
        f"{'dataset':14} {'protocol':15} {'model':20} {'eps':5} {'slice':10} "
        f"{'HR@10':>15} {'NDCG@10':>15} {'MRR':>15} {'cov':>6} {'sampledHR':>9}"
    ]
    for dataset, protocols in results.get("datasets", {}).items():
        for protocol, block in protocols.items():
            for model in MODELS:
                for eps, row in block.get(model, {}).items():
                    for slice_name in ("all", "cold_users", "cold_items"):
                        m = row.get(slice_name, {})
                        if "hr@10" not in m:
                            continue

                        def cell(key: str, m: dict = m) -> str:
                            v = m[key]
                            return f"{v['mean']:.4f}+-{v['std']:.4f}"

                        sampled = row["sampled"]["hr@10"]["mean"] if slice_name == "all" else None
                        lines.append(
                            f"{dataset:14} {protocol:15} {model:20} {eps:5} {slice_name:10} "
                            f"{cell('hr@10'):>15} {cell('ndcg@10'):>15} {cell('mrr'):>15} "
                            f"{m['coverage']['mean']:6.3f} "
                            f"{'' if sampled is None else f'{sampled:.4f}':>9}"
                        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
        default=[0.5, 1.0],
        help="synthetic sequences per real one tried on the validation split",
    )
    p.add_argument("--n-synthetic", type=int, default=3000)
    p.add_argument("--gen-size", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--gen-epochs", type=int, default=3)
    p.add_argument(
        "--generator-per-seed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train a generator per recommender seed (else the first seed's for all)",
    )
    p.add_argument(
        "--no-synthetic",
        nargs="*",
        choices=DATASETS,
        default=["amazon_beauty"],
        help="datasets run without synthetic models (default: Beauty, for time)",
    )
    p.add_argument("--cache", default=str(CACHE))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true", help="merge into an existing --out file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results: dict[str, Any] = {"datasets": {}, "skipped": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if args.merge and out.is_file() else None

    def save(partial: bool) -> None:
        results["wall_seconds"] = time.perf_counter() - started
        results["complete"] = not partial
        results["settings"] = {
            k: v for k, v in vars(args).items() if k not in ("cache", "out", "threads")
        }
        results["train_settings"] = TRAIN_SETTINGS
        results["protocol_notes"] = PROTOCOL_NOTES
        written = results
        if previous is not None:
            # Runs of different datasets/protocols (e.g. in parallel) add up in one file.
            written = json.loads(json.dumps(previous))
            for dataset, protocols in results["datasets"].items():
                written.setdefault("datasets", {}).setdefault(dataset, {}).update(protocols)
            written.setdefault("skipped", {}).update(results["skipped"])
            written.setdefault("runs", []).append(
                {"settings": results["settings"], "wall_seconds": results["wall_seconds"]}
            )
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(written, indent=1, default=float))
        tmp.replace(out)

    for dataset in args.datasets:
        for protocol in args.protocols:
            if protocol == "temporal" and dataset in NO_REAL_TIME:
                results["skipped"][f"{dataset}/{protocol}"] = "no real timestamps in the data"
                continue

            def save_block(block: dict[str, Any], dataset: str = dataset, protocol: str = protocol):
                results["datasets"].setdefault(dataset, {})[protocol] = block
                save(partial=True)

            try:
                run_protocol(args, dataset, protocol, save_block)
            except InputError as exc:
                # A dataset that is not on this machine is skipped, with the reason.
                results["skipped"][f"{dataset}/{protocol}"] = str(exc)
                logger.warning("skipping %s/%s: %s", dataset, protocol, exc)
    save(partial=False)
    print(format_table(results))
    print(f"wall time {results['wall_seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
