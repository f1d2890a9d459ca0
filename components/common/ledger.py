"""The privacy budget ledger: the epsilon every run spent, by dataset, across runs.

A dataset is identified by ``dataset_sha256``, the content hash of its cleaned events
(``cleaning_report.json``). The ledger is a JSON-lines file whose entries are only ever appended,
under an exclusive ``fcntl.flock``, so concurrent runs never lose an entry.

A run writes two kinds of entry. budget_check *reserves* the run's whole ``epsilon_budget`` before
any training, checking and appending under one exclusive lock, so two runs started together cannot
both pass a check that only one of them fits. dp_audit then records what the run actually *spent*,
which replaces that run's reservation in the sum. A run that stops between the two keeps its
reservation counted: its trainings may have run, and the ledger cannot tell, so it assumes the
worst.

Composition across runs is basic, as within a run (``components.dp_audit.logic``): every run on
the same dataset spends its epsilon on the same customers, so the dataset's cumulative epsilon is
the sum over its runs (per run: the spend, else the reservation). An entry whose epsilon is
``null`` records a training without DP: it has no finite guarantee, so the dataset's spend becomes
unbounded and every later run on it is refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from components.common.errors import PrivacyError

logger = logging.getLogger(__name__)

SPEND = "spend"
RESERVATION = "reservation"
COMPOSITION = "basic: a dataset's cumulative epsilon is the sum of the epsilons of its runs"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_sha(dataset_sha256: Any) -> str:
    if not isinstance(dataset_sha256, str) or not _SHA256.match(dataset_sha256):
        raise PrivacyError(
            f"dataset_sha256={dataset_sha256!r} must be 64 lowercase hex digits "
            "(the cleaning report's content hash)"
        )
    return dataset_sha256


def _check_amount(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PrivacyError(f"{name}={value!r} must be a finite number")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise PrivacyError(f"{name}={value!r} must be {bound}")
    return float(value)


@contextlib.contextmanager
def _locked(path: Path, mode: str, lock: int) -> Iterator[IO[str]]:
    with open(path, mode, encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), lock)
        try:
            yield handle
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def entries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every entry of the ledger, oldest first; none when the file does not exist yet.

    Raises:
        PrivacyError: a line is not a JSON object with a dataset and an epsilon. A damaged
            ledger is refused rather than skipped, since skipping would under-count the spend.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with _locked(path, "r", fcntl.LOCK_SH) as handle:
        lines = handle.read().splitlines()
    return _parse(path, lines)


def _parse(path: Path, lines: list[str]) -> list[dict[str, Any]]:
    result = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"privacy ledger {path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PrivacyError(f"{where}: not JSON ({exc.msg})") from exc
        valid = (
            isinstance(entry, dict)
            and isinstance(entry.get("dataset_sha256"), str)
            and entry.get("kind", SPEND) in (SPEND, RESERVATION)
            and "epsilon" in entry
            and (
                entry["epsilon"] is None
                or (
                    isinstance(entry["epsilon"], (int, float))
                    and not isinstance(entry["epsilon"], bool)
                    and math.isfinite(entry["epsilon"])
                    and entry["epsilon"] >= 0
                )
            )
        )
        if not valid:
            raise PrivacyError(
                f"{where}: expected an object with dataset_sha256 (str), kind (spend or "
                f"reservation) and epsilon (a number >= 0, or null for a run without DP), got "
                f"{line[:200]!r}"
            )
        result.append(entry)
    return result


def _dataset_total(all_entries: list[dict[str, Any]], dataset_sha256: str) -> float:
    """Sum one dataset's epsilon: each run counts its spend, or its reservation without one."""
    by_run: dict[str, dict[str, Any]] = {}
    anonymous: list[dict[str, Any]] = []
    for entry in all_entries:
        if entry["dataset_sha256"] != dataset_sha256:
            continue
        run_id = entry.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            anonymous.append(entry)
            continue
        kept = by_run.get(run_id)
        # A spend supersedes the reservation of the same run; of two spends the later one wins.
        if kept is None or entry.get("kind", SPEND) == SPEND:
            by_run[run_id] = entry
    total = 0.0
    for entry in [*by_run.values(), *anonymous]:
        if entry["epsilon"] is None:
            return math.inf
        total += float(entry["epsilon"])
    return total


def spent(path: str | os.PathLike[str], dataset_sha256: str) -> float:
    """The cumulative epsilon recorded for one dataset (basic composition: the sum).

    Each run counts once: with its recorded spend, or with its reservation when it has no spend
    (it is running, or it stopped after budget_check).

    Returns:
        The sum of the dataset's epsilons; 0.0 when it has none, ``math.inf`` when one of its runs
        trained without DP.
    """
    return _dataset_total(entries(path), _check_sha(dataset_sha256))


def check_budget(
    path: str | os.PathLike[str],
    dataset_sha256: str,
    requested: float,
    lifetime_budget: float,
) -> float:
    """Refuse a run whose requested epsilon would take the dataset past its lifetime budget.

    Args:
        path: the ledger file.
        dataset_sha256: the dataset's content hash.
        requested: the most epsilon the run may spend (its ``epsilon_budget``).
        lifetime_budget: the most epsilon the dataset may ever spend.

    Returns:
        The epsilon the dataset had spent before this run.

    Raises:
        PrivacyError: spent + requested exceeds the lifetime budget, or a value is invalid.
    """
    dataset_sha256 = _check_sha(dataset_sha256)
    requested = _check_amount("requested epsilon", requested, positive=True)
    lifetime_budget = _check_amount("lifetime_epsilon_budget", lifetime_budget, positive=True)
    already = spent(path, dataset_sha256)
    if already + requested > lifetime_budget:
        raise PrivacyError(
            f"dataset {dataset_sha256[:12]}: spent {already:.4g}, this run requests "
            f"{requested:.4g}, lifetime budget {lifetime_budget:.4g} (ledger {path}); "
            "the run is refused before any training"
        )
    logger.info(
        "privacy budget of dataset %s: spent %.4g, requested %.4g, lifetime budget %.4g",
        dataset_sha256[:12],
        already,
        requested,
        lifetime_budget,
    )
    return already


def reserve(
    path: str | os.PathLike[str],
    *,
    dataset_sha256: str,
    run_id: str,
    requested: float,
    lifetime_budget: float,
) -> float:
    """Check the run against the lifetime budget and reserve its epsilon, atomically.

    The check and the append happen under one exclusive lock on the ledger file, so of two runs
    that would each fit alone but not together, the second is refused.

    Args:
        path: the ledger file; its folder is created when missing.
        dataset_sha256: the dataset's content hash.
        run_id: the run's id; dp_audit's spend for the same id later replaces the reservation.
        requested: the most epsilon the run may spend (its ``epsilon_budget``).
        lifetime_budget: the most epsilon the dataset may ever spend.

    Returns:
        The epsilon the dataset had spent or reserved before this run.

    Raises:
        PrivacyError: spent + requested exceeds the lifetime budget (the message gives the three
            figures), the run id already has an entry, or a value is invalid.
    """
    dataset_sha256 = _check_sha(dataset_sha256)
    if not isinstance(run_id, str) or not run_id:
        raise PrivacyError(f"run_id={run_id!r} must be a non-empty string")
    requested = _check_amount("requested epsilon", requested, positive=True)
    lifetime_budget = _check_amount("lifetime_epsilon_budget", lifetime_budget, positive=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, "a+", fcntl.LOCK_EX) as handle:
        handle.seek(0)
        current = _parse(path, handle.read().splitlines())
        if any(e.get("run_id") == run_id for e in current):
            raise PrivacyError(
                f"run_id={run_id!r} already has an entry in the privacy ledger {path}: "
                "every run needs its own id"
            )
        already = _dataset_total(current, dataset_sha256)
        if already + requested > lifetime_budget:
            raise PrivacyError(
                f"dataset {dataset_sha256[:12]}: spent {already:.4g}, this run requests "
                f"{requested:.4g}, lifetime budget {lifetime_budget:.4g} (ledger {path}); "
                "the run is refused before any training"
            )
        entry = {
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "kind": RESERVATION,
            "dataset_sha256": dataset_sha256,
            "run_id": run_id,
            "epsilon": requested,
            "lifetime_budget": lifetime_budget,
            "composition": COMPOSITION,
        }
        handle.write(json.dumps(entry, sort_keys=True, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    logger.info(
        "privacy budget of dataset %s: spent %.4g, reserved %.4g for run %s, lifetime budget %.4g",
        dataset_sha256[:12],
        already,
        requested,
        run_id,
        lifetime_budget,
    )
    return already


def record(
    path: str | os.PathLike[str],
    *,
    dataset_sha256: str,
    run_id: str,
    epsilon: float | None,
    delta: float,
    trainings: dict[str, float | None],
) -> dict[str, Any]:
    """Append one run's spend to the ledger (one JSON line, under an exclusive lock).

    Args:
        path: the ledger file; its folder is created when missing.
        dataset_sha256: the dataset's content hash.
        run_id: the run's id.
        epsilon: the run's composed epsilon; None when a training had no DP guarantee.
        delta: the run's composed delta.
        trainings: the epsilon of each training of the run, by name (None: not DP).

    Returns:
        The entry written.

    Raises:
        PrivacyError: a value is invalid (each named with what is allowed).
    """
    dataset_sha256 = _check_sha(dataset_sha256)
    if not isinstance(run_id, str) or not run_id:
        raise PrivacyError(f"run_id={run_id!r} must be a non-empty string")
    if epsilon is not None:
        epsilon = _check_amount("epsilon", epsilon)
    delta = _check_amount("delta", delta)
    if delta >= 1:
        raise PrivacyError(f"delta={delta!r} must be below 1")
    if not isinstance(trainings, dict):
        raise PrivacyError(f"trainings={trainings!r} must be a dict of epsilon by training")
    clean_trainings = {
        str(name): None if value is None else _check_amount(f"trainings[{name!r}]", value)
        for name, value in trainings.items()
    }
    entry = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "kind": SPEND,
        "dataset_sha256": dataset_sha256,
        "run_id": run_id,
        "epsilon": epsilon,
        "delta": delta,
        "trainings": clean_trainings,
        "composition": COMPOSITION,
    }
    line = json.dumps(entry, sort_keys=True, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, "a", fcntl.LOCK_EX) as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    logger.info(
        "privacy ledger %s: run %s spent epsilon %s on dataset %s",
        path,
        run_id,
        epsilon,
        dataset_sha256[:12],
    )
    return entry
