"""The privacy budget ledger and the budget_check step that refuses a run before any training."""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path

import pytest

from components.budget_check import logic as budget_check
from components.common import ledger
from components.common.config import RunConfig
from components.common.errors import InputError, PrivacyError

SHA_A = "a" * 64
SHA_B = "b" * 64


def _record(path: Path, sha: str, epsilon: float | None, run_id: str = "r") -> dict:
    return ledger.record(
        path,
        dataset_sha256=sha,
        run_id=run_id,
        epsilon=epsilon,
        delta=2e-5,
        trainings={"generator": epsilon, "recommender": 0.0 if epsilon is not None else None},
    )


def test_spent_sums_one_dataset_only(tmp_path):
    path = tmp_path / "ledger.jsonl"
    assert ledger.spent(path, SHA_A) == 0.0  # no file yet

    _record(path, SHA_A, 3.5, "r1")
    _record(path, SHA_B, 7.0, "r2")
    _record(path, SHA_A, 1.25, "r3")

    assert ledger.spent(path, SHA_A) == pytest.approx(4.75)
    assert ledger.spent(path, SHA_B) == pytest.approx(7.0)
    assert ledger.spent(path, "c" * 64) == 0.0


def test_entry_holds_the_run_and_a_utc_timestamp(tmp_path):
    path = tmp_path / "sub" / "ledger.jsonl"  # the folder is created
    _record(path, SHA_A, 2.0, "run-7")

    (line,) = path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["dataset_sha256"] == SHA_A
    assert entry["run_id"] == "run-7"
    assert entry["epsilon"] == 2.0
    assert entry["delta"] == 2e-5
    assert entry["trainings"] == {"generator": 2.0, "recommender": 0.0}
    assert entry["timestamp"].endswith("+00:00")


def test_refusal_names_spent_requested_and_budget(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _record(path, SHA_A, 45.0)

    with pytest.raises(PrivacyError) as refused:
        ledger.check_budget(path, SHA_A, requested=12.0, lifetime_budget=50.0)

    assert f"dataset {SHA_A[:12]}: spent 45, this run requests 12, lifetime budget 50" in str(
        refused.value
    )
    # Another dataset's budget is untouched.
    assert ledger.check_budget(path, SHA_B, requested=12.0, lifetime_budget=50.0) == 0.0


def test_exactly_at_budget_is_allowed(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _record(path, SHA_A, 38.0)

    assert ledger.check_budget(path, SHA_A, requested=12.0, lifetime_budget=50.0) == 38.0
    with pytest.raises(PrivacyError, match="spent 38, this run requests 12.01"):
        ledger.check_budget(path, SHA_A, requested=12.01, lifetime_budget=50.0)


def test_a_run_without_dp_exhausts_the_dataset(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _record(path, SHA_A, None)

    assert ledger.spent(path, SHA_A) == math.inf
    with pytest.raises(PrivacyError, match="spent inf"):
        ledger.check_budget(path, SHA_A, requested=0.1, lifetime_budget=1e9)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epsilon", -1.0),
        ("epsilon", math.nan),
        ("epsilon", math.inf),
        ("epsilon", "3"),
        ("delta", -1e-5),
        ("delta", math.nan),
        ("delta", 1.0),
        ("dataset_sha256", "abc"),
        ("run_id", ""),
    ],
)
def test_invalid_record_values_are_refused(tmp_path, field, value):
    path = tmp_path / "ledger.jsonl"
    kwargs = {
        "dataset_sha256": SHA_A,
        "run_id": "r",
        "epsilon": 1.0,
        "delta": 1e-5,
        "trainings": {"generator": 1.0},
    }
    kwargs[field] = value
    with pytest.raises(PrivacyError, match=field):
        ledger.record(path, **kwargs)
    assert not path.exists()


def test_invalid_training_epsilon_is_refused(tmp_path):
    with pytest.raises(PrivacyError, match="generator"):
        ledger.record(
            tmp_path / "l.jsonl",
            dataset_sha256=SHA_A,
            run_id="r",
            epsilon=1.0,
            delta=1e-5,
            trainings={"generator": -0.5},
        )


@pytest.mark.parametrize(
    ("requested", "budget", "field"),
    [
        (math.nan, 50.0, "requested"),
        (-1.0, 50.0, "requested"),
        (0.0, 50.0, "requested"),
        (1.0, math.inf, "lifetime_epsilon_budget"),
        (1.0, -5.0, "lifetime_epsilon_budget"),
    ],
)
def test_invalid_check_values_are_refused(tmp_path, requested, budget, field):
    with pytest.raises(PrivacyError, match=field):
        ledger.check_budget(tmp_path / "l.jsonl", SHA_A, requested, budget)


def test_damaged_ledger_is_refused_not_skipped(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _record(path, SHA_A, 1.0)
    with path.open("a") as handle:
        handle.write('{"dataset_sha256": "x"\n')

    with pytest.raises(PrivacyError, match="line 2"):
        ledger.spent(path, SHA_A)


def _append_many(path: str, sha: str, count: int, prefix: str) -> None:
    for i in range(count):
        _record(Path(path), sha, 0.5, f"{prefix}-{i}")


def test_concurrent_appends_keep_every_entry(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ctx = multiprocessing.get_context("fork")
    workers = [
        ctx.Process(target=_append_many, args=(str(path), SHA_A, 50, name)) for name in ("p", "q")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    entries = ledger.entries(path)
    assert len(entries) == 100
    assert {e["run_id"] for e in entries} == {f"{p}-{i}" for p in "pq" for i in range(50)}
    assert ledger.spent(path, SHA_A) == pytest.approx(50.0)


def _cleaned(tmp_path: Path, sha: object) -> Path:
    cleaned = tmp_path / "cleaned"
    cleaned.mkdir()
    (cleaned / "cleaning_report.json").write_text(json.dumps({"dataset_sha256": sha}))
    return cleaned


def test_budget_check_refuses_before_writing_anything(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _record(path, SHA_A, 45.0)
    cfg = RunConfig(epsilon_budget=10.0, lifetime_epsilon_budget=50.0, ledger_path=str(path))
    out = tmp_path / "budget"

    with pytest.raises(PrivacyError, match="spent 45, this run requests 10, lifetime budget 50"):
        budget_check.run(cfg, _cleaned(tmp_path, SHA_A), out, run_id="run-new")

    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".budget")] == []
    assert len(ledger.entries(path)) == 1  # a refused run reserves nothing


def test_budget_check_passes_and_reports_the_figures(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _record(path, SHA_A, 30.0)
    cfg = RunConfig(epsilon_budget=12.0, lifetime_epsilon_budget=50.0, ledger_path=str(path))
    out = tmp_path / "budget"

    result = budget_check.run(cfg, _cleaned(tmp_path, SHA_A), out, run_id="run-new")

    written = json.loads((out / budget_check.BUDGET_FILE).read_text())
    assert written == result
    assert result["dataset_sha256"] == SHA_A
    assert result["spent"] == 30.0
    assert result["requested"] == 12.0
    assert result["lifetime_budget"] == 50.0
    assert result["remaining"] == pytest.approx(8.0)
    assert (out / "step.json").is_file()
    # The run's whole budget is reserved until dp_audit records its spend.
    assert ledger.spent(path, SHA_A) == pytest.approx(42.0)
    assert ledger.entries(path)[-1]["kind"] == ledger.RESERVATION
    assert ledger.entries(path)[-1]["run_id"] == "run-new"


def test_budget_check_needs_the_dataset_hash(tmp_path):
    cfg = RunConfig(ledger_path=str(tmp_path / "l.jsonl"))
    with pytest.raises(InputError, match="dataset_sha256"):
        budget_check.run(cfg, _cleaned(tmp_path, None), tmp_path / "budget", run_id="r")
    assert not (tmp_path / "budget").exists()


def test_run_config_defaults_and_bounds():
    cfg = RunConfig()
    assert cfg.lifetime_epsilon_budget == 50.0
    assert cfg.ledger_path == "runs/privacy-ledger.jsonl"
    with pytest.raises(ValueError, match="lifetime_epsilon_budget"):
        RunConfig(lifetime_epsilon_budget=0)


def _reserve(path: Path, run_id: str, requested: float, budget: float = 10.0) -> float:
    return ledger.reserve(
        path, dataset_sha256=SHA_A, run_id=run_id, requested=requested, lifetime_budget=budget
    )


def test_a_spend_replaces_its_runs_reservation(tmp_path):
    path = tmp_path / "ledger.jsonl"
    assert _reserve(path, "run-1", 6.0) == 0.0
    assert ledger.spent(path, SHA_A) == pytest.approx(6.0)  # reserved, not yet audited

    _record(path, SHA_A, 3.5, "run-1")  # dp_audit: the run spent less than it reserved

    assert ledger.spent(path, SHA_A) == pytest.approx(3.5)
    assert _reserve(path, "run-2", 6.5) == pytest.approx(3.5)
    with pytest.raises(PrivacyError, match="spent 10, this run requests 0.5, lifetime budget 10"):
        _reserve(path, "run-3", 0.5)


def test_a_run_id_reserves_once(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _reserve(path, "run-1", 1.0)
    with pytest.raises(PrivacyError, match="run_id='run-1' already has an entry"):
        _reserve(path, "run-1", 1.0)
    assert len(ledger.entries(path)) == 1


def _reserve_once(path: str, run_id: str, barrier, results) -> None:
    barrier.wait()
    try:
        _reserve(Path(path), run_id, 6.0)
        results.put((run_id, "reserved"))
    except PrivacyError:
        results.put((run_id, "refused"))


def test_two_runs_that_fit_alone_but_not_together_cannot_both_start(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_reserve_once, args=(str(path), name, barrier, results))
        for name in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    outcomes = sorted(results.get(timeout=5)[1] for _ in workers)
    assert outcomes == ["refused", "reserved"]
    assert ledger.spent(path, SHA_A) == pytest.approx(6.0)
