"""KFP component of the deploy step: KServe processes on 127.0.0.1 and cluster manifests."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("deploy"), install_kfp_package=False)
def deploy(
    config: dict,
    run_id: str,
    exported: Input[Model],
    feature_store: Input[Artifact],
    deployment: Output[Artifact],
):
    """Serve the exported models and render their InferenceService manifests.

    The pipeline runs this step only when the DP audit passed.

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        run_id: the run's id, recorded with the servers and in the manifests.
        exported: export output.
        feature_store: register_features output.
        deployment: output directory (servers.json, manifests/).
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path

    from pydantic import ValidationError

    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.deploy import logic
    from components.deploy.config import DeployConfig

    configure_logging()
    try:
        cfg = DeployConfig.model_validate(config.get("deploy", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'deploy': {exc}") from exc
    logic.run(
        cfg, Path(exported.path), Path(feature_store.path), Path(deployment.path), run_id=run_id
    )
