"""Check the run's requested epsilon against its dataset's lifetime budget, before any training.

The dataset is the cleaned input, identified by the content hash in ``cleaning_report.json``. The
run requests its ``run.epsilon_budget``, the most its DP trainings may spend together (the DP audit
holds them to it); the ledger (``components.common.ledger``) holds what earlier runs on the same
dataset spent. The step has no section of its own: it reads the run section
(``components.common.config.RunConfig``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from components.common import ledger
from components.common.artifacts import (
    CLEANING_REPORT,
    StepTimer,
    atomic_dir,
    read_json,
    write_json,
)
from components.common.config import RunConfig
from components.common.errors import InputError

logger = logging.getLogger(__name__)

BUDGET_FILE = "budget.json"


def dataset_hash(cleaned_dir: str | os.PathLike[str]) -> str:
    """The cleaned dataset's content hash, from its cleaning report.

    Raises:
        InputError: the report is missing, not JSON, or lacks a ``dataset_sha256`` string.
    """
    path = Path(cleaned_dir) / CLEANING_REPORT
    report = read_json(path)
    sha = report.get("dataset_sha256") if isinstance(report, dict) else None
    if not isinstance(sha, str) or not sha:
        raise InputError(
            f"dataset_sha256={sha!r}: the cleaning report must carry the dataset's content hash "
            "(a string of 64 hex digits)",
            file=str(path),
            column="dataset_sha256",
        )
    return sha


def run(
    run_cfg: RunConfig,
    cleaned_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    run_id: str,
) -> dict[str, Any]:
    """Refuse the run if its epsilon_budget would take the dataset past its lifetime budget.

    When the run fits, its whole epsilon_budget is reserved in the ledger in the same locked
    operation (``components.common.ledger.reserve``); dp_audit later records the actual spend.

    Args:
        run_cfg: the run section (epsilon_budget, lifetime_epsilon_budget, ledger_path).
        cleaned_dir: ingest's output (``cleaning_report.json``).
        out_dir: where ``budget.json`` and ``step.json`` go, only when the run may go ahead.
        run_id: the run's id, under which the reservation is written.

    Returns:
        dataset_sha256, spent, requested, lifetime_budget, remaining (after this run at most)
        and ledger_path.

    Raises:
        PrivacyError: the run is refused (the message gives the spent, requested and lifetime
            figures), or the ledger is damaged.
        InputError: the cleaning report lacks the dataset hash.
    """
    timer = StepTimer("budget_check")
    sha = dataset_hash(cleaned_dir)
    already = ledger.reserve(
        run_cfg.ledger_path,
        dataset_sha256=sha,
        run_id=run_id,
        requested=run_cfg.epsilon_budget,
        lifetime_budget=run_cfg.lifetime_epsilon_budget,
    )
    result = {
        "dataset_sha256": sha,
        "run_id": run_id,
        "reserved": run_cfg.epsilon_budget,
        "spent": already,
        "requested": run_cfg.epsilon_budget,
        "lifetime_budget": run_cfg.lifetime_epsilon_budget,
        "remaining": run_cfg.lifetime_epsilon_budget - already - run_cfg.epsilon_budget,
        "ledger_path": str(run_cfg.ledger_path),
        "composition": ledger.COMPOSITION,
    }
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / BUDGET_FILE, result)
        timer.write(tmp, result)
    return result
