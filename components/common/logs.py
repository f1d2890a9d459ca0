"""Logging set-up for entry points. Modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import os


def configure_logging() -> None:
    """Configure the root logger once, at the level named by ``RECSYNTH_LOG_LEVEL`` (INFO)."""
    level = os.environ.get("RECSYNTH_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
