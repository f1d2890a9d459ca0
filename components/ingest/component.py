"""KFP component of the ingest step: shop log -> ``cleaned/``."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.common.images import image_for


@dsl.component(base_image=image_for("ingest"), install_kfp_package=False)
def ingest(config: dict, source: str, cleaned: Output[Dataset]):
    """Read and clean the shop log named by ``source`` ("bundled" or a path).

    Args:
        config: the whole run config (``RecsynthConfig.model_dump(mode="json")``).
        source: "bundled" for the sample shipped in data/, or a file or folder of the dataset.
        cleaned: output directory (events, items, customers, sequences, cleaning report).
    """
    # KFP runs this function's source alone, so everything it needs is imported here.
    from pathlib import Path

    from pydantic import ValidationError

    from components.common.errors import ConfigError
    from components.common.logs import configure_logging
    from components.ingest import logic
    from components.ingest.config import IngestConfig

    configure_logging()
    try:
        cfg = IngestConfig.model_validate(config.get("ingest", {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config section 'ingest': {exc}") from exc
    logic.run(cfg, source, Path(cleaned.path))
