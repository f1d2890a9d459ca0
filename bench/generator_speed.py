"""Tokens per second of the generator's ONNX KV-cache path against torch generate.

Both decode the same model (``model_dir`` for torch, its export ``exported_dir`` for ONNX), from
the same prompts (``[bos, country, month, band]`` cycling through the vocabulary's conditions),
under the same rules (item tokens only, each once), greedy and sampled (temperature 1, no top-k
or top-p), at batch sizes 1, 8 and 32. Eos is masked on both sides so that every session decodes
exactly ``max_new_tokens`` items: a DP-trained generator's greedy sessions can end after one item,
which would time the prefill alone. Torch runs ``generate`` with a logits processor that applies
those rules; ONNX runs ``serving.generator``'s decode (numpy sampling over ORT, prefill once, then
one decode step per token), so its figures include everything a served request pays except HTTP.
The wall time is the median of ``repeats`` runs after one warm-up; both use the same number of
threads.

Also measured: the no-cache ONNX graph (``model.onnx``, the whole sequence re-run each step) and
the asyncio batcher (many concurrent single-session requests, batched or one at a time).

    python -m bench.generator_speed [--model-dir DIR] [--exported-dir DIR] [--quick]

writes ``bench/results/generator_speed.json``; ``bench.generator`` merges it into
``generator.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "generator_speed.json"
DEMO_MODEL = REPO / "runs" / "latest" / "artifacts" / "generate" / "generator_model"
TARGET_RATIO = 2.0


def _prompts(vocab: Any, n: int) -> list[dict[str, Any]]:
    """``n`` condition sets cycling through countries, months, bands, categories (no prefix)."""
    countries = sorted(vocab.countries)
    months = sorted(vocab.months) if vocab.months else [None]
    bands = sorted(vocab.price_bands) if vocab.price_bands else [None]
    categories = sorted(vocab.categories) if getattr(vocab, "categories", None) else [None]
    return [
        {
            "country": countries[i % len(countries)],
            "month": months[i % len(months)],
            "price_band": bands[(i // len(months)) % len(bands)],
            "category": categories[i % len(categories)],
        }
        for i in range(n)
    ]


def _median_run(fn: Any, repeats: int) -> tuple[float, Any]:
    fn()  # warm-up: ORT's first run allocates, torch's first generate builds its config
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _torch_runner(lm: Any, vocab: Any, prompts: list[dict], max_new: int, sample: bool) -> Any:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    first, eos, pad = vocab.first_item_id, vocab.eos_id, vocab.pad_id

    class SessionRules(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            ok = torch.zeros_like(scores, dtype=torch.bool)
            ok[:, first:] = True
            ok &= ~torch.zeros_like(ok).scatter_(1, input_ids, True)
            ok[:, eos] = False  # fixed-length sessions: see the module docstring
            return scores.masked_fill(~ok, float("-inf"))

    rows = []
    for p in prompts:
        row = [vocab.bos_id, vocab.countries[p["country"]]]
        if p["month"] is not None:
            row.append(vocab.months[p["month"]])
        if p["price_band"] is not None:
            row.append(vocab.price_bands[p["price_band"]])
        if p.get("category") is not None:
            row.append(vocab.categories[p["category"]])
        rows.append(row)
    ids = torch.tensor(rows)
    mode = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {}
    mode.setdefault("do_sample", False)

    def run() -> int:
        with torch.inference_mode():
            out = lm.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                logits_processor=LogitsProcessorList([SessionRules()]),
                eos_token_id=eos,
                pad_token_id=pad,
                **mode,
            )
        new = out[:, ids.shape[1] :]
        # items generated: everything before each row's first eos
        is_eos = (new == eos).int()
        before_eos = (is_eos.cumsum(dim=1) == 0).sum().item()
        return int(before_eos)

    return run


def _onnx_runner(model: Any, prompts: list[dict], max_new: int, sample: bool) -> Any:
    from serving.generator import Job

    vocab = model.vocab
    jobs = [
        Job(
            prefix=[],
            n=1,
            max_items=max_new,
            temperature=1.0 if sample else 0.0,
            top_k=None,
            top_p=None,
            seed=i,
            allow_eos=False,
            country=vocab.countries[p["country"]],
            month=None if p["month"] is None else vocab.months[p["month"]],
            price_band=None if p["price_band"] is None else vocab.price_bands[p["price_band"]],
            category=None if p.get("category") is None else vocab.categories[p["category"]],
        )
        for i, p in enumerate(prompts)
    ]

    def run() -> int:
        from serving.generator import generate

        sessions = generate(model.decoder(), vocab, jobs)
        return sum(len(s["items"]) for per_job in sessions for s in per_job)

    return run


def _batching(model: Any, clients: int, repeats: int) -> dict[str, Any]:
    """Sessions/s and p50 latency of ``clients`` concurrent one-session requests."""
    from serving.generator import Batcher

    async def one(i: int) -> float:
        start = time.perf_counter()
        body = {"instances": [{"n": 1, "seed": i, "max_items": 20}]}
        payload = await model.preprocess(body)
        model.postprocess(await model.predict(payload))
        return time.perf_counter() - start

    async def wave() -> list[float]:
        return await asyncio.gather(*(one(i) for i in range(clients)))

    out: dict[str, Any] = {}
    for label, wait_ms, rows in (("one_at_a_time", 0.0, 1), ("batched_2ms", 2.0, 512)):
        model._batcher = Batcher(model.decode, max_wait_s=wait_ms / 1000.0, max_rows=rows)
        asyncio.run(wave())  # warm-up
        walls, lat = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            lat += asyncio.run(wave())
            walls.append(time.perf_counter() - start)
        wall = statistics.median(walls)
        out[label] = {
            "sessions_per_s": round(clients / wall, 1),
            "p50_latency_ms": round(1000 * statistics.median(lat), 1),
        }
    out["clients"] = clients
    out["throughput_ratio"] = round(
        out["batched_2ms"]["sessions_per_s"] / out["one_at_a_time"]["sessions_per_s"], 2
    )
    return out


def measure(
    model_dir: Path,
    exported_dir: Path,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    *,
    max_new_tokens: int = 20,
    repeats: int = 3,
    threads: int | None = None,
    clients: int = 16,
) -> dict[str, Any]:
    """Tokens per second of the ONNX KV path and of torch generate, per batch size and mode.

    Args:
        model_dir: the torch generator (``generator_model/``).
        exported_dir: its export (``exported/generator/``, with ``decoder_kv.onnx``).
        batch_sizes: sessions decoded together.
        max_new_tokens: the most items each session may get (both sides).
        repeats: timed runs per case (the median is kept), after one warm-up.
        threads: torch and ORT intra-op threads. One by default: on a shared 2-core machine
            torch's OpenMP threads spin against other processes and its figures collapse
            (measured 5-10x slower with 2 threads under load), which would flatter ONNX.
        clients: concurrent requests in the batching measurement.

    Returns:
        ``tokens_per_s`` {"onnx", "torch", "onnx_no_cache"} -> {batch size: tokens/s} (sampled,
        the served default), ``by_mode`` the same for "greedy" and "sampled", ``ratio``
        (onnx / torch) per mode and batch size, ``batching`` and the setup.

    Raises:
        FileNotFoundError: ``exported_dir`` has no cache graph (export with this version).
    """
    import onnxruntime as ort
    import torch

    from components.generate.model import load_model
    from serving.generator import KV_ONNX, GeneratorModel

    exported_dir = Path(exported_dir)
    if not (exported_dir / KV_ONNX).is_file():
        raise FileNotFoundError(f"{exported_dir / KV_ONNX} is missing: re-export the generator")
    threads = threads or 1
    torch.set_num_threads(threads)
    lm = load_model(model_dir).float().eval()

    def session_model(use_cache: bool) -> GeneratorModel:
        model = GeneratorModel(exported_dir, require_gpu=False, use_cache=use_cache)
        model.load()
        # same thread count as torch
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        name = KV_ONNX if use_cache else "model.onnx"
        session = ort.InferenceSession(
            str(exported_dir / name), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        if use_cache:
            model._kv_session = session
        else:
            model._session = session
        return model

    kv_model, full_model = session_model(True), session_model(False)
    vocab = kv_model.vocab
    by_mode: dict[str, dict[str, dict[str, float]]] = {}
    ratio: dict[str, dict[str, float]] = {}
    tokens: dict[str, dict[str, dict[str, int]]] = {}
    for mode in ("greedy", "sampled"):
        sample = mode == "sampled"
        rates: dict[str, dict[str, float]] = {"onnx": {}, "torch": {}, "onnx_no_cache": {}}
        counts: dict[str, dict[str, int]] = {"onnx": {}, "torch": {}, "onnx_no_cache": {}}
        for batch in batch_sizes:
            prompts = _prompts(vocab, batch)
            runners = {
                "onnx": _onnx_runner(kv_model, prompts, max_new_tokens, sample),
                "onnx_no_cache": _onnx_runner(full_model, prompts, max_new_tokens, sample),
                "torch": _torch_runner(lm, vocab, prompts, max_new_tokens, sample),
            }
            for name, run in runners.items():
                wall, n_tokens = _median_run(run, repeats)
                rates[name][str(batch)] = round(n_tokens / wall, 1)
                counts[name][str(batch)] = n_tokens
                logger.info(
                    "%s %s batch %d: %d tokens in %.3f s", mode, name, batch, n_tokens, wall
                )
        by_mode[mode] = rates
        tokens[mode] = counts
        ratio[mode] = {
            b: round(rates["onnx"][b] / rates["torch"][b], 2)
            for b in rates["onnx"]
            if rates["torch"][b]
        }
    return {
        "tokens_per_s": by_mode["sampled"],
        "by_mode": by_mode,
        "ratio": ratio,
        "tokens_generated": tokens,
        "target_ratio": TARGET_RATIO,
        "meets_target": all(r >= TARGET_RATIO for m in ratio.values() for r in m.values()),
        "batching": _batching(kv_model, clients, repeats),
        "setup": {
            "model_dir": _shown(Path(model_dir)),
            "architecture": lm.config.model_type,
            "parameters": int(sum(p.numel() for p in lm.parameters())),
            "vocab_size": vocab.size,
            "max_new_tokens": max_new_tokens,
            "repeats": repeats,
            "threads": threads,
            "batch_sizes": list(batch_sizes),
            "prompt": "[bos, country, month, band] cycling (conditions the vocabulary has)",
            "torch": f"transformers {__import__('transformers').__version__} generate, KV cache",
            "onnx": f"onnxruntime {ort.__version__} CPU, serving.generator decode",
        },
    }


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (results are committed)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _print(result: dict[str, Any]) -> None:
    head = ("mode", "batch", "onnx tok/s", "torch tok/s", "ratio", "no-cache")
    print("{:8} {:>5} {:>11} {:>12} {:>6} {:>9}".format(*head))
    for mode, rates in result["by_mode"].items():
        for b in rates["onnx"]:
            r = result["ratio"][mode].get(b, float("nan"))
            print(
                f"{mode:8} {b:>5} {rates['onnx'][b]:>11.0f} {rates['torch'][b]:>12.0f} "
                f"{r:>5.2f}x {rates['onnx_no_cache'][b]:>9.0f}"
            )
    bt = result["batching"]
    print(
        f"batching, {bt['clients']} concurrent one-session requests: "
        f"{bt['one_at_a_time']['sessions_per_s']} sessions/s one at a time, "
        f"{bt['batched_2ms']['sessions_per_s']} batched ({bt['throughput_ratio']}x)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.generator_speed", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=DEMO_MODEL, help="generator_model/")
    parser.add_argument(
        "--exported-dir", type=Path, default=None, help="its export (default: export it now)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT threads")
    parser.add_argument("--quick", action="store_true", help="one timed run per case")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("RECSYNTH_LOG_LEVEL", "WARNING"))
    if not (args.model_dir / "config.json").is_file():
        print(
            f"no generator at {args.model_dir}: run `make demo` or pass --model-dir",
            file=sys.stderr,
        )
        return 2

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genx-bench-") as tmp:
        exported = args.exported_dir
        export_s = None
        if exported is None:
            from components.export.config import ExportConfig
            from components.export.generator import export_generator

            exported = Path(tmp) / "generator"
            t0 = time.perf_counter()
            export_generator(args.model_dir, exported, cfg=ExportConfig())
            export_s = round(time.perf_counter() - t0, 1)
        result = measure(
            args.model_dir,
            exported,
            max_new_tokens=args.max_new_tokens,
            repeats=1 if args.quick else args.repeats,
            threads=args.threads,
        )
    result["setup"]["export_s"] = export_s
    result["setup"]["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    _print(result)
    print(f"wrote {args.out} ({result['setup']['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
