"""report on hand-made artifact dirs: metrics.json figures, deployed and blocked runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.errors import InputError
from components.report import logic
from components.report.config import ReportConfig

METRICS = {
    "popularity": {"hr@10": 0.05, "ndcg@10": 0.021, "mrr": 0.02, "coverage": 0.003},
    "real_only": {"hr@10": 0.12, "ndcg@10": 0.061, "mrr": 0.05, "coverage": 0.21},
    "real_plus_synthetic": {"hr@10": 0.14, "ndcg@10": 0.0705, "mrr": 0.06, "coverage": 0.25},
}
AUDIT = {
    "trainings": {
        "generator": {
            "reported": 3.9,
            "recomputed_prv": 3.95,
            "recomputed_rdp": 4.4,
            "epsilon": 3.95,
            "delta": 1e-5,
        },
        "recommender": {
            "reported": 4.0,
            "recomputed_prv": 3.98,
            "recomputed_rdp": 4.5,
            "epsilon": 4.0,
            "delta": 1e-5,
        },
        "recommender_real_only": {
            "reported": 3.9,
            "recomputed_prv": 3.9,
            "recomputed_rdp": 4.3,
            "epsilon": 3.9,
            "delta": 1e-5,
        },
    },
    "composition": "basic: epsilon_total = sum of epsilons, delta_total = sum of deltas",
    "total_epsilon": 11.85,
    "total_delta": 3e-5,
    "epsilon_budget": 12.0,
    "checks": [{"name": "total_within_budget", "passed": True, "detail": "11.85 <= 12"}],
    "passed": True,
}
CLEANING = {
    "source": "bundled",
    "rows_read": 1000,
    "rows_kept": 810,
    "dropped": {"missing_customer": 120, "cancellation": 50, "non_positive_price": 20},
}


def _dir(root: Path, name: str, step: str, wall: float, files: dict | None = None) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "step.json").write_text(
        json.dumps({"step": step, "wall_s": wall, "summary": {}}), encoding="utf-8"
    )
    for file, payload in (files or {}).items():
        (directory / file).write_text(json.dumps(payload), encoding="utf-8")
    return directory


@pytest.fixture
def dirs(tmp_path) -> dict[str, Path]:
    return {
        "cleaned_dir": _dir(tmp_path, "cleaned", "ingest", 1.5, {"cleaning_report.json": CLEANING}),
        "generator_dir": _dir(tmp_path, "generator_model", "generate", 30.25),
        "synthetic_dir": _dir(tmp_path, "synthetic", "generate", 30.25),
        "training_dir": _dir(tmp_path, "training_set", "fuse", 4.0),
        "recommender_dir": _dir(tmp_path, "recommender", "train", 12.0, {"metrics.json": METRICS}),
        "audit_dir": _dir(tmp_path, "audit", "dp_audit", 0.5, {"audit.json": AUDIT}),
    }


def _deployment(tmp_path: Path) -> dict[str, Path]:
    servers = {
        "servers": [
            {"model": "recommender", "host": "127.0.0.1", "port": 19080, "pid": 111},
            # deploy's own records: name and base url
            {"name": "generator", "url": "http://127.0.0.1:19081", "port": 19081, "pid": 112},
        ]
    }
    return {
        "exported_dir": _dir(tmp_path, "exported", "export", 6.0),
        "feature_store_dir": _dir(tmp_path, "feature_store", "register_features", 20.0),
        "deployment_dir": _dir(tmp_path, "deployment", "deploy", 3.0, {"servers.json": servers}),
    }


def test_deployed_run_metrics(tmp_path, dirs):
    out = tmp_path / "report"
    figures = logic.run(ReportConfig(), out_dir=out, **dirs, **_deployment(tmp_path))

    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(figures))
    assert written["metrics"] == METRICS
    assert written["epsilon"] == {
        "generator": 3.95,
        "recommender": 4.0,
        "recommender_real_only": 3.9,
        "total": 11.85,
        "budget": 12.0,
    }
    assert written["cleaning"] == {
        "rows_read": 1000,
        "rows_kept": 810,
        "dropped": {"missing_customer": 120, "cancellation": 50, "non_positive_price": 20},
    }
    assert written["steps"] == {
        "ingest": 1.5,
        "generate": 30.25,
        "fuse": 4.0,
        "train": 12.0,
        "dp_audit": 0.5,
        "export": 6.0,
        "register_features": 20.0,
        "deploy": 3.0,
        "report": written["steps"]["report"],
    }
    assert 0 <= written["steps"]["report"] < 60
    # In pipeline order (metrics.json itself is written with sorted keys).
    assert list(figures["steps"]) == [
        "ingest",
        "generate",
        "fuse",
        "train",
        "dp_audit",
        "export",
        "register_features",
        "deploy",
        "report",
    ]
    assert written["audit_passed"] is True
    assert written["deployed"] is True
    assert [e["url"] for e in written["endpoints"]] == [
        "http://127.0.0.1:19080/v2/models/recommender",
        "http://127.0.0.1:19081/v2/models/generator",
    ]
    md = (out / "report.md").read_text()
    assert "| real_plus_synthetic | 0.14 | 0.0705 |" in md
    assert "http://127.0.0.1:19080/v2/models/recommender" in md
    assert "| dropped: cancellation | 50 |" in md
    assert "| deployment | deployed: 2 local server(s), manifests rendered |" in md


def test_blocked_run_says_so(tmp_path, dirs):
    audit = json.loads(json.dumps(AUDIT))
    audit.update(passed=False, epsilon_budget=1.0)
    audit["checks"] = [{"name": "total_within_budget", "passed": False, "detail": "7.95 > 1"}]
    (dirs["audit_dir"] / "audit.json").write_text(json.dumps(audit))
    out = tmp_path / "report"
    figures = logic.run(ReportConfig(title="blocked <run>"), out_dir=out, **dirs)

    assert figures["audit_passed"] is False
    assert figures["deployed"] is False
    assert figures["endpoints"] == []
    assert "export" not in figures["steps"]
    assert figures["epsilon"]["budget"] == 1.0
    md = (out / "report.md").read_text()
    assert "blocked by the DP audit" in md
    assert "| DP audit | FAILED |" in md
    page = (out / "report.html").read_text()
    assert "blocked &lt;run&gt;" in page  # escaped, not markup
    assert "blocked by the DP audit" in page


def test_html_is_self_contained(tmp_path, dirs):
    out = tmp_path / "report"
    logic.run(ReportConfig(), out_dir=out, **dirs, **_deployment(tmp_path))

    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    for external in ("<script", "<link", "src=", "@import", "url("):
        assert external not in page


def test_missing_model_metrics_is_an_input_error(tmp_path, dirs):
    metrics = {k: v for k, v in METRICS.items() if k != "real_only"}
    (dirs["recommender_dir"] / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(InputError, match="real_only"):
        logic.run(ReportConfig(), out_dir=tmp_path / "report", **dirs)


def test_missing_cleaning_report_is_an_input_error(tmp_path, dirs):
    (dirs["cleaned_dir"] / "cleaning_report.json").unlink()
    with pytest.raises(InputError, match="cleaning_report.json"):
        logic.run(ReportConfig(), out_dir=tmp_path / "report", **dirs)
    assert not (tmp_path / "report").exists()


def test_cleaning_rules_are_listed_in_the_order_they_ran(tmp_path, dirs):
    report = dict(CLEANING, rules=["non_positive_price", "missing_customer", "cancellation"])
    (dirs["cleaned_dir"] / "cleaning_report.json").write_text(json.dumps(report))
    logic.run(ReportConfig(), out_dir=tmp_path / "report", **dirs)
    text = (tmp_path / "report" / "report.md").read_text()
    positions = [text.index(f"dropped: {rule}") for rule in report["rules"]]
    assert positions == sorted(positions)


def test_feature_sources_from_fuse_are_reported(tmp_path, dirs):
    record = {
        "step": "fuse",
        "wall_s": 4.0,
        "summary": {
            "feature_sources": {"popularity": "real: counts of real training customers"},
            "customer_feature_sources": {"country": "real: public list of cleaned/countries.json"},
        },
    }
    (dirs["training_dir"] / "step.json").write_text(json.dumps(record), encoding="utf-8")
    out = tmp_path / "report"
    figures = logic.run(ReportConfig(), out_dir=out, **dirs)

    assert figures["feature_sources"] == [
        {
            "feature": "popularity",
            "kind": "item",
            "source": "real: counts of real training customers",
        },
        {
            "feature": "country",
            "kind": "customer",
            "source": "real: public list of cleaned/countries.json",
        },
    ]
    md = (out / "report.md").read_text()
    assert "| country | customer | real: public list of cleaned/countries.json |" in md
    assert "## Features of the recommender and where they come from" in md


def test_training_set_without_feature_record_says_so(tmp_path, dirs):
    out = tmp_path / "report"
    figures = logic.run(ReportConfig(), out_dir=out, **dirs)

    assert figures["feature_sources"] == []
    assert "the training set predates feature records" in (out / "report.md").read_text()


def test_feature_sources_that_are_not_an_object_are_an_input_error(tmp_path, dirs):
    record = {"step": "fuse", "wall_s": 1.0, "summary": {"feature_sources": ["popularity"]}}
    (dirs["training_dir"] / "step.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(InputError, match="feature_sources"):
        logic.run(ReportConfig(), out_dir=tmp_path / "report", **dirs)


def test_audit_headline_rows_name_the_model_each_worst_case_came_from(tmp_path, dirs):
    audit = {
        **AUDIT,
        "empirical_epsilon_lower_bound": 0.0,
        "empirical_epsilon_lower_bound_model": "generator",
        "mia_auc": 0.537,
        "mia_auc_model": "recommender",
        "mia_tpr_at_0.1pct_fpr": 0.0007,
        "mia_tpr_at_0.1pct_fpr_model": "generator",
        "mia_tpr_at_1pct_fpr": 0.017,
        "mia_tpr_at_1pct_fpr_model": "recommender",
        "mia_n_members": 2864,
        "mia_n_non_members": 309,
    }
    (dirs["audit_dir"] / "audit.json").write_text(json.dumps(audit))
    out = tmp_path / "report"
    logic.run(ReportConfig(), out_dir=out, **dirs, **_deployment(tmp_path))
    page = (out / "report.md").read_text()
    assert (
        "| membership attack AUC (2864 members, 309 held out, worst model: recommender) | 0.537 |"
        in page
    )
    assert (
        "| attack TPR at 0.1 % FPR (worst model: generator; resolves to 1/309) | 0.0007 |" in page
    )
    assert "| attack TPR at 1 % FPR (worst model: recommender) | 0.017 |" in page
    assert "canaries, worst model: generator) | 0 |" in page
