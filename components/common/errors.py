"""Errors raised by pipeline steps for bad input, with enough context to fix it."""

from __future__ import annotations


class RecsynthError(Exception):
    """Base class for every error recsynth raises on purpose."""


class InputError(RecsynthError):
    """Input data is malformed: names the file, the column and the row where that is known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.file = file
        self.column = column
        self.row = row
        where = ", ".join(
            f"{k}={v}"
            for k, v in (("file", file), ("column", column), ("row", row))
            if v is not None
        )
        super().__init__(f"{message} ({where})" if where else message)


class ConfigError(RecsynthError):
    """A configuration value is out of range or inconsistent with another one."""


class PrivacyError(RecsynthError):
    """Privacy accounting inputs are invalid, or a budget would be exceeded."""


class ExportError(RecsynthError):
    """An exported graph is missing, malformed, or disagrees with torch beyond tolerance."""
