"""KFP component of the budget_check step: refuse an overspending run before any training."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("budget_check"), install_kfp_package=False)
def budget_check(
    config: dict,
    cleaned: Input[Dataset],
    run_id: str,
    budget: Output[Artifact],
) -> NamedTuple("BudgetOutputs", dataset_sha256=str):
    """Fail the run if its epsilon_budget would take the dataset past its lifetime budget.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        cleaned: ingest's output directory (``cleaning_report.json``).
        run_id: the run's id, under which the run's epsilon is reserved in the ledger.
        budget: output directory of budget.json.

    Returns:
        ``dataset_sha256``: the dataset's content hash, which dp_audit records the spend against.
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path
    from typing import NamedTuple

    from pydantic import ValidationError

    from components.budget_check import logic
    from components.common.config import RunConfig
    from components.common.errors import ConfigError
    from components.common.logs import configure_logging

    configure_logging()
    try:
        run_cfg = RunConfig.model_validate(config.get("run", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'run': {exc}") from exc
    result = logic.run(run_cfg, Path(cleaned.path), Path(budget.path), run_id=run_id)
    budget.metadata.update(
        {k: result[k] for k in ("dataset_sha256", "spent", "requested", "lifetime_budget")}
    )
    # Functional form on purpose: KFP runs this body alone, without a module-level class.
    outputs = NamedTuple("BudgetOutputs", dataset_sha256=str)  # noqa: UP014
    return outputs(dataset_sha256=result["dataset_sha256"])
