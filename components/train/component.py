"""KFP component of the train step: DP sequential recommender and its evaluation."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("train"), install_kfp_package=False)
def train(config: dict, training_set: Input[Dataset], recommender_model: Output[Model]):
    """Train the DP-SGD recommender and evaluate it against the baselines.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        training_set: fuse output.
        recommender_model: output directory (weights, item map, privacy.json, metrics.json).
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path

    from pydantic import ValidationError

    from components.common.config import RunConfig
    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.train import logic
    from components.train.config import TrainConfig

    configure_logging()
    try:
        run_cfg = RunConfig.model_validate(config.get("run", {}))
        cfg = TrainConfig.model_validate(config.get("train", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'run' or 'train': {exc}") from exc
    logic.run(cfg, Path(training_set.path), Path(recommender_model.path), seed=run_cfg.seed)
