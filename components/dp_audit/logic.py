"""Privacy audit: recompute the epsilon of every DP training and gate deployment on the result.

Each DP training writes a :class:`~components.common.privacy.PrivacyRecord` beside its weights. The
audit trusts none of the reported epsilons: it recomputes each one from the noise multiplier,
sample rate, steps and delta with two Opacus accountants (PRV, the tighter one, and RDP, the
classic upper bound), then composes the trainings that are released together.

Every training whose output leaves the run is composed: the generator (its synthetic sessions), the
deployed recommender, and the real-only recommender that the report publishes as a baseline (its
metrics are computed from a model trained on the same customers, so they spend budget too).
Composition is basic: all are trained on the same customers, so their guarantees add up,
epsilon_total = sum(epsilon_i) at delta_total = sum(delta_i). Each training enters the sum with its
audited epsilon, the larger of the reported and the recomputed PRV figure, so a training that
reports a loose (larger) epsilon is charged what it claimed and one that under-reports is charged
the truth. The synthetic sessions are post-processing of the DP generator and cost nothing extra.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from components.common.artifacts import PRIVACY, StepTimer, atomic_dir, read_json, write_json
from components.common.errors import PrivacyError
from components.common.privacy import PrivacyRecord, compute_epsilon
from components.dp_audit.config import AuditConfig

logger = logging.getLogger(__name__)

AUDIT_FILE = "audit.json"
COMPOSITION = "basic: epsilon_total = sum of epsilons, delta_total = sum of deltas"


# The real-only baseline's record, written by the train step beside the deployed model's.
REAL_ONLY_PRIVACY = "real_only_privacy.json"


def read_privacy_record(
    model_dir: str | os.PathLike[str], expected_training: str, filename: str = PRIVACY
) -> PrivacyRecord:
    """Read and validate one training's privacy record (``privacy.json`` by default).

    Args:
        model_dir: the training's model directory.
        expected_training: the name the record should carry ("generator", "recommender").
        filename: the record's file name inside ``model_dir``.

    Returns:
        The validated record.

    Raises:
        InputError: the file is missing or not JSON.
        PrivacyError: a field is missing or out of range, naming every such field at once.
    """
    path = Path(model_dir) / filename
    raw = read_json(path)
    try:
        record = PrivacyRecord.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise PrivacyError(
            f"invalid privacy record of the {expected_training} ({path}): {problems}"
        ) from exc
    logger.info(
        "privacy record %s: dp=%s noise=%s sample_rate=%s steps=%s delta=%s units=%s",
        record.training,
        record.dp,
        record.noise_multiplier,
        record.sample_rate,
        record.steps,
        record.delta,
        record.n_units,
    )
    return record


def _audit_training(
    name: str, record: PrivacyRecord, tolerance: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Recompute one training's epsilon; return its audit entry and its checks."""
    entry: dict[str, Any] = {
        "training": record.training,
        "dp": record.dp,
        "accountant": record.accountant,
        "reported": record.epsilon,
        "recomputed_prv": None,
        "recomputed_rdp": None,
        "epsilon": None,
        "delta": record.delta,
        "noise_multiplier": record.noise_multiplier,
        "sample_rate": record.sample_rate,
        "steps": record.steps,
        "n_units": record.n_units,
        "unit": record.unit,
    }
    checks = [
        {
            "name": f"{name}_record_matches",
            "passed": record.training == name,
            "detail": f"record names training {record.training!r}, expected {name!r}",
        }
    ]
    if not record.dp:
        # No noise, no guarantee: this model must not be deployed, whatever the budget.
        checks.append(
            {
                "name": f"{name}_is_dp",
                "passed": False,
                "detail": f"the {name} was trained without DP-SGD: no finite epsilon",
            }
        )
        return entry, checks
    checks.append({"name": f"{name}_is_dp", "passed": True, "detail": "trained with DP-SGD"})

    accounting = {
        "noise_multiplier": record.noise_multiplier,
        "sample_rate": record.sample_rate,
        "steps": record.steps,
        "delta": record.delta,
        "n_units": record.n_units,
    }
    reported = record.epsilon
    if reported is None or not math.isfinite(reported) or reported < 0:
        raise PrivacyError(
            f"invalid privacy accounting inputs of the {name}: epsilon={reported!r} must be a "
            "finite number >= 0 for a DP training"
        )
    try:
        prv = compute_epsilon(accountant="prv", **accounting)
        rdp = compute_epsilon(accountant="rdp", **accounting)
    except PrivacyError as exc:
        raise PrivacyError(f"{name}: {exc}") from exc

    entry["recomputed_prv"] = prv
    entry["recomputed_rdp"] = rdp
    entry["epsilon"] = max(reported, prv)
    limit = reported * (1.0 + tolerance)
    checks.append(
        {
            "name": f"{name}_epsilon_recomputed",
            "passed": prv <= limit,
            "detail": (
                f"reported {reported:.4g}, recomputed PRV {prv:.4g} (RDP {rdp:.4g}); "
                f"allowed up to {limit:.4g} (tolerance {tolerance:.0%})"
            ),
        }
    )
    return entry, checks


def audit(
    cfg: AuditConfig,
    records: dict[str, PrivacyRecord],
    *,
    epsilon_budget: float,
) -> dict[str, Any]:
    """Audit privacy records already read; see :func:`run`.

    Args:
        cfg: the audit settings (relative tolerance of the recomputation).
        records: the record of each released training, by training name.
        epsilon_budget: the total epsilon the run may spend.

    Returns:
        The audit (what :func:`run` writes to ``audit.json``).
    """
    if not isinstance(epsilon_budget, (int, float)) or not (
        math.isfinite(epsilon_budget) and epsilon_budget > 0
    ):
        raise PrivacyError(f"epsilon_budget={epsilon_budget!r} must be a finite number > 0")

    trainings: dict[str, dict[str, Any]] = {}
    checks: list[dict[str, Any]] = []
    for name, record in records.items():
        entry, training_checks = _audit_training(name, record, cfg.tolerance)
        trainings[name] = entry
        checks.extend(training_checks)

    epsilons = [t["epsilon"] for t in trainings.values()]
    total_delta = sum(t["delta"] for t in trainings.values())
    if any(e is None for e in epsilons):
        total_epsilon = None
        not_dp = sorted(n for n, t in trainings.items() if t["epsilon"] is None)
        budget_check = {
            "name": "total_within_budget",
            "passed": False,
            "detail": f"no finite total: {', '.join(not_dp)} carries no DP guarantee",
        }
    else:
        total_epsilon = float(sum(epsilons))
        budget_check = {
            "name": "total_within_budget",
            "passed": total_epsilon <= epsilon_budget,
            "detail": (
                f"composed epsilon {total_epsilon:.4g} at delta {total_delta:.3g} "
                f"against budget {epsilon_budget:.4g}"
            ),
        }
    checks.append(budget_check)
    passed = all(c["passed"] for c in checks)
    result = {
        "trainings": trainings,
        "composition": COMPOSITION,
        "total_epsilon": total_epsilon,
        "total_delta": total_delta,
        "epsilon_budget": float(epsilon_budget),
        "tolerance": cfg.tolerance,
        "checks": checks,
        "passed": passed,
    }
    for check in checks:
        if not check["passed"]:
            logger.warning("audit check %s failed: %s", check["name"], check["detail"])
    logger.info(
        "dp audit %s: total epsilon %s (delta %.3g), budget %s",
        "passed" if passed else "FAILED",
        total_epsilon,
        total_delta,
        epsilon_budget,
    )
    return result


def run(
    cfg: AuditConfig,
    generator_dir: str | os.PathLike[str],
    recommender_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    epsilon_budget: float,
) -> dict[str, Any]:
    """Recompute, compose and check the epsilon of every DP training; write ``audit.json``.

    A check fails when a training was not DP, when its recomputed PRV epsilon exceeds the reported
    one by more than ``cfg.tolerance`` (relative), or when the composed total exceeds
    ``epsilon_budget``. A failed audit is a result, not an error: ``passed`` is False and deploy
    does not run.

    Args:
        cfg: audit settings.
        generator_dir: the generator model directory (with ``privacy.json``).
        recommender_dir: the recommender model directory (with ``privacy.json``).
        out_dir: where ``audit.json`` and ``step.json`` go.
        epsilon_budget: total epsilon the run may spend.

    Returns:
        The audit dict, with ``passed`` (bool).

    Raises:
        PrivacyError: an accounting input is invalid (each one named).
        InputError: a privacy record is missing or not JSON.
    """
    timer = StepTimer("dp_audit")
    records = {
        "generator": read_privacy_record(generator_dir, "generator"),
        "recommender": read_privacy_record(recommender_dir, "recommender"),
    }
    if (Path(recommender_dir) / REAL_ONLY_PRIVACY).is_file():
        records["recommender_real_only"] = read_privacy_record(
            recommender_dir, "recommender_real_only", REAL_ONLY_PRIVACY
        )
    result = audit(cfg, records, epsilon_budget=epsilon_budget)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / AUDIT_FILE, result)
        timer.write(tmp, result)
    return result
