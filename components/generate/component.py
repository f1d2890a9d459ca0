"""KFP component of the generate step: DP causal LM and synthetic sessions."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("generate"), install_kfp_package=False)
def generate(
    config: dict,
    cleaned: Input[Dataset],
    generator_model: Output[Model],
    synthetic: Output[Dataset],
):
    """Train the DP-SGD session generator and sample synthetic sessions.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        cleaned: ingest output.
        generator_model: output directory of the causal LM, tokenizer and privacy.json.
        synthetic: output directory of synthetic_sessions.parquet.
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path

    from pydantic import ValidationError

    from components.common.config import RunConfig
    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.generate import logic
    from components.generate.config import GenerateConfig

    configure_logging()
    try:
        run_cfg = RunConfig.model_validate(config.get("run", {}))
        cfg = GenerateConfig.model_validate(config.get("generate", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'run' or 'generate': {exc}") from exc
    logic.run(
        cfg,
        Path(cleaned.path),
        Path(generator_model.path),
        Path(synthetic.path),
        seed=run_cfg.seed,
    )
