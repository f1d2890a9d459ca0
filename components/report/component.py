"""KFP component of the report step; the steps after the audit gate are optional inputs."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("report"), install_kfp_package=False)
def report(
    config: dict,
    cleaned: Input[Dataset],
    generator_model: Input[Model],
    synthetic: Input[Dataset],
    training_set: Input[Dataset],
    recommender_model: Input[Model],
    audit: Input[Artifact],
    report: Output[Artifact],
    exported: Input[Model] | None = None,
    feature_store: Input[Artifact] | None = None,
    deployment: Input[Artifact] | None = None,
):
    """Write report.md, report.html and metrics.json of the run.

    ``exported``, ``feature_store`` and ``deployment`` are absent (None) when the DP audit blocked
    deployment; the report then says so.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        cleaned: ingest output.
        generator_model: generate's model directory.
        synthetic: generate's synthetic sessions.
        training_set: fuse output.
        recommender_model: train's model directory (metrics.json).
        audit: dp_audit output.
        report: output directory of the report.
        exported: export output, when it ran.
        feature_store: register_features output, when it ran.
        deployment: deploy output, when it ran.
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path

    from pydantic import ValidationError

    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.report import logic
    from components.report.config import ReportConfig

    configure_logging()
    try:
        cfg = ReportConfig.model_validate(config.get("report", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'report': {exc}") from exc

    def optional(artifact):
        return None if artifact is None else Path(artifact.path)

    logic.run(
        cfg,
        out_dir=Path(report.path),
        cleaned_dir=Path(cleaned.path),
        generator_dir=Path(generator_model.path),
        synthetic_dir=Path(synthetic.path),
        training_dir=Path(training_set.path),
        recommender_dir=Path(recommender_model.path),
        audit_dir=Path(audit.path),
        exported_dir=optional(exported),
        feature_store_dir=optional(feature_store),
        deployment_dir=optional(deployment),
    )
