"""Artifact layout shared by every step.

Each arrow of the pipeline is a directory on disk with fixed file names, so any step can be rerun
alone, tested alone and run in its own container. The names live here and nowhere else.

A step writes its outputs through :func:`atomic_dir`: everything goes to a hidden sibling first and
is renamed into place only when the step succeeded, so a failed step leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from components.common.errors import InputError

# ingest -> cleaned/
EVENTS = "events.parquet"  # one row per kept purchase line
ITEMS = "items.parquet"  # one row per product in the catalogue
CUSTOMERS = "customers.parquet"  # one row per customer
SEQUENCES = "sequences.parquet"  # one row per customer: items in order of first purchase
CLEANING_REPORT = "cleaning_report.json"

# generate -> generator_model/, synthetic/
PRIVACY = "privacy.json"  # written by every DP training, read by dp_audit
SYNTHETIC_SESSIONS = "synthetic_sessions.parquet"

# fuse -> training_set/
TRAIN_SEQUENCES = "train_sequences.parquet"
EVAL_CASES = "eval_cases.parquet"
ITEM_FEATURES = "item_features.parquet"
ITEM_MAP = "item_map.json"

# every step
STEP_RECORD = "step.json"

EVENT_COLUMNS = ("customer_id", "item_id", "invoice_id", "ts", "quantity", "unit_price", "country")
ITEM_COLUMNS = ("item_id", "description", "unit_price", "price_band", "n_events", "first_seen")
CUSTOMER_COLUMNS = ("customer_id", "country", "n_events", "first_ts", "last_ts")
SEQUENCE_COLUMNS = ("customer_id", "country", "items", "ts")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``final`` only if the block succeeds.

    Args:
        final: the output directory the step promises to write.

    Yields:
        A fresh, empty directory beside ``final`` to write into.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.is_dir():
        shutil.rmtree(final)
    elif final.exists():
        final.unlink()
    os.replace(tmp, final)


def _jsonable(value: Any) -> Any:
    """Turn non-finite floats into None so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write strict JSON (no NaN or Infinity), sorted and indented for diffs."""
    text = json.dumps(_jsonable(payload), indent=2, sort_keys=True, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON artifact, naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError("expected artifact file is missing", file=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(
            f"artifact is not valid JSON: {exc.msg}", file=str(path), row=exc.lineno
        ) from exc


def read_parquet(path: str | os.PathLike[str], columns: Sequence[str]) -> pd.DataFrame:
    """Read a parquet artifact and check that it has the promised columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError("expected artifact file is missing", file=str(path))
    frame = pd.read_parquet(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"artifact lacks columns {missing}; has {list(frame.columns)}",
            file=str(path),
            column=missing[0],
        )
    return frame


class StepTimer:
    """Measures a step's wall time and writes its record (``step.json``) into an output dir."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def write(self, out_dir: str | os.PathLike[str], summary: dict[str, Any]) -> dict[str, Any]:
        record = {"step": self.step, "wall_s": round(self.elapsed(), 3), "summary": summary}
        write_json(Path(out_dir) / STEP_RECORD, record)
        return record
