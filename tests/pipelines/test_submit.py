"""submit's argument handling, without a cluster (--dry-run and the checks before it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import submit

TEST_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "test.yaml")

HOST = "https://kubeflow.example.com/pipeline"


def _dry(capsys, *args: str, environ: dict | None = None) -> tuple[int, dict | None, str]:
    code = submit.main(["--host", HOST, "--dry-run", *args], environ=environ or {})
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_dry_run_prints_what_would_be_sent(capsys):
    code, sent, _ = _dry(
        capsys,
        "--namespace",
        "team-a",
        "--experiment",
        "nightly",
        "--config",
        TEST_CONFIG,
        "--source",
        "gs://bucket/online-retail/",
        "--run-name",
        "nightly-42",
        "--token-env",
        "KFP_TOKEN",
        environ={"KFP_TOKEN": "s3cret"},
    )
    assert code == 0
    assert sent["host"] == HOST
    assert sent["namespace"] == "team-a"
    assert sent["experiment"] == "nightly"
    assert sent["run_name"] == "nightly-42"
    assert sent["method"] == "create_run_from_pipeline_func"
    assert sent["arguments"]["source"] == "gs://bucket/online-retail/"
    assert sent["arguments"]["run_id"] == "nightly-42"
    assert sent["arguments"]["config"]["generate"]["size"] == "tiny"
    assert sent["token"] == "$KFP_TOKEN"
    assert "s3cret" not in json.dumps(sent)


def test_defaults(capsys):
    code, sent, _ = _dry(capsys)
    assert code == 0
    assert sent["namespace"] is None
    assert sent["experiment"] == "recsynth"
    assert sent["run_name"].startswith("recsynth-")
    assert sent["arguments"]["source"] == "bundled"
    assert sent["arguments"]["config"]["run"]["epsilon_budget"] == 10.0
    assert sent["enable_caching"] is False


def test_trailing_slash_dropped(capsys):
    code = submit.main(["--host", "http://127.0.0.1:8888/", "--dry-run"], environ={})
    assert code == 0
    assert json.loads(capsys.readouterr().out)["host"] == "http://127.0.0.1:8888"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--host", "kubeflow.example.com"], "--host"),
        (["--host", "ftp://kubeflow.example.com"], "--host"),
        (["--host", "http://"], "--host"),
        (["--host", "http://host:99999"], "port"),
        (["--host", HOST, "--config", "no/such.yaml"], "no/such.yaml"),
        (["--host", HOST, "--package", "no/such-package.yaml"], "no/such-package.yaml"),
        (["--host", HOST, "--namespace", "Team_A"], "--namespace"),
        (["--host", HOST, "--run-name", "bad name!"], "--run-name"),
        (["--host", HOST, "--experiment", " "], "--experiment"),
        (["--host", HOST, "--token-env", "KFP_TOKEN"], "KFP_TOKEN"),
        (["--host", HOST, "--token-env", "1-bad"], "--token-env"),
    ],
)
def test_bad_arguments_exit_2_naming_them(capsys, args, named):
    code = submit.main([*args, "--dry-run"], environ={})
    out, err = capsys.readouterr()
    assert code == 2
    assert named in err
    assert out == ""


def test_invalid_config_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 0\n")
    code = submit.main(["--host", HOST, "--config", str(bad), "--dry-run"], environ={})
    assert code == 2
    assert "train.epochs" in capsys.readouterr().err


def test_package_switches_method(tmp_path, capsys):
    package = tmp_path / "p.yaml"
    package.write_text("{}")
    code, sent, _ = _dry(capsys, "--package", str(package))
    assert code == 0
    assert sent["method"] == "create_run_from_pipeline_package"
    assert sent["package"] == str(package)


def test_local_settings_are_warned_about(capsys):
    demo = str(Path(TEST_CONFIG).with_name("demo.yaml"))
    code, sent, err = _dry(capsys, "--config", demo)
    assert code == 0
    assert "warning: deploy.start_servers is true" in err
    assert "warning: run.ledger_path 'runs/privacy-ledger.jsonl' is relative" in err
    assert len(sent["warnings"]) == 2


def test_a_cluster_ready_config_gets_no_warning(tmp_path, capsys):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "run:\n  ledger_path: /mnt/recsynth-ledger/privacy-ledger.jsonl\n"
        "deploy:\n  start_servers: false\n"
    )
    code, sent, err = _dry(capsys, "--config", str(cluster))
    assert code == 0
    assert sent["warnings"] == [] and "warning" not in err
