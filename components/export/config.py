"""Settings of the export step (ONNX)."""

from __future__ import annotations

from pydantic import Field

from components.common.strict import StrictModel


class ExportConfig(StrictModel):
    parity_atol: float = Field(default=1e-4, gt=0)
    parity_batch_sizes: tuple[int, ...] = (1, 3, 8)
    parity_lengths: tuple[int, ...] = (1, 7, 32)
    opset: int = Field(default=18, ge=13)
