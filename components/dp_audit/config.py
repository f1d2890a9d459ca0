"""Settings of the dp_audit step.

The canaries and the held-out customers themselves are made by the trainings (``canaries`` in the
generate and train sections, :class:`components.common.canaries.CanaryConfig`); the audit reads
what they saved (``canaries.json``) and only decides here how to judge it.
"""

from __future__ import annotations

from pydantic import Field

from components.common.strict import StrictModel


class AuditConfig(StrictModel):
    # Recomputed epsilon may exceed the reported one by this relative tolerance (accountant error).
    tolerance: float = Field(default=0.02, ge=0, le=0.5)
    # Run the model-based checks (canary bound, membership attack, copies); the accounting and the
    # raw-id scan always run.
    empirical: bool = True
    # Confidence of the canary lower bound on epsilon.
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    # Guess counts tried, as fractions of the m canaries (k+ = k- = fraction * m); the best is
    # reported, each test at (1 - confidence) / len(k_fractions) so the maximum stays valid.
    k_fractions: list[float] = Field(default=[0.05, 0.1, 0.2, 0.3, 0.5], min_length=1)
    # The membership attack fails when its AUC is above this with 95 % confidence (the AUC's
    # lower confidence bound exceeds it). A policy line, not a theorem: members and held-out
    # customers are a random split of one population, so a model that does not memorise scores
    # them alike (AUC 0.5).
    mia_max_auc: float = Field(default=0.6, ge=0.5, le=1)
    # Most members scored (seeded sample) for the attack and the copy check, to bound the cost.
    mia_max_members: int = Field(default=5000, ge=10)
    # Near copy: item sets with Jaccard similarity at least this; shorter sessions are ignored.
    copy_jaccard: float = Field(default=0.8, gt=0, le=1)
    copy_min_items: int = Field(default=3, ge=1)
    # The copy check fails when synthetic sessions copy training sessions at a rate more than
    # this above the rate they "copy" held-out sessions (chance), and the excess is significant
    # (paired one-sided test at 5 %).
    copy_margin: float = Field(default=0.01, ge=0, le=1)
    # Ids shorter than this are matched only as a whole string, never inside one.
    id_min_length: int = Field(default=4, ge=1)
    # Records per forward pass when scoring.
    batch_size: int = Field(default=256, ge=1)
