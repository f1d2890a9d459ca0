"""dp_audit on hand-made privacy records: recomputation, composition, budget and bad input."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from components.common.errors import InputError, PrivacyError
from components.common.privacy import compute_epsilon
from components.dp_audit import logic
from components.dp_audit.config import AuditConfig

GEN = {"noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 60, "delta": 1e-5}
REC = {"noise_multiplier": 0.9, "sample_rate": 0.02, "steps": 200, "delta": 1e-5}


@functools.cache
def _true_epsilon(noise: float, rate: float, steps: int, delta: float, accountant: str) -> float:
    return compute_epsilon(
        noise_multiplier=noise, sample_rate=rate, steps=steps, delta=delta, accountant=accountant
    )


def _eps(params: dict, accountant: str = "prv") -> float:
    return _true_epsilon(
        params["noise_multiplier"],
        params["sample_rate"],
        params["steps"],
        params["delta"],
        accountant,
    )


def _record(training: str, params: dict, **changes) -> dict:
    record = {
        "training": training,
        "dp": True,
        **params,
        "epsilon": _eps(params),
        "accountant": "prv",
        "max_grad_norm": 1.0,
        "unit": "customer",
        "n_units": 1000,
        "target_epsilon": None,
    }
    record.update(changes)
    return record


def _write(tmp_path: Path, gen: dict, rec: dict) -> tuple[Path, Path]:
    gen_dir, rec_dir = tmp_path / "generator_model", tmp_path / "recommender_model"
    for directory, record in ((gen_dir, gen), (rec_dir, rec)):
        directory.mkdir()
        (directory / "privacy.json").write_text(json.dumps(record), encoding="utf-8")
    return gen_dir, rec_dir


def _run(tmp_path: Path, gen: dict, rec: dict, budget: float = 50.0) -> dict:
    gen_dir, rec_dir = _write(tmp_path, gen, rec)
    return logic.run(AuditConfig(), gen_dir, rec_dir, tmp_path / "audit", epsilon_budget=budget)


def _check(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


def test_good_pair_passes_and_composes_by_sum(tmp_path):
    result = _run(tmp_path, _record("generator", GEN), _record("recommender", REC))

    assert result["passed"] is True
    gen, rec = result["trainings"]["generator"], result["trainings"]["recommender"]
    assert gen["recomputed_prv"] == pytest.approx(_eps(GEN), rel=1e-6)
    assert gen["recomputed_rdp"] == pytest.approx(_eps(GEN, "rdp"), rel=1e-6)
    assert rec["recomputed_prv"] == pytest.approx(_eps(REC), rel=1e-6)
    # RDP is the looser bound for the same mechanism.
    assert gen["recomputed_rdp"] > gen["recomputed_prv"]
    assert result["total_epsilon"] == pytest.approx(_eps(GEN) + _eps(REC), rel=1e-6)
    assert result["total_delta"] == pytest.approx(2e-5)
    assert (gen["noise_multiplier"], gen["sample_rate"], gen["steps"], gen["n_units"]) == (
        1.1,
        0.05,
        60,
        1000,
    )
    written = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert written["passed"] is True
    assert written["epsilon_budget"] == 50.0
    assert json.loads((tmp_path / "audit" / "step.json").read_text())["step"] == "dp_audit"


def test_conservative_report_passes_and_is_charged_what_it_claims(tmp_path):
    loose = _eps(GEN) * 1.5
    result = _run(tmp_path, _record("generator", GEN, epsilon=loose), _record("recommender", REC))

    assert result["passed"] is True
    assert result["trainings"]["generator"]["epsilon"] == pytest.approx(loose)
    assert result["total_epsilon"] == pytest.approx(loose + _eps(REC), rel=1e-6)


def test_under_reported_epsilon_fails(tmp_path):
    low = _eps(REC) * 0.8  # 20 % below the truth, tolerance is 2 %
    result = _run(tmp_path, _record("generator", GEN), _record("recommender", REC, epsilon=low))

    assert result["passed"] is False
    assert _check(result, "recommender_epsilon_recomputed")["passed"] is False
    assert _check(result, "generator_epsilon_recomputed")["passed"] is True
    # The total is charged the recomputed value, not the under-report.
    assert result["total_epsilon"] == pytest.approx(_eps(GEN) + _eps(REC), rel=1e-6)


def test_within_tolerance_passes(tmp_path):
    slightly_low = _eps(REC) / 1.01  # recomputed exceeds reported by 1 %, tolerance 2 %
    result = _run(
        tmp_path, _record("generator", GEN), _record("recommender", REC, epsilon=slightly_low)
    )

    assert _check(result, "recommender_epsilon_recomputed")["passed"] is True
    assert result["passed"] is True


def test_non_dp_training_fails(tmp_path):
    no_dp = _record("generator", GEN, dp=False, epsilon=None, noise_multiplier=0.0)
    result = _run(tmp_path, no_dp, _record("recommender", REC))

    assert result["passed"] is False
    assert _check(result, "generator_is_dp")["passed"] is False
    assert _check(result, "total_within_budget")["passed"] is False
    assert result["total_epsilon"] is None


def test_over_budget_fails(tmp_path):
    budget = (_eps(GEN) + _eps(REC)) * 0.9
    result = _run(tmp_path, _record("generator", GEN), _record("recommender", REC), budget)

    assert result["passed"] is False
    assert _check(result, "total_within_budget")["passed"] is False
    assert _check(result, "generator_epsilon_recomputed")["passed"] is True
    assert _check(result, "recommender_epsilon_recomputed")["passed"] is True


def test_swapped_records_fail(tmp_path):
    result = _run(tmp_path, _record("recommender", GEN), _record("recommender", REC))

    assert _check(result, "generator_record_matches")["passed"] is False
    assert result["passed"] is False


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"steps": -3}, "steps"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 0.01}, "delta"),  # not below 1 / n_units = 1e-3
        ({"n_units": 0}, "n_units"),
        ({"epsilon": None}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
    ],
)
def test_invalid_accounting_input_raises_naming_it(tmp_path, changes, named):
    gen_dir, rec_dir = _write(
        tmp_path, _record("generator", GEN), _record("recommender", REC, **changes)
    )
    with pytest.raises(PrivacyError, match=named):
        logic.run(AuditConfig(), gen_dir, rec_dir, tmp_path / "audit", epsilon_budget=10.0)


def test_every_invalid_input_is_named_at_once(tmp_path):
    gen_dir, rec_dir = _write(
        tmp_path,
        _record("generator", GEN, sample_rate=2.0, steps=-1, delta=5.0),
        _record("recommender", REC),
    )
    with pytest.raises(PrivacyError, match=r"sample_rate.*steps.*delta|sample_rate.*delta.*steps"):
        logic.run(AuditConfig(), gen_dir, rec_dir, tmp_path / "audit", epsilon_budget=10.0)


def test_failed_audit_input_leaves_no_output(tmp_path):
    gen_dir, rec_dir = _write(
        tmp_path, _record("generator", GEN), _record("recommender", REC, sample_rate=0.0)
    )
    with pytest.raises(PrivacyError):
        logic.run(AuditConfig(), gen_dir, rec_dir, tmp_path / "audit", epsilon_budget=10.0)
    assert not (tmp_path / "audit").exists()


def test_missing_record_is_an_input_error(tmp_path):
    gen_dir, rec_dir = _write(tmp_path, _record("generator", GEN), _record("recommender", REC))
    (rec_dir / "privacy.json").unlink()
    with pytest.raises(InputError, match="privacy.json"):
        logic.run(AuditConfig(), gen_dir, rec_dir, tmp_path / "audit", epsilon_budget=10.0)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_budget_raises(tmp_path, budget):
    gen_dir, rec_dir = _write(tmp_path, _record("generator", GEN), _record("recommender", REC))
    with pytest.raises(PrivacyError, match="epsilon_budget"):
        logic.run(AuditConfig(), gen_dir, rec_dir, tmp_path / "audit", epsilon_budget=budget)


def test_published_real_only_baseline_is_composed_too(tmp_path):
    # The train step writes the real-only baseline's record beside the deployed model's; its
    # metrics are published, so its epsilon counts towards the run's budget.
    gen_dir, rec_dir = _write(tmp_path, _record("generator", GEN), _record("recommender", REC))
    baseline = _record("recommender_real_only", REC)
    (rec_dir / "real_only_privacy.json").write_text(json.dumps(baseline), encoding="utf-8")
    two = _eps(GEN) + _eps(REC)
    three = two + _eps(REC)

    result = logic.run(
        AuditConfig(), gen_dir, rec_dir, tmp_path / "audit", epsilon_budget=(two + three) / 2
    )

    assert set(result["trainings"]) == {"generator", "recommender", "recommender_real_only"}
    assert result["total_epsilon"] == pytest.approx(three, rel=1e-6)
    assert result["total_delta"] == pytest.approx(3e-5)
    assert _check(result, "total_within_budget")["passed"] is False
    assert result["passed"] is False


def test_summary_names_the_model_of_each_worst_case() -> None:
    from components.dp_audit.logic import _summary

    def mia(auc: float, low: float, high: float, n: int) -> dict:
        figures = {"auc": auc, "tpr_at_0.1pct_fpr": low, "tpr_at_1pct_fpr": high}
        return {**figures, "n_members": n, "n_non_members": 30}

    checks = [
        {"name": "generator_membership_inference", "figures": mia(0.50, 0.02, 0.01, 100)},
        {"name": "recommender_membership_inference", "figures": mia(0.55, 0.00, 0.05, 200)},
        {"name": "generator_canary_bound", "figures": {"epsilon_lower_bound": 0.4}},
        {"name": "recommender_canary_bound", "figures": {"epsilon_lower_bound": 0.1}},
    ]
    s = _summary(checks)
    assert (s["mia_auc"], s["mia_auc_model"], s["mia_n_members"]) == (0.55, "recommender", 200)
    assert (s["mia_tpr_at_0.1pct_fpr"], s["mia_tpr_at_0.1pct_fpr_model"]) == (0.02, "generator")
    assert (s["mia_tpr_at_1pct_fpr"], s["mia_tpr_at_1pct_fpr_model"]) == (0.05, "recommender")
    assert s["empirical_epsilon_lower_bound"] == 0.4
    assert s["empirical_epsilon_lower_bound_model"] == "generator"
    assert _summary([])["mia_auc_model"] is None
