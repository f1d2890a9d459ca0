"""KFP component of the register_features step: a materialised Feast repo."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("register_features"), install_kfp_package=False)
def register_features(
    config: dict,
    cleaned: Input[Dataset],
    training_set: Input[Dataset],
    feature_store: Output[Artifact],
):
    """Write, apply and materialise the Feast feature repo of this run.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        cleaned: ingest output (customer histories).
        training_set: fuse output (item features).
        feature_store: output directory: a complete Feast repo.
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path

    from pydantic import ValidationError

    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.register_features import logic
    from components.register_features.config import FeaturesConfig

    configure_logging()
    try:
        cfg = FeaturesConfig.model_validate(config.get("register_features", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'register_features': {exc}") from exc
    logic.run(cfg, Path(cleaned.path), Path(training_set.path), Path(feature_store.path))
