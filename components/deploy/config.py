"""Settings of the deploy step (local KServe processes and cluster manifests)."""

from __future__ import annotations

from pydantic import Field

from components.common.strict import StrictModel


class DeployConfig(StrictModel):
    start_servers: bool = True
    host: str = "127.0.0.1"
    recommender_port: int = Field(default=8080, ge=1024, le=65535)
    generator_port: int = Field(default=8081, ge=1024, le=65535)
    # Where local server pids live, so `make stop` finds them. Relative to the working directory.
    state_dir: str = ".recsynth"
    storage_uri_prefix: str = "pvc://recsynth-models"
    namespace: str = "recsynth"
