"""The whole pipeline under the KFP local runner, on a small slice of the bundled data.

Both sides of the DP audit gate: a generous budget deploys (deploy's output really exists), a
tiny one blocks deployment (deploy never ran, the report says so). A failing step stops the run
with its own error and nothing downstream runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common import ledger
from components.common.config import load_config
from pipelines import local

TEST_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "test.yaml")
GATED = ("export", "register-features", "deploy")


def _config(tmp_path, budget: float, lifetime: float = 1e6):
    return load_config(
        TEST_CONFIG,
        # The privacy ledger goes to the test's folder too, so runs never add up across tests.
        run={
            "epsilon_budget": budget,
            "lifetime_epsilon_budget": lifetime,
            "ledger_path": str(tmp_path / "ledger.jsonl"),
        },
        # Deploy's state file goes to the test's folder, not the checkout.
        deploy={"state_dir": str(tmp_path / "state")},
    )


@pytest.mark.integration
@pytest.mark.slow
def test_audit_passes_and_deploy_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    result = local.run_local(
        _config(tmp_path, 1000.0), source="bundled", run_id="gate-open", runs_dir=runs
    )

    # Everything of the run lives under runs/<run-id>/, and latest points at it.
    assert result.run_dir == runs / "gate-open"
    assert (runs / "latest").resolve() == result.run_dir.resolve()
    assert result.artifacts_dir.parent == result.run_dir
    for name in ("report.md", "report.html", "metrics.json", "config.yaml", "pipeline.log"):
        assert (result.run_dir / name).is_file(), name

    metrics = result.metrics
    assert metrics["audit_passed"] is True
    assert metrics["deployed"] is True
    audit = json.loads((result.task_dir("dp-audit") / "audit" / "audit.json").read_text())
    assert audit["passed"] is True
    assert metrics["epsilon"]["total"] == pytest.approx(audit["total_epsilon"])
    assert metrics["epsilon"]["budget"] == 1000.0
    for model in ("popularity", "real_only", "real_plus_synthetic"):
        for key in ("hr@10", "ndcg@10", "mrr", "coverage"):
            assert 0.0 <= metrics["metrics"][model][key] <= 1.0, (model, key)
    assert {f["feature"] for f in metrics["feature_sources"]} >= {"popularity", "country"}
    # The generator's quality report is copied beside the run's report.
    written = result.task_dir("generate") / "synthetic" / "quality.html"
    assert written.is_file()
    assert (result.run_dir / "quality.html").read_bytes() == written.read_bytes()
    assert metrics["cleaning"]["rows_kept"] > 0
    for step in ("ingest", "generate", "fuse", "train", "dp_audit", "export", "deploy"):
        assert metrics["steps"][step] > 0, step

    # The run's audited spend is in the ledger, against the cleaned dataset's hash.
    cleaning = json.loads(
        (result.task_dir("ingest") / "cleaned" / "cleaning_report.json").read_text()
    )
    # budget_check reserved the run's whole budget; dp_audit's spend replaced it.
    entries = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["reservation", "spend"]
    assert {e["dataset_sha256"] for e in entries} == {cleaning["dataset_sha256"]}
    assert {e["run_id"] for e in entries} == {"gate-open"}
    assert entries[0]["epsilon"] == 1000.0
    assert entries[1]["epsilon"] == pytest.approx(audit["total_epsilon"])
    ledger_spent = ledger.spent(tmp_path / "ledger.jsonl", cleaning["dataset_sha256"])
    assert ledger_spent == pytest.approx(audit["total_epsilon"])

    # The deploy task really ran: its output exists with its content.
    deployment = result.task_dir("deploy") / "deployment"
    servers = json.loads((deployment / "servers.json").read_text())
    assert servers["run_id"] == "gate-open"
    assert servers["servers"] == []  # start_servers is off in the test config
    assert any((deployment / "manifests").rglob("*.yaml"))
    assert (result.task_dir("export") / "exported" / "recommender" / "model.onnx").is_file()
    assert not result.task_dir("report-2").exists()

    # One progress line per step start and finish, and nothing else on the console.
    out = capsys.readouterr().out.splitlines()
    for task in (
        "ingest",
        "budget-check",
        "generate",
        "fuse",
        "train",
        "dp-audit",
        *GATED,
        "report",
    ):
        assert any(line.split()[1:3] == [task, "started"] for line in out), task
        assert any(line.split()[1:4] == [task, "finished", "in"] for line in out), task


@pytest.mark.integration
@pytest.mark.slow
def test_audit_fails_and_deploy_is_blocked(tmp_path):
    runs = tmp_path / "runs"
    result = local.run_local(
        _config(tmp_path, 0.01), source="bundled", run_id="gate-shut", runs_dir=runs
    )

    assert result.metrics["audit_passed"] is False
    assert result.metrics["deployed"] is False
    assert result.metrics["endpoints"] == []
    audit = json.loads((result.task_dir("dp-audit") / "audit" / "audit.json").read_text())
    budget = next(c for c in audit["checks"] if c["name"] == "total_within_budget")
    assert budget["passed"] is False
    for task in GATED:
        assert not result.task_dir(task).exists(), task
    assert result.task_dir("report-2").is_dir()
    assert "blocked by the DP audit" in (result.run_dir / "report.md").read_text()
    assert (runs / "latest").resolve() == result.run_dir.resolve()
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert record["deployed"] is False
    # A failed audit still spent its epsilon: the trainings ran.
    entries = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["epsilon"]) for e in entries] == [
        ("reservation", 0.01),
        ("spend", pytest.approx(audit["total_epsilon"])),
    ]


@pytest.mark.integration
def test_run_over_the_lifetime_budget_stops_before_training(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(local.PipelineFailed) as failed:
        local.run_local(
            _config(tmp_path, 10.0, lifetime=5.0), source="bundled", run_id="r", runs_dir=runs
        )

    assert failed.value.step == "budget-check"
    assert "spent 0, this run requests 10, lifetime budget 5" in failed.value.message
    artifacts = runs / "r" / "artifacts"
    assert (artifacts / "ingest").is_dir()
    for task in ("generate", "fuse", "train", "dp-audit"):
        assert not (artifacts / task).exists(), task
    # A refused run reserves nothing (the locked check may leave an empty ledger file behind).
    assert ledger.entries(tmp_path / "ledger.jsonl") == []


@pytest.mark.integration
def test_failing_step_stops_the_run(tmp_path):
    runs = tmp_path / "runs"
    missing = tmp_path / "no-such-log.parquet"
    with pytest.raises(local.PipelineFailed) as failed:
        local.run_local(_config(tmp_path, 10.0), source=str(missing), run_id="r", runs_dir=runs)

    assert failed.value.step == "ingest"
    assert "no-such-log.parquet" in failed.value.message
    run_dir = runs / "r"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["failed_step"] == "ingest"
    assert not (run_dir / "artifacts" / "generate").exists()
    assert not (runs / "latest").exists()
