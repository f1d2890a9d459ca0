"""``python -m serving``: one KServe ModelServer process serving one recsynth model.

Examples::

    python -m serving --model recommender --model-dir exported/recommender \\
        --feature-repo feature_store --host 127.0.0.1 --port 8080
    python -m serving --model generator --model-dir exported/generator --port 8081

The model is loaded before the server listens; a load failure (a missing file, a feature repo
without ``customer_history``, CUDA required but inactive) is printed and the process exits 2,
so ``GET /v2/models/<name>/ready`` is 200 only for a loaded model. SIGTERM/SIGINT stop it
cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from serving.binding import DEFAULT_HOST, check_host

logger = logging.getLogger("serving")

LOG_LEVEL_ENV = "RECSYNTH_LOG_LEVEL"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments (kept apart from kserve's own import-time parser)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving", description="Serve one recsynth ONNX model with KServe."
    )
    parser.add_argument("--model", required=True, choices=["recommender", "generator"])
    parser.add_argument("--model-dir", required=True, type=Path, help="exported/<model>")
    parser.add_argument(
        "--feature-repo", type=Path, default=None, help="Feast repo (recommender only)"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="REST address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="REST port")
    parser.add_argument(
        "--require-gpu",
        action="store_true",
        help="fail unless ORT runs on CUDAExecutionProvider (also RECSYNTH_REQUIRE_GPU=1)",
    )
    return parser


def _stop(signum: int, _frame: object) -> None:
    # uvicorn handles SIGTERM/SIGINT while it serves and re-raises the signal once it has shut
    # down; this turns that (or a signal during load) into a normal exit.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, load the model, serve until stopped. Returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    if args.model == "generator" and args.feature_repo is not None:
        print("--feature-repo applies to --model recommender only", file=sys.stderr)
        return 2
    if args.model == "recommender" and args.feature_repo is None:
        print("--model recommender needs --feature-repo (the Feast repo)", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        print(f"--port {args.port} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    try:
        host = check_host(args.host)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)

    # kserve (and with the recommender, feast) are imported only now: --help stays instant
    from serving.errors import ModelLoadError
    from serving.server import LocalModelServer

    require_gpu = True if args.require_gpu else None
    if args.model == "recommender":
        from serving.recommender import RecommenderModel

        model = RecommenderModel(args.model_dir, args.feature_repo, require_gpu=require_gpu)
    else:
        from serving.generator import GeneratorModel

        model = GeneratorModel(args.model_dir, require_gpu=require_gpu)

    try:
        model.load()
    except ModelLoadError as exc:
        logger.error("model %s failed to load: %s", args.model, exc)
        print(f"model {args.model} failed to load: {exc}", file=sys.stderr)
        return 2

    # Everything loaded so far (kserve, ORT, and with the recommender feast and the torch it
    # imports) lives as long as the process: freezing it keeps the collector from rescanning it
    # during requests, and spares the ~4 s final collection at exit that made SIGTERM slow.
    gc.freeze()
    server = LocalModelServer(host=host, http_port=args.port)
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
