"""Compile the recsynth pipeline to a KFP v2 package (YAML) for a cluster.

``python -m pipelines.compile --output build/recsynth-pipeline.yaml [--config configs/demo.yaml]
[--ledger-pvc recsynth-ledger]``

With ``--config`` the validated config is baked in as the default of the ``config`` parameter, so
the package can be started from the KFP UI without pasting it. With ``--ledger-pvc`` the
budget_check and dp_audit steps mount that PersistentVolumeClaim at
``pipelines.pipeline.LEDGER_MOUNT_PATH``, so the privacy ledger outlives every run's pods; point
``run.ledger_path`` inside that mount.
"""

import argparse
import logging
import sys
from pathlib import Path

from kfp import compiler

from components.common.config import load_config
from components.common.errors import ConfigError
from components.common.logs import configure_logging
from pipelines.local import pipeline_arguments
from pipelines.pipeline import make_pipeline

logger = logging.getLogger(__name__)


def compile_pipeline(
    output: str | Path, config_path: str | Path | None = None, *, ledger_pvc: str | None = None
) -> Path:
    """Write the pipeline package to ``output``.

    Args:
        output: the YAML file to write (its folder is created).
        config_path: a run config whose values become the ``config`` parameter's default.
        ledger_pvc: a PersistentVolumeClaim to mount for the privacy ledger; None mounts nothing.

    Returns:
        The written path.

    Raises:
        ConfigError: the config file is missing or invalid.
    """
    output = Path(output)
    parameters = None
    if config_path is not None:
        if not Path(config_path).is_file():
            raise ConfigError(f"config file {config_path} does not exist")
        parameters = {"config": pipeline_arguments(load_config(config_path))}
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        pipeline_func=make_pipeline(ledger_pvc=ledger_pvc),
        package_path=str(output),
        pipeline_parameters=parameters,
    )
    logger.info("compiled pipeline to %s (%d bytes)", output, output.stat().st_size)
    return output


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad arguments)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.compile", description="Compile the recsynth pipeline to YAML."
    )
    parser.add_argument("--output", default="build/recsynth-pipeline.yaml", help="YAML to write")
    parser.add_argument("--config", default=None, help="bake this run config in as the default")
    parser.add_argument(
        "--ledger-pvc",
        default=None,
        help="PersistentVolumeClaim that holds the privacy ledger (mounted in budget_check and "
        "dp_audit)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        path = compile_pipeline(args.output, args.config, ledger_pvc=args.ledger_pvc)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
