"""Submit the recsynth pipeline to a Kubeflow Pipelines cluster.

``python -m pipelines.submit --host URL [--namespace NS] [--experiment NAME] [--config FILE]
[--source URI] [--run-name NAME] [--token-env VAR] [--package FILE] [--dry-run]``

Every argument is checked before the cluster is contacted. ``--dry-run`` prints what would be sent
(the token only as the name of the variable that holds it) and exits without a connection.
"""

import argparse
import datetime as dt
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.common.config import load_config
from components.common.errors import ConfigError
from components.common.logs import configure_logging

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "recsynth"
# Kubernetes namespaces are DNS-1123 labels.
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The run name doubles as the run id deploy puts into storage paths and names (1-63 chars).
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Submission:
    """Everything a submission sends, checked."""

    host: str
    namespace: str | None
    experiment: str
    run_name: str
    config_file: str | None
    source: str
    token_env: str | None
    package: str | None
    enable_caching: bool
    arguments: dict[str, Any]
    # What in the config looks local (see cluster_warnings); printed, not refused.
    warnings: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """What would be sent, without secrets (the token appears as its variable's name)."""
        out = asdict(self)
        out["token"] = f"${self.token_env}" if self.token_env else None
        out["method"] = (
            "create_run_from_pipeline_package" if self.package else "create_run_from_pipeline_func"
        )
        return out


def check_host(host: str) -> str:
    """The host URL without a trailing slash, or ConfigError."""
    parsed = urlparse(host)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.hostname is None:
        raise ConfigError(
            f"--host {host!r} is not a URL of the KFP API: use http(s)://host[:port][/path], "
            "e.g. https://kubeflow.example.com/pipeline"
        )
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(f"--host {host!r} has an invalid port: {exc}") from exc
    return host.rstrip("/")


def cluster_warnings(cfg: Any) -> list[str]:
    """Settings of a run config that suit a local run but not a cluster run, in words."""
    out = []
    if cfg.deploy.start_servers:
        out.append(
            "deploy.start_servers is true: the deploy step would start server processes inside "
            "its own pod instead of leaving serving to the InferenceServices; set it to false"
        )
    ledger = str(cfg.run.ledger_path)
    if not ledger.startswith("/"):
        out.append(
            f"run.ledger_path {ledger!r} is relative: every pod would start an empty ledger, so "
            "the lifetime epsilon budget would not hold across runs; compile with --ledger-pvc "
            "and set /mnt/recsynth-ledger/privacy-ledger.jsonl"
        )
    return out


def build_submission(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Submission:
    """Check every argument and assemble the submission.

    Raises:
        ConfigError: naming the argument, its value and what is allowed.
    """
    environ = dict(os.environ if environ is None else environ)
    host = check_host(args.host)
    if args.namespace is not None and not _NAMESPACE.match(args.namespace):
        raise ConfigError(
            f"--namespace {args.namespace!r} is not a Kubernetes namespace: lower-case letters, "
            "digits and '-', at most 63, starting and ending with a letter or digit"
        )
    if not args.experiment.strip():
        raise ConfigError("--experiment must not be empty")
    run_name = args.run_name or "recsynth-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    if not _RUN_NAME.match(run_name):
        raise ConfigError(
            f"--run-name {run_name!r} is not allowed: 1-63 letters, digits, '.', '_' or '-'"
        )
    if args.config is not None and not Path(args.config).is_file():
        raise ConfigError(f"--config {args.config}: file does not exist")
    if args.package is not None and not Path(args.package).is_file():
        raise ConfigError(f"--package {args.package}: file does not exist")
    if not args.source.strip():
        raise ConfigError("--source must not be empty: use 'bundled' or a URI the image can read")
    if args.token_env is not None:
        if not _ENV_VAR.match(args.token_env):
            raise ConfigError(f"--token-env {args.token_env!r} is not an environment variable name")
        if not environ.get(args.token_env):
            raise ConfigError(f"--token-env {args.token_env}: the variable is not set or empty")

    from pipelines.local import pipeline_arguments

    cfg = load_config(args.config)
    return Submission(
        host=host,
        namespace=args.namespace,
        experiment=args.experiment,
        run_name=run_name,
        config_file=args.config,
        source=args.source,
        token_env=args.token_env,
        package=args.package,
        enable_caching=args.enable_caching,
        arguments={"config": pipeline_arguments(cfg), "source": args.source, "run_id": run_name},
        warnings=tuple(cluster_warnings(cfg)),
    )


def submit(submission: Submission, environ: dict[str, str] | None = None) -> str:
    """Send the run to the cluster; returns the KFP run id."""
    import kfp

    from pipelines.pipeline import recsynth_pipeline

    environ = dict(os.environ if environ is None else environ)
    token = environ.get(submission.token_env) if submission.token_env else None
    client_kwargs: dict[str, Any] = {"host": submission.host, "existing_token": token}
    if submission.namespace is not None:
        client_kwargs["namespace"] = submission.namespace
    client = kfp.Client(**client_kwargs)
    common = {
        "arguments": submission.arguments,
        "run_name": submission.run_name,
        "experiment_name": submission.experiment,
        "namespace": submission.namespace,
        "enable_caching": submission.enable_caching,
    }
    if submission.package:
        result = client.create_run_from_pipeline_package(submission.package, **common)
    else:
        result = client.create_run_from_pipeline_func(recsynth_pipeline, **common)
    logger.info("submitted run %s (%s) to %s", submission.run_name, result.run_id, submission.host)
    return result.run_id


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.submit",
        description="Submit the recsynth pipeline to a Kubeflow Pipelines cluster.",
    )
    parser.add_argument("--host", required=True, help="KFP API URL, e.g. https://host/pipeline")
    parser.add_argument("--namespace", default=None, help="profile namespace (multi-user KFP)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment name")
    parser.add_argument("--config", default=None, help="run config YAML (default: defaults)")
    parser.add_argument("--source", default="bundled", help="shop log URI for ingest")
    parser.add_argument("--run-name", default=None, help="run name (default: a UTC timestamp)")
    parser.add_argument("--token-env", default=None, help="environment variable with the token")
    parser.add_argument("--package", default=None, help="submit this compiled YAML instead")
    parser.add_argument(
        "--enable-caching",
        action="store_true",
        help="let KFP reuse cached step outputs (off: every run retrains)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be sent, exit")
    return parser


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 submission failed, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        submission = build_submission(args, environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in submission.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print(json.dumps(submission.describe(), indent=2, sort_keys=True))
        return 0
    try:
        run_id = submit(submission, environ)
    except Exception as exc:  # noqa: BLE001 - the client raises many types; report and exit 1
        print(f"error: submitting to {submission.host} failed: {exc}", file=sys.stderr)
        return 1
    print(f"submitted run {submission.run_name}: {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
