"""The deploy step: render the cluster's InferenceServices and start the local model servers.

Output ``deployment/``:

- ``manifests/``: the ServingRuntime and the two InferenceServices of this run (rollout with a
  canary, ``promote/`` and ``rollback/`` variants), built with kserve's models;
- ``rollout.md``: which kubectl command applies which file;
- ``servers.json``: the local servers (name, pid, host, port, url, model_dir, log);
- ``logs/<model>.log``: each server's stdout and stderr;
- ``step.json``.

The local servers outlive the step. They are also listed in ``<state_dir>/servers.json``, which
``python -m components.deploy.control stop`` (``make stop``) reads; the next deploy stops them
before it starts new ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.common.artifacts import StepTimer, atomic_dir, write_json
from components.common.errors import InputError
from components.deploy import manifests, servers
from components.deploy.config import DeployConfig

logger = logging.getLogger(__name__)

SERVERS_FILE = "servers.json"
ROLLOUT_FILE = "rollout.md"


def run(
    cfg: DeployConfig,
    exported_dir: Path,
    feature_store_dir: Path,
    out_dir: Path,
    *,
    run_id: str,
) -> dict[str, Any]:
    """Render this run's manifests and, if ``cfg.start_servers``, (re)start the local servers.

    Args:
        cfg: the deploy section of the run config.
        exported_dir: the export step's output (``recommender/``, ``generator/``).
        feature_store_dir: the register_features step's applied Feast repo.
        out_dir: the ``deployment/`` directory to write.
        run_id: the pipeline run; names the storage path the cluster loads models from.

    Returns:
        The summary: run id, storage URIs, canary percent, manifest files, endpoints and pids.

    Raises:
        ConfigError: a bad run id, or a port held by a process recsynth did not start.
        InputError: an exported model or the feature repo is missing.
        ServerStartError: a server exited or did not get ready within ``cfg.ready_timeout_s``.
    """
    timer = StepTimer("deploy")
    manifests.check_run_id(run_id)
    exported_dir, feature_store_dir, out_dir = (
        Path(exported_dir),
        Path(feature_store_dir),
        Path(out_dir),
    )
    if cfg.start_servers:
        _check_inputs(exported_dir, feature_store_dir)
    state = servers.StateFile(cfg.state_dir)
    logger.info(
        "deploy run_id=%s canary=%s start_servers=%s state=%s",
        run_id,
        cfg.canary_traffic_percent,
        cfg.start_servers,
        state.path,
    )

    with atomic_dir(out_dir) as tmp:
        # 1. the cluster side: manifests and the rollout how-to
        files = manifests.render_all(cfg, run_id=run_id, out_dir=tmp / "manifests")
        (tmp / ROLLOUT_FILE).write_text(
            manifests.rollout_markdown(cfg, run_id=run_id, files=files), encoding="utf-8"
        )

        # 2. the local side: replace the recorded servers with this run's
        records: list[dict[str, Any]] = []
        if cfg.start_servers:
            specs = server_specs(
                cfg, exported_dir, feature_store_dir, log_dir=tmp / "logs", final_dir=out_dir
            )
            records = servers.start_servers(
                specs,
                state,
                timeout_s=cfg.ready_timeout_s,
                failed_log_dir=state.dir / "logs",
            )
        write_json(tmp / SERVERS_FILE, {"run_id": run_id, "servers": records})

        summary = {
            "run_id": run_id,
            "namespace": cfg.namespace,
            "storage_uris": {m: manifests.storage_uri(cfg, run_id, m) for m in manifests.MODELS},
            "canary_traffic_percent": cfg.canary_traffic_percent,
            "gpus_per_predictor": cfg.gpus_per_predictor,
            "manifests": files,
            "servers_started": bool(records),
            "endpoints": {r["name"]: r["url"] for r in records},
            "pids": {r["name"]: r["pid"] for r in records},
            "state_file": str(state.path) if records else None,
        }
        timer.write(tmp, summary)
    logger.info("deploy done: endpoints=%s pids=%s", summary["endpoints"], summary["pids"])
    return summary


def server_specs(
    cfg: DeployConfig,
    exported_dir: Path,
    feature_store_dir: Path,
    *,
    log_dir: Path,
    final_dir: Path,
) -> list[servers.ServerSpec]:
    """The two ``python -m serving`` servers of the fixed serving CLI."""
    rec_dir = (exported_dir / "recommender").resolve()
    gen_dir = (exported_dir / "generator").resolve()
    return [
        servers.ServerSpec(
            name="recommender",
            argv=servers.serving_argv(
                "recommender",
                rec_dir,
                host=cfg.host,
                port=cfg.recommender_port,
                feature_repo=feature_store_dir.resolve(),
            ),
            host=cfg.host,
            port=cfg.recommender_port,
            model_dir=str(rec_dir),
            log_path=log_dir / "recommender.log",
            final_log_path=(final_dir / "logs" / "recommender.log").resolve(),
            port_field="recommender_port",
        ),
        servers.ServerSpec(
            name="generator",
            argv=servers.serving_argv("generator", gen_dir, host=cfg.host, port=cfg.generator_port),
            host=cfg.host,
            port=cfg.generator_port,
            model_dir=str(gen_dir),
            log_path=log_dir / "generator.log",
            final_log_path=(final_dir / "logs" / "generator.log").resolve(),
            port_field="generator_port",
        ),
    ]


def _check_inputs(exported_dir: Path, feature_store_dir: Path) -> None:
    # Checked before anything is stopped, so a bad input never takes the running servers down.
    missing = [
        str(p)
        for p in (
            exported_dir / "recommender" / "model.onnx",
            exported_dir / "generator" / "model.onnx",
            feature_store_dir / "feature_store.yaml",
        )
        if not p.is_file()
    ]
    if missing:
        raise InputError(
            f"deploy needs the exported models and the feature repo; missing {missing}",
            file=missing[0],
        )
