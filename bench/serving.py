"""Online serving under load, on loopback: ``python -m bench.serving`` (``make bench-serving``).

One run starts, on 127.0.0.1 (ports 18400-18409), every server it compares. Its inputs are the
demo's artifacts under ``runs/latest`` (read only): the recommender is built from the demo's
``model_config.json`` with seeded weights and exported by the export step's function, and the
Feast repo is registered afresh from the demo's cleaned data and training set, both in a temp
folder with this checkout's code (see :func:`build_models`):

- ``e2e``: ``python -m serving --model recommender`` in one process: V1 ``user_id`` requests,
  Feast lookup, ONNX scoring, ranking, the JSON answer;
- ``floor``: the same ONNX model behind a bare KServe model doing nothing else
  (``--role predictor``): V2 ``item_ids`` in, ``scores`` out as a binary tensor;
- ``naive``: a plain FastAPI app on torch eager (``bench.naive_server``) over the same trained
  model and Feast repo: the naive peer;
- ``two_process``: the cluster shape, a ``--role transformer`` in front of a ``--role
  predictor``, with the same requests as ``e2e`` (item 1 of issue 6: which shape is faster).

Each is driven by the same closed-loop load generator (threads, one keep-alive connection each)
at concurrency 1, 8 and 32, with a bounded number of requests and a time limit per point, the
servers taking turns in short rounds. Every
request must answer 200; a failure is counted and the run exits 1. The customers are drawn with
a fixed seed among those the online store serves a fresh history for, so every ``e2e`` request
runs the model. ``feast_lookup_p99_ms`` times single-customer ``CustomerHistory.recent_items``
reads in this process (``serving.features.lookup_latency``).

Writes ``bench/results/serving.json``: ``c1``, ``c8``, ``c32`` each with ``e2e``, ``floor`` and
``naive`` (``p50_ms``, ``p99_ms``, ``rps``, ``n``, ``failures``), ``shapes`` (one process versus
two per concurrency), ``feast_lookup_p99_ms``, the targets and whether they were met, and the
run's wall time. The machine is shared (2 cores, other work running): read the ratios, which
compare servers measured minutes apart on the same machine, more than the absolute figures.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serving.procs import ServerProc, serving_argv, start_server, stop_process, wait_ready

logger = logging.getLogger("bench.serving")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "serving.json"
RUN = ROOT / "runs" / "latest" / "artifacts"
PORTS = {"e2e": 18400, "floor": 18401, "predictor": 18402, "two_process": 18403, "naive": 18404}
CONCURRENCY = (1, 8, 32)
TARGETS = {"e2e_p99_over_floor_max": 1.5, "e2e_rps_over_naive_min_c32": 2.0,
           "feast_lookup_p99_ms_max": 5.0}  # fmt: skip
READY_TIMEOUT_S = 240
K = 10


def start(name: str, argv: list[str], port: int, ready_path: str, logs: Path) -> ServerProc:
    """Start one server of this bench (its own process; stopped by PID at the end of the run)."""
    return start_server(
        name, argv, port=port, log=logs / f"{name}.log", ready_path=ready_path, log_level="WARNING"
    )


@dataclass
class Target:
    """One server under load: where to send what."""

    port: int
    path: str
    bodies: list[bytes]
    headers: dict[str, str]


def drive(target: Target, *, concurrency: int, n: int, time_limit_s: float) -> Run:
    """Closed-loop load: ``concurrency`` threads, ``n`` requests in all (or the time limit)."""
    counter = itertools.count()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit_s

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
        mine: list[float] = []
        while time.monotonic() < deadline:
            i = next(counter)
            if i >= n:
                break
            body = target.bodies[i % len(target.bodies)]
            started = time.perf_counter()
            try:
                conn.request("POST", target.path, body=body, headers=target.headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = repr(exc)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
            if status == 200:
                mine.append(time.perf_counter() - started)
            else:
                with lock:
                    failures.append(str(status))
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return Run(latencies, failures, wall)


@dataclass
class Run:
    """What one or more :func:`drive` calls measured: latencies (s) of the 200s, failures."""

    latencies: list[float]
    failures: list[str]
    wall_s: float

    def __add__(self, other: Run) -> Run:
        return Run(
            self.latencies + other.latencies,
            self.failures + other.failures,
            self.wall_s + other.wall_s,
        )

    def summary(self) -> dict[str, Any]:
        ms = np.asarray(self.latencies) * 1e3 if self.latencies else np.zeros(1)
        return {
            "n": len(self.latencies) + len(self.failures),
            "failures": len(self.failures),
            "failure_samples": sorted(set(self.failures))[:5],
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "rps": round(len(self.latencies) / max(self.wall_s, 1e-9), 1),
            "wall_s": round(self.wall_s, 2),
        }


def artifacts() -> dict[str, Path]:
    """The demo's inputs the bench builds from (must exist): config, cleaned data, training set."""
    paths = {
        "trained_config": RUN / "train" / "recommender_model" / "model_config.json",
        "cleaned": RUN / "ingest" / "cleaned",
        "training_set": RUN / "fuse" / "training_set",
        "customers": RUN / "ingest" / "cleaned" / "customers.parquet",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit(f"bench.serving needs the demo's artifacts (run `make demo`): {missing}")
    return paths


def build_models(tmp: Path) -> tuple[Path, Path]:
    """The torch recommender and its ONNX export, both from this checkout's code.

    The demo's trained ``model.pt`` may come from an older model definition; the latency of a
    model depends on its shape, not its weights, so the bench builds the demo's configuration
    (catalogue, history length, widths) afresh with seeded weights and exports it with the
    export step's own function. The naive peer then runs exactly the graph ``e2e`` and ``floor``
    run, in torch eager.

    Returns:
        ``(recommender_model dir, exported/recommender dir)``.
    """
    import pandas as pd
    import torch

    from components.common.recommender_model import (
        MODEL_CONFIG,
        MODEL_WEIGHTS,
        RecommenderConfig,
        build_model,
    )
    from components.export.config import ExportConfig
    from components.export.recommender import export_recommender

    training = RUN / "fuse" / "training_set"
    raw = json.loads((RUN / "train" / "recommender_model" / MODEL_CONFIG).read_text())
    config = RecommenderConfig.model_validate(
        {k: v for k, v in raw.items() if k in RecommenderConfig.model_fields}
    )
    features = pd.read_parquet(training / "item_features.parquet")
    index = torch.as_tensor(features["item_index"].to_numpy(), dtype=torch.long)
    text = torch.zeros((config.n_items + 1, config.text_dim))
    text[index] = torch.as_tensor(np.stack(features["text_embedding"].to_numpy()))
    bands = torch.zeros(config.n_items + 1, dtype=torch.long)
    bands[index] = torch.as_tensor(features["price_band"].to_numpy(), dtype=torch.long)
    torch.manual_seed(0)
    model = build_model(config, text, bands).eval()
    model_dir = tmp / "recommender_model"
    model_dir.mkdir()
    torch.save(model.state_dict(), model_dir / MODEL_WEIGHTS)
    (model_dir / MODEL_CONFIG).write_text(config.model_dump_json(), encoding="utf-8")
    shutil.copy(training / "item_map.json", model_dir / "item_map.json")
    exported = tmp / "exported" / "recommender"
    export_recommender(model_dir, training, exported, cfg=ExportConfig())
    return model_dir, exported


def build_feature_store(tmp: Path) -> Path:
    """A Feast repo under ``tmp`` from the demo's ``cleaned/`` and ``training_set/``."""
    from components.register_features.config import FeaturesConfig
    from components.register_features.logic import run

    out = tmp / "feature_store"
    run(FeaturesConfig(), RUN / "ingest" / "cleaned", RUN / "fuse" / "training_set", out)
    return out


def pick_customers(repo: Path, customers_file: Path, n: int, seed: int) -> dict[str, list[str]]:
    """``n`` customers (fixed seed) the online store serves a history for, with that history."""
    import pandas as pd

    from serving.features import CustomerHistory

    ids = pd.read_parquet(customers_file, columns=["customer_id"])["customer_id"].tolist()
    random.Random(seed).shuffle(ids)
    store = CustomerHistory(repo)
    chosen: dict[str, list[str]] = {}
    for start_at in range(0, len(ids), 256):
        chunk = ids[start_at : start_at + 256]
        for cid, hist in zip(chunk, store.recent_items(chunk), strict=True):
            if hist:
                chosen[cid] = hist
        if len(chosen) >= n:
            break
    return dict(list(chosen.items())[:n])


def feast_lookup(repo: Path, ids: list[str], n: int) -> dict[str, Any]:
    """Single-customer lookup timings (FEAST's helper; the same loop by hand if it is absent)."""
    try:
        from serving.features import lookup_latency
    except ImportError:
        lookup_latency = None
    if lookup_latency is not None:
        return lookup_latency(repo, ids, n)
    from serving.features import CustomerHistory

    store = CustomerHistory(repo)
    times = []
    for i in range(n):
        started = time.perf_counter()
        store.recent_items([ids[i % len(ids)]])
        times.append(time.perf_counter() - started)
    ms = np.asarray(times) * 1e3
    return {"n": n, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def check_model_path(port: int, customer_id: str) -> None:
    """A benched customer is answered by the model, not by the popularity fallback."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = orjson.dumps({"instances": [{"user_id": customer_id, "k": K}]})
    conn.request("POST", "/v1/models/recommender:predict", body=body,
                 headers={"content-type": "application/json"})  # fmt: skip
    answer = orjson.loads(conn.getresponse().read())
    conn.close()
    (prediction,) = answer["predictions"]
    if prediction["fallback"] is not None or len(prediction["items"]) != K:
        raise SystemExit(f"e2e does not run the model for a benched customer: {prediction}")


def bodies_for(histories: dict[str, list[str]], catalogue: dict) -> dict[str, list[bytes]]:
    """The same customers as each server's request: V1 user_id, V2 item_ids, naive JSON."""
    index_of = {row["item_id"]: int(row["index"]) for row in catalogue["items"]}
    max_history = int(catalogue["max_history"])
    v1, v2, naive = [], [], []
    for cid, hist in histories.items():
        v1.append(orjson.dumps({"instances": [{"user_id": cid, "k": K}]}))
        naive.append(orjson.dumps({"user_id": cid, "k": K}))
        known = [index_of[c] for c in hist if c in index_of][-max_history:]
        row = [0] * (max_history - len(known)) + known
        v2.append(
            orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "item_ids",
                            "shape": [1, max_history],
                            "datatype": "INT64",
                            "data": row,
                        }  # fmt: skip
                    ],
                    "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
                }
            )
        )
    return {"v1": v1, "v2": v2, "naive": naive}


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark; exit 1 when a request failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument("--requests", type=int, default=850, help="per server and concurrency")
    parser.add_argument("--time-limit-s", type=float, default=90.0, help="per point")
    parser.add_argument("--rounds", type=int, default=5, help="turns per point")
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    began = time.monotonic()
    paths = artifacts()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    servers: list[ServerProc] = []
    try:
        paths["trained"], paths["exported"] = build_models(tmp)
        catalogue = json.loads((paths["exported"] / "catalogue.json").read_text(encoding="utf-8"))
        metadata = json.loads((paths["exported"] / "metadata.json").read_text(encoding="utf-8"))
        # runs/latest stays read-only. The store is registered afresh from the demo's cleaned
        # data and training set with this checkout's feature_repo/, so a demo run made by an
        # older version still benches the current serving code.
        repo = build_feature_store(tmp)
        logs = tmp / "logs"
        logs.mkdir()
        rec = str(paths["exported"])
        ready = "/v2/models/recommender/ready"

        def recommender(name: str, *args: str) -> ServerProc:
            argv = serving_argv("recommender", [*args, "--model-dir", rec], PORTS[name])
            return start(name, argv, PORTS[name], ready, logs)

        store = ["--feature-repo", str(repo)]
        servers = [
            recommender("e2e", *store),
            recommender("floor", "--role", "predictor"),
            recommender("predictor", "--role", "predictor"),
            recommender("two_process", "--role", "transformer", "--predictor-host",
                        f"127.0.0.1:{PORTS['predictor']}", *store),
            start("naive", ["-m", "bench.naive_server", "--model-dir", str(paths["trained"]),
                            "--catalogue", str(paths["exported"] / "catalogue.json"),
                            "--feature-repo", str(repo), "--port", str(PORTS["naive"])],
                  PORTS["naive"], "/ready", logs),
        ]  # fmt: skip
        histories = pick_customers(repo, paths["customers"], args.customers, args.seed)
        if not histories:
            raise SystemExit("the online store serves no customer history; nothing to bench")
        deadline = time.monotonic() + READY_TIMEOUT_S
        for server in servers:
            # One deadline for all: they load side by side.
            wait_ready(server, max(deadline - time.monotonic(), 0.1))
        # Timed once every server has loaded, so their start-up does not land in the lookups.
        lookups = feast_lookup(repo, list(histories), args.lookups)
        logger.info("feast lookup: %s", lookups)
        check_model_path(PORTS["e2e"], next(iter(histories)))
        bodies = bodies_for(histories, catalogue)
        json_headers = {"content-type": "application/json"}
        targets = {
            "e2e": Target(PORTS["e2e"], "/v1/models/recommender:predict", bodies["v1"],
                          json_headers),
            "floor": Target(PORTS["floor"], "/v2/models/recommender/infer", bodies["v2"],
                            json_headers),
            "naive": Target(PORTS["naive"], "/predict", bodies["naive"], json_headers),
            "two_process": Target(PORTS["two_process"], "/v1/models/recommender:predict",
                                  bodies["v1"], json_headers),
        }  # fmt: skip
        for name, target in targets.items():
            warm = drive(target, concurrency=4, n=100, time_limit_s=30)
            logger.info("warm-up %s: %s", name, warm.summary())
        results: dict[str, Any] = {}
        shapes: dict[str, Any] = {}
        total = failures = 0
        for c in CONCURRENCY:
            # The servers take turns in short rounds, so a burst of other work on the shared
            # machine lands on all of them rather than on whichever ran at that minute.
            runs = {name: Run([], [], 0.0) for name in targets}
            per_round = -(-args.requests // args.rounds)
            for _ in range(args.rounds):
                for name, target in targets.items():
                    runs[name] = runs[name] + drive(
                        target,
                        concurrency=c,
                        n=per_round,
                        time_limit_s=args.time_limit_s / args.rounds,
                    )
            point = {name: run.summary() for name, run in runs.items()}
            for name, summary in point.items():
                total += summary["n"]
                failures += summary["failures"]
                logger.info("c%d %s: %s", c, name, summary)
            two = point.pop("two_process")
            results[f"c{c}"] = point
            shapes[f"c{c}"] = {
                "one_process": point["e2e"],
                "two_process": two,
                "two_over_one_p99": round(two["p99_ms"] / point["e2e"]["p99_ms"], 2),
                "one_over_two_rps": round(point["e2e"]["rps"] / max(two["rps"], 1e-9), 2),
            }
    finally:
        for server in servers:
            stop_process(server.proc)
        shutil.rmtree(tmp, ignore_errors=True)

    c32 = results["c32"]
    ratios = {
        f"c{c}_e2e_p99_over_floor": round(
            results[f"c{c}"]["e2e"]["p99_ms"] / results[f"c{c}"]["floor"]["p99_ms"], 2
        )
        for c in CONCURRENCY
    }
    ratios["c32_e2e_rps_over_naive"] = round(c32["e2e"]["rps"] / max(c32["naive"]["rps"], 1e-9), 2)
    out = {
        **results,
        "feast_lookup_p99_ms": round(float(lookups["p99_ms"]), 3),
        "feast_lookup": lookups,
        "shapes": shapes,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": {
            "e2e_p99_le_1.5x_floor": all(
                ratios[f"c{c}_e2e_p99_over_floor"] <= TARGETS["e2e_p99_over_floor_max"]
                for c in CONCURRENCY
            ),
            "e2e_rps_ge_2x_naive_c32": ratios["c32_e2e_rps_over_naive"]
            >= TARGETS["e2e_rps_over_naive_min_c32"],
            "feast_lookup_p99_le_5ms": lookups["p99_ms"] <= TARGETS["feast_lookup_p99_ms_max"],
        },
        "requests_total": total,
        "failures_total": failures,
        "setup": {
            "artifacts": str(RUN.relative_to(ROOT)),
            "model_version": metadata["model_version"],
            "models": "the demo's model_config.json built with seeded weights, exported by "
            "components.export.recommender (see build_models)",
            "n_items": len(catalogue["items"]),
            "customers": len(histories),
            "k": K,
            "requests_per_point": args.requests,
            "rounds_per_point": args.rounds,
            "client": "threads, one keep-alive http.client connection each, closed loop",
            "e2e": "V1 user_id -> Feast -> ORT -> top-k JSON, one process",
            "floor": "V2 item_ids [1, max_history] -> ORT -> scores as a binary tensor",
            "naive": "FastAPI + pydantic, feast get_online_features, torch eager, torch.topk",
            "two_process": "transformer (Feast, ranking) -> V2 binary HTTP -> predictor (ORT)",
            "cpus": os.cpu_count(),
        },
        "wall_s": round(time.monotonic() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s: %d requests, %d failures, %s", args.out, total, failures, ratios)
    print(json.dumps({k: out[k] for k in ("ratios", "targets_met", "failures_total")}, indent=2))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
