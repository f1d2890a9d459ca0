"""Settings of the dp_audit step."""

from __future__ import annotations

from pydantic import Field

from components.common.strict import StrictModel


class AuditConfig(StrictModel):
    # Recomputed epsilon may exceed the reported one by this relative tolerance (accountant error).
    tolerance: float = Field(default=0.02, ge=0, le=0.5)
