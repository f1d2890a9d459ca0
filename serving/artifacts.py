"""Reading the exported model folders: JSON files and the model version."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from serving.errors import ModelLoadError

logger = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    """Parse a JSON file, or fail the model load naming the file."""
    if not path.is_file():
        raise ModelLoadError(f"required file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid UTF-8 JSON: {exc}") from exc


def model_version(model_dir: Path) -> str:
    """The version each prediction carries.

    ``metadata.json``'s ``model_version`` (or ``version``) when export wrote one; otherwise the
    first 12 hex digits of the ONNX file's SHA-256, so two different models never share a name.
    """
    meta_path = model_dir / "metadata.json"
    if meta_path.is_file():
        meta = read_json(meta_path)
        if isinstance(meta, dict):
            for key in ("model_version", "version"):
                value = meta.get(key)
                if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
                    return str(value)
        logger.warning("%s has no model_version; using the ONNX file hash", meta_path)
    digest = hashlib.sha256()
    with (model_dir / "model.onnx").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:12]}"
