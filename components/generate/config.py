"""Settings of the generate step (DP causal LM over customer item sequences)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.common.privacy import DPConfig
from components.common.strict import StrictModel


class GenerateConfig(StrictModel):
    architecture: Literal["llama", "gpt2"] = "llama"
    size: Literal["tiny", "small", "base"] = "small"
    max_length: int = Field(default=64, ge=8, le=1024)
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    dp: DPConfig = DPConfig(target_epsilon=4.0)
    n_synthetic: int = Field(default=2000, ge=0)
    temperature: float = Field(default=1.0, gt=0)
