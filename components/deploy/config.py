"""Settings of the deploy step (local KServe processes and cluster manifests)."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from components.common.strict import StrictModel


class DeployConfig(StrictModel):
    """Where the local servers listen and what the rendered cluster manifests say.

    ``canary_traffic_percent`` sends that share of each model's traffic to the new run's revision
    while the previous revision keeps the rest; ``None`` rolls the new run out to 100 % at once,
    so a bad model reaches every customer before anyone can look at it.
    """

    start_servers: bool = True
    host: str = "127.0.0.1"
    recommender_port: int = Field(default=8080, ge=1024, le=65535)
    generator_port: int = Field(default=8081, ge=1024, le=65535)
    # Where local server pids live, so `make stop` finds them. Relative to the working directory.
    state_dir: str = ".recsynth"
    # Seconds to wait for GET /v2/models/<name>/ready to answer 200 (feast and ORT load first).
    ready_timeout_s: float = Field(default=180.0, gt=0, le=3600)
    storage_uri_prefix: str = "pvc://recsynth-models"
    namespace: str = "recsynth"
    # The serving image the cluster pulls; pinned by tag, never latest.
    serving_image: str = "ghcr.io/recsynth/recsynth-serving:0.1.0"
    canary_traffic_percent: int | None = Field(default=10, ge=1, le=99)
    gpus_per_predictor: int = Field(default=1, ge=0, le=8)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        # Local servers must never be reachable from other machines: only loopback addresses.
        try:
            loopback = value == "localhost" or ipaddress.ip_address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"host={value!r} is not allowed; use a loopback address (127.0.0.1)")
        return value

    @field_validator("serving_image")
    @classmethod
    def _pinned_image(cls, value: str) -> str:
        name, _, tag = value.rpartition(":")
        if "@sha256:" in value:
            return value
        if not name or "/" in tag or not tag or tag == "latest":
            raise ValueError(
                f"serving_image={value!r} must be pinned by a tag other than latest "
                "(e.g. ghcr.io/recsynth/recsynth-serving:0.1.0) or by digest"
            )
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> DeployConfig:
        if self.recommender_port == self.generator_port:
            raise ValueError(
                f"recommender_port and generator_port are both {self.recommender_port}; "
                "the two servers need different ports"
            )
        return self
