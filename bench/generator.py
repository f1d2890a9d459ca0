"""Generator benchmark: quality at epsilon 1, 4, 8 and without DP, and the cost of DP-SGD.

``python -m bench.generator`` (``make bench-generator``):

1. ingests the bundled Online Retail sample with the demo's ingest settings;
2. trains the demo generator (configs/demo.yaml's generate section) at each target epsilon and
   once without DP, and reads each run's quality report (synthetic/quality.json: fidelity,
   utility, privacy against the customers held out of training). The DP rows use the config's
   batch; the no-DP row trains the same epochs with batches of ``NO_DP_BATCH`` (many more
   steps: plain SGD needs no large batch to drown noise). Each row records its steps, batch,
   epochs and learning rate (also under ``training_budget``);
   then, per row, draws condition tokens at each of ``CONDITION_TEMPERATURES`` and scores their
   JSD (country, month, band) against a validation half of the held-out customers; the pick
   over the DP rows is ``condition_temperature`` (the test half's figures sit beside it,
   unused for the choice);
3. times DP-SGD steps (Opacus, the configured clipping) against non-private steps of the same
   model on the same fixed batch of real records, each mode in its own fresh process so that its
   peak resident memory is its own;
4. adds GENX's ``tokens_per_s`` (ONNX against torch generate) from
   ``bench.generator_speed.measure`` when that module is there;

then prints one table and writes ``bench/results/generator.json`` (keys ``quality`` per
epsilon, ``dp_step_ratio``, ``dp_step`` details with peak memory, ``tokens_per_s``).

``--quick`` trains one epoch on 1,000 synthetic sessions per setting (a smoke run of the whole
bench, not figures to publish).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "generator.json"
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
EPSILONS: tuple[float | None, ...] = (1.0, 4.0, 8.0, None)  # None: trained without DP
STEP_REPEATS = 6  # timed steps per mode, after one warm-up step
# The no-DP row trains the same number of epochs with ordinary small batches: DP-SGD needs large
# batches to drown its noise, plain SGD does not, and 36 large steps left the first no-DP row
# under-trained. Adam's learning rate is scaled by sqrt(batch ratio) from the DP setting.
NO_DP_BATCH = 32
# Condition temperatures tried on the validation half of the held-out customers.
CONDITION_TEMPERATURES = (1.0, 1.25, 1.5, 2.0)
CONDITION_DRAWS = 3000  # sampled condition sets per temperature (items are not decoded)
TABLE_KEYS = (
    ("jsd_item_popularity", "JSD item"),
    ("jsd_length", "JSD len"),
    ("jsd_country", "JSD ctry"),
    ("jsd_month", "JSD month"),
    ("transition_recall", "trans rec"),
    ("catalogue_coverage", "cat cov"),
    ("mean_length", "mean len"),
    ("top_country_share", "top ctry"),
    ("hr@10_synthetic_only", "HR syn"),
    ("hr@10_real_only", "HR real"),
    ("rec_hr@10_synthetic_only", "HR syn R"),
    ("rec_hr@10_real_only", "HR real R"),
    ("rec_hr@10_popularity", "HR pop"),
    ("exact_copy_rate_train", "exact tr"),
    ("exact_copy_rate_held_out", "exact ho"),
    ("near_copy_rate_train", "near tr"),
    ("near_copy_rate_held_out", "near ho"),
)


def _label(epsilon: float | None) -> str:
    return "no_dp" if epsilon is None else f"eps_{epsilon:g}"


def _configs(quick: bool) -> tuple[Any, Any]:
    from components.common.config import load_config

    cfg = load_config(DEMO_CONFIG)
    gen = cfg.generate
    if quick:
        gen = gen.model_copy(update={"epochs": 1, "n_synthetic": 1000})
    return cfg.ingest, gen


def no_dp_batch(batch_size: int, learning_rate: float) -> tuple[int, float]:
    """The batch and learning rate a non-DP generator trains with, from the DP settings.

    At most ``NO_DP_BATCH``; when cut, Adam's rate is scaled by sqrt(new batch / old batch).
    """
    if batch_size <= NO_DP_BATCH:
        return batch_size, learning_rate
    return NO_DP_BATCH, learning_rate * (NO_DP_BATCH / batch_size) ** 0.5


def _generate_config(base: Any, epsilon: float | None) -> Any:
    from components.generate.config import GenerateConfig

    raw = base.model_dump()
    raw["dp"]["enabled"] = epsilon is not None
    if epsilon is not None:
        raw["dp"]["target_epsilon"] = epsilon
    else:
        raw["batch_size"], raw["learning_rate"] = no_dp_batch(
            raw["batch_size"], raw["learning_rate"]
        )
    return GenerateConfig.model_validate(raw)


def _validation_split(held: list[Any], seed: int) -> tuple[list[Any], list[Any]]:
    """Held-out sessions cut in two by a seeded hash of their position: validation, test."""
    import hashlib

    val, test = [], []
    for pos, session in enumerate(held):
        digest = hashlib.sha256(f"condition-temperature:{seed}:{pos}".encode()).digest()
        (val if digest[0] < 128 else test).append(session)
    return val, test


def _condition_jsd(sessions: list[Any], reference: list[Any]) -> dict[str, float]:
    """JSD of country, month and price band (where present) and their mean."""
    from components.generate.quality import _counts, jsd

    out: dict[str, float] = {}
    for name in ("country", "month", "price_band"):
        mine = [getattr(s, name) for s in sessions if getattr(s, name) is not None]
        theirs = [getattr(s, name) for s in reference if getattr(s, name) is not None]
        if mine and theirs:
            support = sorted(set(mine) | set(theirs))
            out[f"jsd_{name}"] = round(jsd(_counts(mine, support), _counts(theirs, support)), 5)
    out["mean"] = round(sum(out.values()) / len(out), 5)
    return out


def condition_temperature_grid(
    cleaned: Path, model_dir: Path, cfg: Any, *, seed: int, draws: int = CONDITION_DRAWS
) -> dict[str, Any]:
    """Condition JSD per condition temperature, on held-out real sessions never trained on.

    The held-out customers (the quality report's reference) are cut in two: the temperature is
    picked on the validation half; the test half's figures are recorded beside it, never used
    to pick. Only the condition tokens matter here, so each draw decodes a single item.
    """
    from components.generate import logic
    from components.generate.model import load_model
    from components.generate.sample import sample_sessions
    from components.generate.tokenizer import ItemVocab

    vocab = ItemVocab.load(model_dir)
    sequences, _ = logic.read_sequences(cleaned, with_ts=True)
    bands = logic.read_price_bands(cleaned) if vocab.price_bands is not None else None
    held_records = logic.customer_records(
        logic._held_out_part(sequences, cfg, seed=seed),
        vocab,
        bands=bands,
        session_split=cfg.session_split,
        max_sequences=cfg.max_sequences_per_customer,
        max_tokens=cfg.max_tokens_per_customer,
    )
    val, test = _validation_split(logic._decode_records(vocab, held_records), seed)
    model = load_model(model_dir)
    grid: dict[str, Any] = {}
    for temperature in CONDITION_TEMPERATURES:
        drawn = sample_sessions(
            model,
            vocab,
            draws,
            seed=seed + 1,  # not the synthetic set's draws
            condition_temperature=temperature,
            max_items=1,
            batch_size=1000,
        )
        grid[f"{temperature:g}"] = {
            "validation": _condition_jsd(drawn, val),
            "test": _condition_jsd(drawn, test),
        }
    pick = min(grid, key=lambda t: grid[t]["validation"]["mean"])
    return {
        "n_validation": len(val),
        "n_test": len(test),
        "draws": draws,
        "grid": grid,
        "pick": float(pick),
    }


def _quality_run(cleaned: Path, work: Path, raw: dict[str, Any], epsilon: float | None, seed: int):
    """One setting (runs in a worker process): train, sample, and read the quality headline."""
    from components.generate import logic
    from components.generate.config import GenerateConfig

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(message)s")
    cfg = _generate_config(GenerateConfig.model_validate(raw), epsilon)
    label = _label(epsilon)
    started = time.perf_counter()
    summary = logic.run(
        cfg, cleaned, work / label / "generator_model", work / label / "synthetic", seed=seed
    )
    headline = dict(summary["quality"] or {})
    headline["top_country_share"] = summary["synthetic_top_country_share"]
    grid = condition_temperature_grid(cleaned, work / label / "generator_model", cfg, seed=seed)
    return label, {
        "target_epsilon": epsilon,
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "learning_rate": cfg.learning_rate,
        "condition_temperature": cfg.condition_temperature,
        "condition_temperature_grid": grid,
        "epsilon": summary["epsilon"],
        "delta": summary["delta"],
        "n_customers": summary["n_customers"],
        "steps": summary["steps"],
        "noise_multiplier": summary["noise_multiplier"],
        "final_train_loss": summary["final_train_loss"],
        "train_wall_s": summary["train_wall_s"],
        "wall_s": round(time.perf_counter() - started, 1),
        **headline,
    }


def quality_runs(cleaned: Path, work: Path, base: Any, *, seed: int, jobs: int) -> dict[str, Any]:
    """Train and sample at every epsilon (``jobs`` at a time, one torch thread each)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    raw = base.model_dump(mode="json")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_quality_run, cleaned, work, raw, eps, seed) for eps in EPSILONS]
        done = dict(f.result() for f in futures)
    return {_label(eps): done[_label(eps)] for eps in EPSILONS}


def _step_worker(args: argparse.Namespace) -> None:
    """Child process: time ``STEP_REPEATS`` training steps of one mode; print JSON."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from components.common.dp import make_private
    from components.generate.config import GenerateConfig
    from components.generate.model import build_model
    from components.generate.train import SequenceLoss, _quiet_opacus, _trim, pack_records

    payload = json.loads(Path(args.step_worker).read_text())
    cfg = GenerateConfig.model_validate(payload["cfg"])
    torch.set_num_threads(cfg.num_threads or torch.get_num_threads())
    torch.manual_seed(0)
    records = payload["records"]
    batch = _trim(*pack_records(records, cfg.max_length))
    model = build_model(cfg.architecture, cfg.size, payload["vocab_size"], cfg.max_length)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    criterion: Any = SequenceLoss(
        first_item_id=payload["first_item_id"],
        condition_weight=cfg.condition_loss_weight,
        eos_weight=cfg.eos_loss_weight,
    )
    if payload["mode"] == "dp":
        loader = DataLoader(TensorDataset(*batch), batch_size=len(records))
        with _quiet_opacus():
            _, model, optimizer, criterion, _ = make_private(
                model=model,
                optimizer=optimizer,
                criterion=criterion,
                loader=loader,
                dp=cfg.dp,
                delta=1e-5,
                epochs=cfg.epochs,
                grad_sample_mode=cfg.clipping,
            )
    model.train()
    inputs, targets, positions = batch
    times = []
    with _quiet_opacus():
        for _ in range(STEP_REPEATS + 1):
            started = time.perf_counter()
            logits = model(input_ids=inputs, position_ids=positions, use_cache=False).logits
            loss = criterion(logits, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timed = sorted(times[1:])
    print(json.dumps({"step_s": timed[len(timed) // 2], "peak_rss_mib": peak_kib / 1024}))


def dp_step_cost(cleaned: Path, base: Any, work: Path, *, batch_size: int) -> dict[str, Any]:
    """Median step time and peak RSS of DP-SGD and of non-private training, same batch."""
    from components.generate import logic
    from components.generate.tokenizer import ItemVocab

    sequences, catalogue = logic.read_sequences(cleaned, with_ts=True)
    bands = logic.read_price_bands(cleaned)
    train_part = logic.training_histories(sequences)
    vocab = ItemVocab.build(
        catalogue,
        train_part["country"],
        base.max_length,
        months=base.condition_month,
        n_price_bands=max(bands.values()) + 1,
    )
    records = logic.customer_records(train_part, vocab, bands=bands)[:batch_size]
    out: dict[str, Any] = {"batch_size": len(records), "repeats": STEP_REPEATS}
    for mode in ("non_private", "dp"):
        spec = work / f"step-{mode}.json"
        spec.write_text(
            json.dumps(
                {
                    "mode": mode,
                    "cfg": base.model_dump(mode="json"),
                    "records": records,
                    "vocab_size": len(vocab),
                    "first_item_id": vocab.first_item_id,
                }
            )
        )
        done = subprocess.run(
            [sys.executable, "-m", "bench.generator", "--step-worker", str(spec)],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    out["clipping"] = base.clipping
    out["dp_step_ratio"] = out["dp"]["step_s"] / out["non_private"]["step_s"]
    return out


def tokens_per_s(work: Path, generator_dir: Path, *, quick: bool) -> dict[str, Any] | None:
    """GENX's ONNX-versus-torch decoding speed on one of this run's generators.

    Exports ``generator_dir`` (the bench's non-private demo model) and hands both to
    ``bench.generator_speed.measure`` when that module exists. A failure there is recorded
    under ``error`` and leaves this bench's own figures standing.
    """
    if importlib.util.find_spec("bench.generator_speed") is None:
        logger.info("bench.generator_speed is not there: tokens_per_s left out")
        return None
    try:
        from bench import generator_speed
        from components.export.config import ExportConfig
        from components.export.generator import export_generator

        exported = work / "exported_generator"
        export_generator(generator_dir, exported, cfg=ExportConfig())
        return generator_speed.measure(
            generator_dir, exported, repeats=1 if quick else 3, threads=1
        )
    except Exception as exc:  # another module's bench: keep this one's results
        logger.exception("bench.generator_speed.measure failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _condition_pick(quality: dict[str, Any], default: float) -> dict[str, Any]:
    """The condition temperature with the lowest mean validation JSD over the DP rows."""
    rows = [r["condition_temperature_grid"] for k, r in quality.items() if k != _label(None)]
    temps = list(rows[0]["grid"]) if rows else []
    mean_val = {
        t: round(sum(r["grid"][t]["validation"]["mean"] for r in rows) / len(rows), 5)
        for t in temps
    }
    mean_test = {
        t: round(sum(r["grid"][t]["test"]["mean"] for r in rows) / len(rows), 5) for t in temps
    }
    pick = float(min(mean_val, key=mean_val.get)) if mean_val else None
    return {
        "grid": [float(t) for t in temps],
        "mean_validation_jsd_dp_rows": mean_val,
        "mean_test_jsd_dp_rows": mean_test,
        "pick": pick,
        "default": default,
        "default_confirmed": pick == default,
    }


def _table(quality: dict[str, Any]) -> str:
    header = f"{'setting':<8} {'eps':>6} " + " ".join(f"{name:>9}" for _, name in TABLE_KEYS)
    lines = [header, "-" * len(header)]
    for label, row in quality.items():
        eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        cells = []
        for key, _ in TABLE_KEYS:
            value = row.get(key)
            cells.append(f"{'n/a':>9}" if value is None else f"{value:>9.4f}")
        lines.append(f"{label:<8} {eps:>6} " + " ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch, 1,000 sessions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="settings trained at once")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--skip-speed", action="store_true", help="leave out bench.generator_speed's tokens/s"
    )
    parser.add_argument("--step-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step_worker:
        _step_worker(args)
        return 0
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(message)s")

    from components.ingest import logic as ingest

    started = time.perf_counter()
    ingest_cfg, base = _configs(args.quick)
    with tempfile.TemporaryDirectory(prefix="bench-generator-") as tmp:
        work = Path(tmp)
        cleaned = work / "cleaned"
        ingest.run(ingest_cfg, "bundled", cleaned)
        quality = quality_runs(cleaned, work, base, seed=args.seed, jobs=args.jobs)
        # Kept at once, so a failure further on leaves the quality figures behind.
        partial = args.out.with_suffix(".partial.json")
        partial.write_text(json.dumps({"quality": quality}, indent=2, sort_keys=True) + "\n")
        step = dp_step_cost(cleaned, base, work, batch_size=base.batch_size)
        speed = None
        if not args.skip_speed:
            model_dir = work / _label(None) / "generator_model"
            speed = tokens_per_s(work, model_dir, quick=args.quick)
    result = {
        "dataset": "online_retail (bundled sample, demo ingest settings)",
        "config": "configs/demo.yaml generate section" + (" (--quick)" if args.quick else ""),
        "quick": args.quick,
        "seed": args.seed,
        "jobs": args.jobs,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "quality": quality,
        "training_budget": {
            label: {k: row[k] for k in ("steps", "batch_size", "epochs", "learning_rate")}
            for label, row in quality.items()
        },
        "condition_temperature": _condition_pick(quality, base.condition_temperature),
        "dp_step_ratio": round(step["dp_step_ratio"], 3),
        "dp_step": step,
        # GENX's figures: tokens_per_s.onnx / .torch per batch size, and the rest of measure().
        "tokens_per_s": None if speed is None else speed.get("tokens_per_s", speed),
        "generator_speed": speed,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.unlink(missing_ok=True)
    print(_table(quality))
    for label, row in quality.items():
        print(
            f"{label}: {row['steps']} steps, batch {row['batch_size']}, {row['epochs']} epochs, "
            f"lr {row['learning_rate']:.4g}; condition temperature pick on validation "
            f"{row['condition_temperature_grid']['pick']:g}"
        )
    pick = result["condition_temperature"]
    print(
        "condition temperature (DP rows, mean validation JSD "
        f"{pick['mean_validation_jsd_dp_rows']}): pick {pick['pick']}, default {pick['default']}"
    )
    print(
        f"DP-SGD step {step['dp']['step_s'] * 1000:.0f} ms vs non-private "
        f"{step['non_private']['step_s'] * 1000:.0f} ms: ratio {step['dp_step_ratio']:.2f} "
        f"(target <= 2.5); peak RSS {step['dp']['peak_rss_mib']:.0f} MiB vs "
        f"{step['non_private']['peak_rss_mib']:.0f} MiB; batch {step['batch_size']}"
    )
    if speed is None or "error" in speed:
        print(f"tokens_per_s: not measured ({(speed or {}).get('error', 'skipped')})")
    else:
        for engine in ("onnx", "torch"):
            print(f"tokens/s {engine}: {speed['tokens_per_s'].get(engine)}")
    print(f"wrote {args.out} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
