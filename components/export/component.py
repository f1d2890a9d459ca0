"""KFP component of the export step: both models to ONNX with parity checks."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("export"), install_kfp_package=False)
def export(
    config: dict,
    generator_model: Input[Model],
    recommender_model: Input[Model],
    training_set: Input[Dataset],
    exported: Output[Model],
):
    """Export the generator and the recommender to ONNX.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        generator_model: generate's model directory.
        recommender_model: train's model directory.
        training_set: fuse output (item features for the catalogue).
        exported: output directory with recommender/ and generator/.
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path

    from pydantic import ValidationError

    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.export import logic
    from components.export.config import ExportConfig

    configure_logging()
    try:
        cfg = ExportConfig.model_validate(config.get("export", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'export': {exc}") from exc
    logic.run(
        cfg,
        Path(generator_model.path),
        Path(recommender_model.path),
        Path(training_set.path),
        Path(exported.path),
    )
