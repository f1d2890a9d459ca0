"""Settings of the train step (sequential recommender)."""

from __future__ import annotations

from pydantic import Field

from components.common.privacy import DPConfig
from components.common.strict import StrictModel


class TrainConfig(StrictModel):
    d_model: int = Field(default=64, ge=8)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=2, ge=1)
    max_history: int = Field(default=50, ge=2)
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=128, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    dp: DPConfig = DPConfig(target_epsilon=4.0)
    k: int = Field(default=10, ge=1)
