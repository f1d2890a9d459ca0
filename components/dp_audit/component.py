"""KFP component of the dp_audit step; its ``passed`` output gates deployment."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("dp_audit"), install_kfp_package=False)
def dp_audit(
    config: dict,
    cleaned: Input[Dataset],
    generator_model: Input[Model],
    synthetic: Input[Dataset],
    training_set: Input[Dataset],
    recommender_model: Input[Model],
    dataset_sha256: str,
    run_id: str,
    audit: Output[Artifact],
) -> NamedTuple("AuditOutputs", passed=bool):
    """Audit the run's privacy: accounting, canaries, membership attack, copies and raw ids.

    The audited total is then recorded in the privacy ledger (``run.ledger_path``) against the
    dataset, whether or not the audit passed: the trainings ran and their outputs exist.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        cleaned: ingest's output (the real customers the attacks and the id scan need).
        generator_model: generate's model directory (privacy.json, canaries.json, weights).
        synthetic: generate's synthetic sessions.
        training_set: fuse's output (the recommender's real training sequences).
        recommender_model: train's model directory (privacy.json, canaries.json, weights).
        dataset_sha256: the cleaned dataset's content hash (from budget_check).
        run_id: the run's id, recorded in the ledger.
        audit: output directory of audit.json and audit.html.

    Returns:
        ``passed``: True when every check passed; deploy runs only then.
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path
    from typing import NamedTuple

    from pydantic import ValidationError

    from components.common.config import RunConfig
    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.dp_audit import logic
    from components.dp_audit.config import AuditConfig
    from components.generate.config import GenerateConfig

    configure_logging()
    try:
        run_cfg = RunConfig.model_validate(config.get("run", {}))
        cfg = AuditConfig.model_validate(config.get("dp_audit", {}))
        generate_cfg = GenerateConfig.model_validate(config.get("generate", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'run', 'dp_audit' or 'generate': {exc}") from exc
    result = logic.run(
        cfg,
        Path(generator_model.path),
        Path(recommender_model.path),
        Path(audit.path),
        epsilon_budget=run_cfg.epsilon_budget,
        cleaned_dir=Path(cleaned.path),
        synthetic_dir=Path(synthetic.path),
        training_dir=Path(training_set.path),
        ledger_path=run_cfg.ledger_path,
        dataset_sha256=dataset_sha256,
        run_id=run_id,
        generate_cfg=generate_cfg,
    )
    audit.metadata["passed"] = bool(result["passed"])
    audit.metadata["failed_checks"] = list(result["failed_checks"])
    if result["empirical_epsilon_lower_bound"] is not None:
        audit.metadata["empirical_epsilon_lower_bound"] = result["empirical_epsilon_lower_bound"]
    audit.metadata["total_epsilon"] = result["total_epsilon"]
    audit.metadata["epsilon_budget"] = result["epsilon_budget"]
    # Functional form on purpose: KFP runs this body alone, without a module-level class.
    outputs = NamedTuple("AuditOutputs", passed=bool)  # noqa: UP014
    return outputs(passed=bool(result["passed"]))
