"""Empirical lower bound on epsilon from one training run (Steinke, Nasr and Jagielski, 2023).

The game: m canaries are each included in the training with probability 1/2, independently. After
training, the auditor guesses "in" for some canaries and "out" for others and abstains on the
rest; r is the number of guesses and v the number of correct ones. If the training is
(epsilon, delta)-DP, the paper shows

    P[W >= v] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,

where W is the number of correct guesses and f(v) = P[Binomial(r, p) >= v] with
p = e^epsilon / (1 + e^epsilon), the accuracy of epsilon-randomised response. That right-hand side
is a p-value for the hypothesis "the training is (epsilon, delta)-DP". The lower bound at
confidence 1 - alpha is the largest epsilon whose p-value is still below alpha: the training is
not (epsilon', delta)-DP for any epsilon' below it, with that confidence. The p-value decreases
as epsilon grows, so a bisection finds the bound.

The binomial terms are computed here from log-gamma sums (no statistics package), so they are
exact up to floating point for the r of an audit (a few thousand at most).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from components.common.errors import ConfigError

BISECTION_STEPS = 60


def binomial_pmf(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) = k]."""
    if k < 0 or k > n:
        return 0.0
    if p <= 0.0:
        return 1.0 if k == 0 else 0.0
    if p >= 1.0:
        return 1.0 if k == n else 0.0
    log = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return math.exp(log)


def binomial_tail(v: int, n: int, p: float) -> float:
    """P[Binomial(n, p) >= v], the sum of the upper pmf terms."""
    if v <= 0:
        return 1.0
    if v > n:
        return 0.0
    upper = sum(binomial_pmf(k, n, p) for k in range(v, n + 1))
    return min(1.0, upper)


def randomised_response_accuracy(epsilon: float) -> float:
    """e^epsilon / (1 + e^epsilon), written so that a large epsilon does not overflow."""
    return 1.0 / (1.0 + math.exp(-epsilon))


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses right on ``m`` canaries] for an (eps, delta)-DP training.

    Raises:
        ConfigError: the counts are not 0 <= v <= r <= m, or epsilon < 0, or delta not in [0, 1].
    """
    _check(m=m, r=r, v=v, delta=delta)
    if epsilon < 0:
        raise ConfigError(f"epsilon={epsilon} must be >= 0")
    p = randomised_response_accuracy(epsilon)
    tail = binomial_tail(v, r, p)
    if delta == 0 or v == 0:
        return min(1.0, tail)
    # max over i of P[v - i <= Bin < v] / i, accumulating the pmf from v - 1 downwards.
    window, worst = 0.0, 0.0
    for i in range(1, v + 1):
        window += binomial_pmf(v - i, r, p)
        worst = max(worst, window / i)
    return min(1.0, tail + 2.0 * m * delta * worst)


def epsilon_lower_bound(
    *, m: int, r: int, v: int, delta: float, alpha: float = 0.05, epsilon_max: float = 100.0
) -> float:
    """The largest epsilon rejected at level ``alpha``: a (1 - alpha)-confidence lower bound.

    Returns 0.0 when even epsilon = 0 is not rejected (the guesses are no better than chance).
    """
    _check(m=m, r=r, v=v, delta=delta)
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha={alpha} must be in (0, 1)")
    if r == 0 or p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= alpha:
        return 0.0
    if p_value(m=m, r=r, v=v, epsilon=epsilon_max, delta=delta) < alpha:
        return epsilon_max
    low, high = 0.0, epsilon_max  # p_value(low) < alpha <= p_value(high)
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2.0
        if p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < alpha:
            low = mid
        else:
            high = mid
    return low


def guesses(scores: Sequence[float], k_in: int, k_out: int) -> list[int]:
    """+1 (in) for the ``k_in`` highest scores, -1 (out) for the ``k_out`` lowest, 0 otherwise.

    Ties are broken by position, so the guesses are a function of the scores alone.
    """
    m = len(scores)
    if k_in < 0 or k_out < 0 or k_in + k_out > m:
        raise ConfigError(f"k_in={k_in} and k_out={k_out} must be >= 0 and sum to at most m={m}")
    order = sorted(range(m), key=lambda i: (-scores[i], i))
    out = [0] * m
    for i in order[:k_in]:
        out[i] = 1
    for i in order[m - k_out :] if k_out else []:
        out[i] = -1
    return out


def audit_canaries(
    scores: Sequence[float],
    included: Sequence[bool],
    *,
    delta: float,
    k_fractions: Sequence[float],
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The one-run audit of one training: best bound over a grid of guess counts, corrected.

    For each fraction f of the grid the auditor guesses "in" for the top k = round(f * m) scores
    and "out" for the bottom k (the paper's k+ = k-). Taking the best of several tests is only
    valid if each is run at a stricter level: each runs at alpha / len(grid) (Bonferroni), so the
    reported maximum still holds at ``confidence``.

    Returns:
        m, the bound, the k and counts that gave it, and every grid point.
    """
    m = len(scores)
    if len(included) != m:
        raise ConfigError(f"{len(included)} inclusion flags for {m} canary scores")
    fractions = sorted({float(f) for f in k_fractions})
    if not fractions or any(not 0 < f <= 0.5 for f in fractions):
        raise ConfigError(f"k_fractions={list(k_fractions)} must be non-empty, each in (0, 0.5]")
    alpha = (1.0 - confidence) / len(fractions)
    grid: list[dict[str, Any]] = []
    for fraction in fractions:
        k = max(1, round(fraction * m)) if m else 0
        k = min(k, m // 2)
        guess = guesses(scores, k, k)
        r = sum(1 for g in guess if g != 0)
        v = sum(1 for g, inc in zip(guess, included, strict=True) if g == (1 if inc else -1))
        bound = epsilon_lower_bound(m=m, r=r, v=v, delta=delta, alpha=alpha) if r else 0.0
        grid.append({"k_in": k, "k_out": k, "guesses": r, "correct": v, "epsilon_lb": bound})
    best = max(grid, key=lambda g: g["epsilon_lb"]) if grid else None
    return {
        "m": m,
        "n_included": int(sum(bool(i) for i in included)),
        "confidence": confidence,
        "alpha_per_test": alpha,
        "delta": delta,
        "epsilon_lower_bound": best["epsilon_lb"] if best else 0.0,
        "best": best,
        "grid": grid,
    }


def _check(*, m: int, r: int, v: int, delta: float) -> None:
    if not (0 <= v <= r <= m):
        raise ConfigError(f"counts must satisfy 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if not 0 <= delta <= 1:
        raise ConfigError(f"delta={delta} must be in [0, 1]")
