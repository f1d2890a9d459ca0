"""The no-DP generator settings both benchmarks train with."""

from __future__ import annotations

import pytest

from bench.generator import NO_DP_BATCH, no_dp_batch


def test_no_dp_batch_cuts_large_batches_and_scales_the_rate_by_sqrt() -> None:
    # the demo's DP batch of 256 at lr 0.01: generator.json's no_dp row trains at 32, lr 0.003536
    assert no_dp_batch(256, 1e-2) == (NO_DP_BATCH, pytest.approx(0.0035355, abs=1e-7))
    assert no_dp_batch(128, 4e-3) == (32, pytest.approx(2e-3))
    # small batches stay as they are
    assert no_dp_batch(32, 1e-2) == (32, 1e-2)
    assert no_dp_batch(8, 3e-3) == (8, 3e-3)
