"""KFP component of the fuse step: real + synthetic sequences and item features."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("fuse"), install_kfp_package=False)
def fuse(
    config: dict,
    cleaned: Input[Dataset],
    synthetic: Input[Dataset],
    training_set: Output[Dataset],
):
    """Build the training set: item map, MiniLM item features, weighted sequences, eval cases.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        cleaned: ingest output.
        synthetic: generate's synthetic sessions.
        training_set: output directory of the fused training set.
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path

    from pydantic import ValidationError

    from components.common.config import RunConfig
    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.fuse import logic
    from components.fuse.config import FuseConfig

    configure_logging()
    try:
        run_cfg = RunConfig.model_validate(config.get("run", {}))
        cfg = FuseConfig.model_validate(config.get("fuse", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'run' or 'fuse': {exc}") from exc
    logic.run(
        cfg, Path(cleaned.path), Path(synthetic.path), Path(training_set.path), seed=run_cfg.seed
    )
