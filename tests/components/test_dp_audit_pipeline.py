"""The audit in the compiled pipeline: its inputs, and the ledger's PVC on a cluster."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import compiler

from pipelines.pipeline import LEDGER_MOUNT_PATH, make_pipeline, recsynth_pipeline


def _compile(pipeline, path: Path) -> list[dict]:
    compiler.Compiler().compile(pipeline, str(path))
    return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def test_audit_reads_the_real_data_synthetic_data_and_both_models(tmp_path: Path) -> None:
    spec = _compile(recsynth_pipeline, tmp_path / "p.yaml")[0]
    task = spec["root"]["dag"]["tasks"]["dp-audit"]
    artifacts = task["inputs"]["artifacts"]
    assert set(artifacts) == {
        "cleaned",
        "generator_model",
        "synthetic",
        "training_set",
        "recommender_model",
    }
    assert artifacts["training_set"]["taskOutputArtifact"]["producerTask"] == "fuse"
    # Without a PVC the package carries no Kubernetes platform spec.
    assert len(_compile(recsynth_pipeline, tmp_path / "p.yaml")) == 1


def test_ledger_pvc_is_mounted_where_the_ledger_is_read_and_written(tmp_path: Path) -> None:
    docs = _compile(make_pipeline(ledger_pvc="recsynth-ledger"), tmp_path / "p.yaml")
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-budget-check", "exec-dp-audit"}
    for executor in executors.values():
        (mount,) = executor["pvcMount"]
        assert mount["mountPath"] == LEDGER_MOUNT_PATH
        assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == "recsynth-ledger"
