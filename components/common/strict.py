"""Base class for typed, strict configuration objects."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config object that rejects unknown keys and wrong types when it is loaded.

    Every step's config derives from this, so a typo in a YAML key is an error that names the key,
    not a silently ignored setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
