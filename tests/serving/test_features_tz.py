"""Registration, lookup, push and the TTL check give the same answers on a machine in another TZ.

Each zone runs in its own process (TZ is read when the process starts): it registers a store
from the same inputs, reads it, pushes a purchase into it, and reads the store this process
registered. The Feast sqlite store's own event timestamps would differ by the zones' offsets
(tests/feature_repo/test_feast_ttl.py); what serving.features returns must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_features import HISTORIES, build, write_inputs

from serving.features import CustomerHistory

ZONES = ("America/New_York", "Asia/Kolkata")
IDS = [*HISTORIES, "00000"]

_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_features import build
from serving.features import CustomerHistory

def answer(history):
    rows = history.histories(ids)
    return [None if r is None else {
        "items": r.recent_items, "n": r.n_items, "country": r.country,
        "last": r.last_purchase_at.timestamp(), "updated": r.updated_at.timestamp()}
        for r in rows]

inputs = (Path(sys.argv[2]), Path(sys.argv[3]))
shared, work, ids = Path(sys.argv[4]), Path(sys.argv[5]), sys.argv[6:]
own, summary = build(work, inputs)
mine = CustomerHistory(own)
out = {"own": answer(mine), "registered_at": summary["registered_at"]}
pushed = mine.push_purchase("13047", ["99801"])
out["pushed"] = {k: pushed[k] for k in ("added", "n_items", "updated_at")}
out["own_after_push"] = answer(mine)
out["shared"] = answer(CustomerHistory(shared))
print("RESULT" + json.dumps(out))
"""


def _answer(history: CustomerHistory) -> list:
    return [
        None
        if r is None
        else {
            "items": r.recent_items,
            "n": r.n_items,
            "country": r.country,
            "last": r.last_purchase_at.timestamp(),
            "updated": r.updated_at.timestamp(),
        }
        for r in history.histories(IDS)
    ]


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    """This process's answers and each zone's, from processes run side by side."""
    root = tmp_path_factory.mktemp("tz")
    inputs = write_inputs(root / "inputs")
    shared, summary = build(root / "shared", inputs)
    here = {"shared": _answer(CustomerHistory(shared)), "registered_at": summary["registered_at"]}
    procs = {}
    for zone in ZONES:
        env = {**os.environ, "TZ": zone, "RECSYNTH_LOG_LEVEL": "WARNING"}
        work = root / zone.replace("/", "_")
        args = [str(Path(__file__).parent), *map(str, inputs), str(shared), str(work), *IDS]
        procs[zone] = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for zone, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{zone}: {stderr[-3000:]}"
        line = next(x for x in stdout.splitlines() if x.startswith("RESULT"))
        results[zone] = json.loads(line[len("RESULT") :])
    return here, results, {"summary": summary}


@pytest.mark.slow
@pytest.mark.parametrize("zone", ZONES)
def test_another_timezone_reads_the_same_rows_from_this_store(zones, zone):
    here, results, _ = zones
    assert results[zone]["shared"] == here["shared"]
    # and a fresh registration is served as fresh there (not shifted out of its TTL)
    assert all(r is not None for r in here["shared"][:-1])


@pytest.mark.slow
@pytest.mark.parametrize("zone", ZONES)
def test_another_timezone_registers_and_pushes_the_same_values(zones, zone):
    here, results, _ = zones
    got = results[zone]
    registered = datetime.fromisoformat(got["registered_at"])
    assert registered.utcoffset().total_seconds() == 0
    # the zone's own registration: the same rows, stamped with its registration instant (UTC)
    for mine, theirs in zip(here["shared"], got["own"], strict=True):
        if mine is None:
            assert theirs is None
            continue
        assert {k: v for k, v in theirs.items() if k != "updated"} == {
            k: v for k, v in mine.items() if k != "updated"
        }
        assert theirs["updated"] == registered.timestamp()
    # the registration happened minutes ago, whatever the zone: no offset of hours
    now = datetime.now(UTC).timestamp()
    assert 0 <= now - registered.timestamp() < 600
    # a push there appends and restamps as it does here
    after = got["own_after_push"][IDS.index("13047")]
    assert after["items"] == [*HISTORIES["13047"], "99801"]
    assert got["pushed"]["n_items"] == after["n"] == len(HISTORIES["13047"]) + 1
    assert datetime.fromisoformat(got["pushed"]["updated_at"]).timestamp() == after["updated"]
    assert 0 <= now - after["updated"] < 600
