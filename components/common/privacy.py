"""What every DP training records, and the one function that turns it into an epsilon.

Each DP-SGD training writes a :class:`PrivacyRecord` as ``privacy.json`` beside its weights. The
audit recomputes epsilon from these fields alone, so a training that misreports its own epsilon is
caught. The unit of privacy is one customer: ``n_units`` counts customers, not rows.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from components.common.errors import PrivacyError
from components.common.strict import StrictModel

Accountant = Literal["prv", "rdp"]


class DPConfig(StrictModel):
    """DP-SGD settings of one training.

    ``enabled: false`` trains without privacy: the model then carries no guarantee and the audit
    fails any deployment of it. ``delta`` defaults to ``1 / (10 * customers)``, below one over the
    number of customers as the user-level guarantee requires.
    """

    enabled: bool = True
    target_epsilon: float = Field(default=4.0, gt=0, le=100)
    delta: float | None = Field(default=None, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    accountant: Accountant = "prv"


class PrivacyRecord(StrictModel):
    """Everything the audit needs to recompute the epsilon of one training."""

    training: str
    dp: bool
    noise_multiplier: float = Field(ge=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=0)
    delta: float = Field(gt=0, lt=1)
    epsilon: float | None  # None when dp is False: no finite guarantee
    accountant: Accountant
    max_grad_norm: float | None
    unit: Literal["customer"] = "customer"
    n_units: int = Field(gt=0)
    target_epsilon: float | None = None


def default_delta(n_units: int) -> float:
    """A delta well below ``1 / n_units``, as a user-level guarantee needs."""
    return 1.0 / (10.0 * n_units)


def validate_accounting_inputs(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, n_units: int | None
) -> None:
    """Raise :class:`PrivacyError` listing every invalid accounting input at once."""
    problems = []
    for name, value in (
        ("noise_multiplier", noise_multiplier),
        ("sample_rate", sample_rate),
        ("delta", delta),
    ):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{name}={value!r} must be a finite number")
    if not problems:
        if noise_multiplier <= 0:
            problems.append(f"noise_multiplier={noise_multiplier} must be > 0 for a DP guarantee")
        if not 0 < sample_rate <= 1:
            problems.append(f"sample_rate={sample_rate} must be in (0, 1]")
        if not 0 < delta < 1:
            problems.append(f"delta={delta} must be in (0, 1)")
        elif n_units is not None and delta >= 1.0 / n_units:
            problems.append(
                f"delta={delta} must be below 1/n_units={1.0 / n_units:.3g} ({n_units} customers)"
            )
    if not isinstance(steps, int) or steps < 0:
        problems.append(f"steps={steps!r} must be a non-negative integer")
    if problems:
        raise PrivacyError("invalid privacy accounting inputs: " + "; ".join(problems))


def compute_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: Accountant = "prv",
    n_units: int | None = None,
) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps, from the named Opacus accountant."""
    validate_accounting_inputs(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        n_units=n_units,
    )
    if steps == 0:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant

    acct = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acct.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acct.get_epsilon(delta=delta))
