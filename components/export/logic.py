"""The export step: both trained models to ONNX, each checked against torch before it is written.

The parity checks live with each model's exporter; this step runs both into one artifact so that
a failure of either leaves no exported directory behind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.common.artifacts import (
    ITEM_MAP,
    TRAIN_SEQUENCES,
    StepTimer,
    atomic_dir,
    read_parquet,
)
from components.common.ids import ItemMap
from components.export.config import ExportConfig

logger = logging.getLogger(__name__)


def _real_sequences(training_dir: Path, n: int) -> list[list[str]]:
    """Stock codes of the ``n`` longest real training sequences: parity inputs for the generator."""
    frame = read_parquet(training_dir / TRAIN_SEQUENCES, ["source", "items"])
    real = frame[frame["source"] == "real"]
    longest = real.assign(n=real["items"].map(len)).nlargest(n, "n")
    item_map = ItemMap.load(training_dir / ITEM_MAP)
    return [item_map.decode(items) for items in longest["items"]]


def run(
    cfg: ExportConfig,
    generator_dir: Path,
    recommender_dir: Path,
    training_dir: Path,
    out_dir: Path,
) -> dict[str, Any]:
    """Export the generator and the recommender into ``out_dir/{generator,recommender}``.

    Raises:
        ExportError (from either exporter) when ONNX Runtime and torch disagree beyond
        ``cfg.parity_atol``; nothing is written then.
    """
    # Imported here: each pulls in torch and onnx, which the step's callers may not need.
    from components.export.generator import export_generator
    from components.export.recommender import export_recommender

    timer = StepTimer("export")
    real = _real_sequences(Path(training_dir), max(cfg.parity_batch_sizes))
    with atomic_dir(out_dir) as tmp:
        generator = export_generator(
            Path(generator_dir), tmp / "generator", cfg=cfg, real_sequences=real
        )
        recommender = export_recommender(
            Path(recommender_dir), Path(training_dir), tmp / "recommender", cfg=cfg
        )
        summary = {"generator": generator, "recommender": recommender}
        timer.write(tmp, summary)
    logger.info("exported generator and recommender to %s", out_dir)
    return summary
