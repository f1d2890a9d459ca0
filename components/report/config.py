"""Settings of the report step."""

from __future__ import annotations

from components.common.strict import StrictModel


class ReportConfig(StrictModel):
    title: str = "recsynth run report"
