"""``python -m serving``: one KServe ModelServer process serving one recsynth model.

Examples::

    python -m serving --model recommender --model-dir exported/recommender \\
        --feature-repo feature_store --host 127.0.0.1 --port 8080
    python -m serving --model generator --model-dir exported/generator --port 8081

    # the cluster's two-process shape: a predictor (bare ONNX) and a transformer in front of it
    python -m serving --model recommender --role predictor --model-dir exported/recommender \
        --port 18001
    python -m serving --model recommender --role transformer --predictor-host 127.0.0.1:18001 \
        --model-dir exported/recommender --feature-repo feature_store --port 18000

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
import re
import signal
import sys
from pathlib import Path

from serving.binding import DEFAULT_HOST, check_host

logger = logging.getLogger("serving")

LOG_LEVEL_ENV = "RECSYNTH_LOG_LEVEL"
VARIANT_ENV = "RECSYNTH_VARIANT"
DEFAULT_VARIANT = "stable"
ROLES = ("all", "transformer", "predictor")
# A Prometheus label value and a field of every answer: short and plain.
_VARIANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")


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
    parser.add_argument(
        "--port", "--http_port", type=int, default=8080, help="REST port (--http_port: KServe's)"
    )
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="all: one process (default); transformer: Feast + validation + ranking, scoring on "
        "--predictor-host; predictor: bare ONNX scores over V2 (recommender only)",
    )
    parser.add_argument(
        "--predictor-host",
        "--predictor_host",
        default=None,
        help="host:port of the --role predictor server (KServe injects --predictor_host)",
    )
    parser.add_argument(
        "--variant",
        default=None,
        help=f"A/B variant each answer and metric carries (default ${VARIANT_ENV} or "
        f"{DEFAULT_VARIANT!r})",
    )
    # KServe's controller appends --model_name=<InferenceService name> to a transformer's
    # arguments; the wire name stays --model's, so this one is accepted and only logged.
    parser.add_argument("--model_name", default=None, help=argparse.SUPPRESS)
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


def _role_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the --model/--role/--feature-repo/--predictor-host combination."""
    if args.role != "all" and args.model != "recommender":
        return f"--role {args.role} applies to --model recommender only"
    if args.role == "transformer" and not args.predictor_host:
        return "--role transformer needs --predictor-host (the --role predictor server)"
    if args.role != "transformer" and args.predictor_host:
        return "--predictor-host applies to --role transformer only"
    if args.role == "predictor" and args.feature_repo is not None:
        return "--role predictor scores only; the transformer takes --feature-repo"
    if args.model == "recommender" and args.role != "predictor" and args.feature_repo is None:
        return "--model recommender needs --feature-repo (the Feast repo)"
    return None


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
    problem = _role_problem(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    variant = args.variant if args.variant is not None else os.environ.get(VARIANT_ENV, "")
    variant = variant or DEFAULT_VARIANT
    if not _VARIANT.match(variant):
        print(
            f"--variant/{VARIANT_ENV} {variant!r}: use 1-32 of a-z, 0-9, '.', '_', '-'",
            file=sys.stderr,
        )
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
    if args.model_name is not None:
        logger.info("--model_name %s given (KServe); serving as %s", args.model_name, args.model)
    if args.role == "predictor":
        from serving.predictor import ScoresModel

        model = ScoresModel(args.model_dir, require_gpu=require_gpu)
    elif args.model == "recommender":
        from serving.recommender import RecommenderModel

        model = RecommenderModel(
            args.model_dir,
            args.feature_repo,
            require_gpu=require_gpu,
            predictor_host=args.predictor_host,
        )
    else:
        from serving.generator import GeneratorModel

        model = GeneratorModel(args.model_dir, require_gpu=require_gpu)

    model.variant = variant
    model.role = args.role
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
