"""`make demo`: run the whole pipeline on the bundled data, then talk to the servers it started.

Runs ``python -m pipelines.local`` (the KFP local runner), then sends one sample request to each
KServe server that the deploy step left running on 127.0.0.1, prints the answers and the report's
path. The servers keep running; ``make stop`` stops them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

RUNS = Path("runs")


def _post(url: str, payload: dict[str, Any]) -> tuple[int, Any]:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _sample_customer(run_dir: Path) -> tuple[str, list[str]]:
    """A real customer of this run with a long history, and two items of an anonymous session."""
    sequences = next(run_dir.rglob("sequences.parquet"))
    frame = pd.read_parquet(sequences)
    frame = frame.assign(n=frame["items"].map(len)).sort_values("n", ascending=False)
    top = frame.iloc[len(frame) // 10]  # a busy customer, but not the single busiest
    return str(top["customer_id"]), list(frame.iloc[0]["items"][:2])


def _servers(state_file: Path) -> dict[str, str]:
    records = json.loads(state_file.read_text())
    servers = records["servers"] if isinstance(records, dict) else records
    return {s["name"]: s["url"] for s in servers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--source", default="bundled")
    parser.add_argument("--state-file", default=".recsynth/servers.json")
    args = parser.parse_args(argv)

    # 1. the pipeline itself, with its own progress lines
    cmd = [
        sys.executable,
        "-m",
        "pipelines.local",
        "--config",
        args.config,
        "--source",
        args.source,
    ]
    if subprocess.call(cmd) != 0:
        print("demo: the pipeline failed; see the step's error above", file=sys.stderr)
        return 1
    run_dir = (RUNS / "latest").resolve()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not metrics.get("deployed"):
        print(f"demo: the DP audit blocked deployment; report: {run_dir / 'report.md'}")
        return 1

    # 2. one request to each server the deploy step started
    urls = _servers(Path(args.state_file))
    customer, session = _sample_customer(run_dir)
    requests = [
        ("recommender", {"instances": [{"user_id": customer, "k": 5}]}),
        ("recommender", {"instances": [{"items": session, "k": 5}]}),
        ("generator", {"instances": [{"prefix": session[:1], "n": 2, "max_items": 8}]}),
    ]
    for name, payload in requests:
        url = f"{urls[name]}/v1/models/{name}:predict"
        status, answer = _post(url, payload)
        print(f"\nPOST {url}\n  request:  {json.dumps(payload)}\n  status:   {status}")
        print("  response: " + json.dumps(answer, indent=2).replace("\n", "\n  "))

    print(f"\nreport: {run_dir / 'report.md'} (and report.html, metrics.json)")
    print("servers keep running on 127.0.0.1: " + ", ".join(f"{k} {v}" for k, v in urls.items()))
    print("stop them with: make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
