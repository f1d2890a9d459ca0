"""The whole run's configuration: one typed, strict section per step.

Loaded and validated once, in the entry point (``pipelines.local`` or ``pipelines.submit``), then
passed to each step as a plain dict; each step validates its own section again when it starts, so a
step run alone gets the same checks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from components.common.errors import ConfigError
from components.common.strict import StrictModel
from components.deploy.config import DeployConfig
from components.dp_audit.config import AuditConfig
from components.export.config import ExportConfig
from components.fuse.config import FuseConfig
from components.generate.config import GenerateConfig
from components.ingest.config import IngestConfig
from components.register_features.config import FeaturesConfig
from components.report.config import ReportConfig
from components.train.config import TrainConfig


class RunConfig(StrictModel):
    """Settings that concern the whole run."""

    seed: int = 0
    # Total epsilon this run may spend across all its DP trainings (composed by the accountant).
    epsilon_budget: float = Field(default=10.0, gt=0)
    # Most epsilon one dataset (by content hash) may spend over all its runs; the budget_check
    # step refuses a run whose epsilon_budget would take the dataset's ledger total past it.
    lifetime_epsilon_budget: float = Field(default=50.0, gt=0)
    # The privacy ledger (JSON lines), relative to the working directory; on a cluster a path on
    # a mounted PVC, so that every run sees the same file.
    ledger_path: str = Field(default="runs/privacy-ledger.jsonl", min_length=1)


class RecsynthConfig(StrictModel):
    run: RunConfig = RunConfig()
    ingest: IngestConfig = IngestConfig()
    generate: GenerateConfig = GenerateConfig()
    fuse: FuseConfig = FuseConfig()
    train: TrainConfig = TrainConfig()
    dp_audit: AuditConfig = AuditConfig()
    export: ExportConfig = ExportConfig()
    register_features: FeaturesConfig = FeaturesConfig()
    deploy: DeployConfig = DeployConfig()
    report: ReportConfig = ReportConfig()


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> RecsynthConfig:
    """Read a YAML config (defaults when ``path`` is None) and validate every section.

    Raises:
        ConfigError: naming each offending key, its value and what is allowed.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of step sections")
    for key, value in overrides.items():
        raw.setdefault(key, {}).update(value)
    try:
        return RecsynthConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid config {path or '(defaults)'}: {problems}") from exc
