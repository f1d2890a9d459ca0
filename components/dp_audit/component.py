"""KFP component of the dp_audit step; its ``passed`` output gates deployment."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("dp_audit"), install_kfp_package=False)
def dp_audit(
    config: dict,
    generator_model: Input[Model],
    recommender_model: Input[Model],
    dataset_sha256: str,
    run_id: str,
    audit: Output[Artifact],
) -> NamedTuple("AuditOutputs", passed=bool):
    """Recompute and compose the epsilon of both DP trainings against the run's budget.

    The audited total is then recorded in the privacy ledger (``run.ledger_path``) against the
    dataset, whether or not the audit passed: the trainings ran and their outputs exist.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        generator_model: generate's model directory (privacy.json).
        recommender_model: train's model directory (privacy.json).
        dataset_sha256: the cleaned dataset's content hash (from budget_check).
        run_id: the run's id, recorded in the ledger.
        audit: output directory of audit.json.

    Returns:
        ``passed``: True when every check passed; deploy runs only then.
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path
    from typing import NamedTuple

    from pydantic import ValidationError

    from components.common import ledger
    from components.common.config import RunConfig
    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.dp_audit import logic
    from components.dp_audit.config import AuditConfig

    configure_logging()
    try:
        run_cfg = RunConfig.model_validate(config.get("run", {}))
        cfg = AuditConfig.model_validate(config.get("dp_audit", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'run' or 'dp_audit': {exc}") from exc
    result = logic.run(
        cfg,
        Path(generator_model.path),
        Path(recommender_model.path),
        Path(audit.path),
        epsilon_budget=run_cfg.epsilon_budget,
    )
    ledger.record(
        run_cfg.ledger_path,
        dataset_sha256=dataset_sha256,
        run_id=run_id,
        epsilon=result["total_epsilon"],
        delta=result["total_delta"],
        trainings={name: t["epsilon"] for name, t in result["trainings"].items()},
    )
    audit.metadata["passed"] = bool(result["passed"])
    audit.metadata["total_epsilon"] = result["total_epsilon"]
    audit.metadata["epsilon_budget"] = result["epsilon_budget"]
    # Functional form on purpose: KFP runs this body alone, without a module-level class.
    outputs = NamedTuple("AuditOutputs", passed=bool)  # noqa: UP014
    return outputs(passed=bool(result["passed"]))
