"""The compiled pipeline holds every step, the audit gate, and deploy only behind it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.common.images import PIPELINE_IMAGE
from pipelines import compile as compile_cli

TEST_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "test.yaml")

STEPS = (
    "ingest",
    "budget-check",
    "generate",
    "fuse",
    "train",
    "dp-audit",
    "export",
    "register-features",
    "deploy",
    "report",
)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("build") / "recsynth-pipeline.yaml"
    assert compile_cli.main(["--output", str(path), "--config", TEST_CONFIG]) == 0
    return yaml.safe_load(path.read_text())


def _dag(package: dict, component: str) -> dict:
    return package["components"][component]["dag"]["tasks"]


def _gate(package: dict) -> tuple[str, str]:
    """The (passed, failed) branch components and check the conditions on the way."""
    branches = _dag(package, "comp-condition-branches-1")
    passed = next(t for t in branches.values() if t["taskInfo"]["name"] == "audit-passed")
    failed = next(t for t in branches.values() if t["taskInfo"]["name"] == "audit-failed")
    cond = "inputs.parameter_values['pipelinechannel--dp-audit-passed'] == true"
    assert passed["triggerPolicy"]["condition"] == cond
    assert failed["triggerPolicy"]["condition"] == f"!({cond})"
    return passed["componentRef"]["name"], failed["componentRef"]["name"]


def test_every_step_is_a_component(package):
    for step in STEPS:
        assert f"comp-{step}" in package["components"], step
        assert f"exec-{step}" in package["deploymentSpec"]["executors"], step


def test_gate_on_audit_passed(package):
    passed, failed = _gate(package)
    root = package["root"]["dag"]["tasks"]

    assert set(root) == {
        "ingest",
        "budget-check",
        "generate",
        "fuse",
        "train",
        "dp-audit",
        "condition-branches-1",
    }
    assert set(_dag(package, passed)) == {"export", "register-features", "deploy", "report"}
    assert set(_dag(package, failed)) == {"report-2"}
    assert package["components"]["comp-dp-audit"]["outputDefinitions"]["parameters"] == {
        "passed": {"parameterType": "BOOLEAN"}
    }


def test_blocked_report_gets_no_deployment(package):
    _, failed = _gate(package)
    blocked = _dag(package, failed)["report-2"]["inputs"]["artifacts"]
    deployed = _dag(package, _gate(package)[0])["report"]["inputs"]["artifacts"]

    assert {"exported", "feature_store", "deployment"}.isdisjoint(blocked)
    assert {"exported", "feature_store", "deployment"} <= set(deployed)
    optional = package["components"]["comp-report-2"]["inputDefinitions"]["artifacts"]
    assert optional["deployment"]["isOptional"] is True


def test_training_waits_for_the_budget_check(package):
    root = package["root"]["dag"]["tasks"]
    assert root["budget-check"]["dependentTasks"] == ["ingest"]
    assert "budget-check" in root["generate"]["dependentTasks"]
    # dp_audit records the spend against the hash the budget check read.
    sha = root["dp-audit"]["inputs"]["parameters"]["dataset_sha256"]["taskOutputParameter"]
    assert sha == {"outputParameterKey": "dataset_sha256", "producerTask": "budget-check"}


def test_branch_is_sequential(package):
    passed, _ = _gate(package)
    tasks = _dag(package, passed)
    assert tasks["register-features"]["dependentTasks"] == ["export"]
    assert sorted(tasks["deploy"]["dependentTasks"]) == ["export", "register-features"]


def test_images_pinned_and_no_runtime_install(package):
    for name, executor in package["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == PIPELINE_IMAGE, name
        assert not container["image"].endswith(":latest")
        assert "pip install" not in " ".join(container["command"]), name


def test_config_default_baked_in(package):
    default = package["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert default["generate"]["size"] == "tiny"
    assert default["deploy"]["start_servers"] is False


def test_missing_config_is_exit_2(tmp_path, capsys):
    code = compile_cli.main(["--output", str(tmp_path / "p.yaml"), "--config", "nope.yaml"])
    assert code == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_ledger_pvc_is_mounted_in_the_ledger_steps_only(tmp_path):
    path = tmp_path / "with-pvc.yaml"
    assert (
        compile_cli.main(
            ["--output", str(path), "--config", TEST_CONFIG, "--ledger-pvc", "recsynth-ledger"]
        )
        == 0
    )
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = next(d for d in docs if "platforms" in d)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted = {
        name: [(m["constant"], m["mountPath"]) for m in spec.get("pvcMount", [])]
        for name, spec in executors.items()
    }
    ledger_steps = {name for name, mounts in mounted.items() if mounts}
    assert ledger_steps == {"exec-budget-check", "exec-dp-audit"}
    for name in ledger_steps:
        assert mounted[name] == [("recsynth-ledger", "/mnt/recsynth-ledger")]
