"""The model-based checks of the audit: canary bound, membership attack, copies, raw ids.

Each function reads the artifacts it needs, runs one attack or scan and returns
``(figures, check)``: the figures go to ``audit.json`` and ``audit.html``, the check (name,
passed, detail, figures) joins the accounting checks that gate deployment.

Which customers are members: the trainings keep a seeded share of real customers out
(:func:`components.common.canaries.held_out`, the rule and seed saved in ``canaries.json``). Those
are the non-members of the membership attack and the chance baseline of the copy check; no
customer outside them is fully unseen, since the generator trains on every other customer's
training part. Members are scored on exactly the records their training used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.common import artifacts as art
from components.common import canaries
from components.dp_audit import bound, empirical, scoring
from components.dp_audit.config import AuditConfig
from components.train.data import COUNTRY_COLUMN, load_training_set

logger = logging.getLogger(__name__)

Check = dict[str, Any]
Z_95 = 1.6449  # one-sided 95 % normal quantile


def _check(name: str, passed: bool, detail: str, figures: dict[str, Any], **extra: Any) -> Check:
    return {"name": name, "passed": bool(passed), "detail": detail, "figures": figures, **extra}


def skipped(name: str, why: str) -> Check:
    """A check that could not run: it passes (nothing contradicts the claim) and says why."""
    return {"name": name, "passed": True, "skipped": True, "detail": f"skipped: {why}"}


# canaries


def canary_audit(
    name: str,
    canary_set: dict[str, Any] | None,
    scores: np.ndarray | None,
    *,
    accountant_epsilon: float | None,
    delta: float,
    cfg: AuditConfig,
) -> tuple[dict[str, Any] | None, Check]:
    """Turn one training's canary scores into its empirical bound and the bound's check.

    A bound above the accountant's epsilon means the training leaks more than it claims: a privacy
    bug, and the check fails. A training without DP claims nothing, so its bound contradicts
    nothing (its ``is_dp`` check fails the audit instead); its bound is still reported.
    """
    check_name = f"{name}_canary_bound"
    if canary_set is None or scores is None or not canary_set["canaries"]:
        return None, skipped(check_name, f"the {name} was trained without canaries")
    included = [bool(c["included"]) for c in canary_set["canaries"]]
    result = bound.audit_canaries(
        scores.tolist(),
        included,
        delta=delta,
        k_fractions=cfg.k_fractions,
        confidence=cfg.confidence,
    )
    result["scores_in"] = [float(s) for s, i in zip(scores, included, strict=True) if i]
    result["scores_out"] = [float(s) for s, i in zip(scores, included, strict=True) if not i]
    lb = result["epsilon_lower_bound"]
    best = result["best"] or {}
    # What m canaries can prove at best (every guess right): a claim above it cannot be refuted.
    ceiling = max(
        (
            bound.epsilon_lower_bound(
                m=result["m"],
                r=g["guesses"],
                v=g["guesses"],
                delta=delta,
                alpha=result["alpha_per_test"],
            )
            for g in result["grid"]
        ),
        default=0.0,
    )
    result["max_provable_epsilon"] = ceiling
    guessed = f"{best.get('correct', 0)} of {best.get('guesses', 0)} guesses right"
    if accountant_epsilon is None:
        passed, against = True, "no DP claim to contradict"
    else:
        passed, against = lb <= accountant_epsilon, f"accountant epsilon {accountant_epsilon:.4g}"
    detail = (
        f"empirical epsilon >= {lb:.3g} at {cfg.confidence:.0%} ({guessed}, m={result['m']}, "
        f"{result['n_included']} included; at most {ceiling:.3g} provable) against {against}"
    )
    figures = {
        "epsilon_lower_bound": lb,
        "max_provable_epsilon": ceiling,
        "accountant_epsilon": accountant_epsilon,
        "m": result["m"],
        "n_included": result["n_included"],
        "best": best,
    }
    return result, _check(check_name, passed, detail, figures)


def generator_canary_scores(
    canary_set: dict[str, Any] | None, model: Any, cfg: AuditConfig
) -> np.ndarray | None:
    if canary_set is None or not canary_set["canaries"]:
        return None
    records = [c["tokens"] for c in canary_set["canaries"]]
    return scoring.generator_scores(model, records, batch_size=cfg.batch_size)


def recommender_canary_scores(
    canary_set: dict[str, Any] | None, model: Any, cfg: AuditConfig
) -> np.ndarray | None:
    if canary_set is None or not canary_set["canaries"]:
        return None
    sequences = [c["items"] for c in canary_set["canaries"]]
    return scoring.recommender_scores(
        model, sequences, max_history=model.config.max_history, batch_size=cfg.batch_size
    )


# membership


def split_members(
    customer_ids: list[str], canary_set: dict[str, Any] | None
) -> tuple[np.ndarray, float, int] | None:
    """Held-out mask of ``customer_ids`` by the rule a training saved, or None without a holdout."""
    if canary_set is None:
        return None
    holdout = canary_set.get("holdout") or {}
    fraction = float(holdout.get("fraction") or 0.0)
    if fraction <= 0:
        return None
    seed = int(canary_set["seed"])
    return canaries.held_out(customer_ids, fraction, seed), fraction, seed


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    """Row positions: all of them, or a seeded sample of ``cap``."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 7]).choice(n, size=cap, replace=False))


def membership_attack(
    name: str, member_scores: np.ndarray, non_member_scores: np.ndarray, cfg: AuditConfig
) -> tuple[dict[str, Any], Check]:
    """Loss-threshold attack: members are the records the model fits better."""
    result = empirical.roc(member_scores, non_member_scores)
    auc = result["auc"]
    at = result["tpr_at_fpr"]
    sizes = f"{result['n_members']} members, {result['n_non_members']} held out"
    if auc is None:
        return result, skipped(f"{name}_membership_inference", f"no samples ({sizes})")
    # Judged on the AUC's one-sided 95 % lower confidence bound: with a few dozen held-out
    # customers an AUC of 0.6 is within noise of 0.5, and the gate must not fail on noise.
    se = empirical.auc_standard_error(auc, result["n_members"], result["n_non_members"])
    lower = auc - Z_95 * se
    result.update(auc_se=se, auc_lower_95=lower)
    detail = (
        f"loss-threshold attack AUC {auc:.3f} (95% lower bound {lower:.3f}, allowed up to "
        f"{cfg.mia_max_auc}), TPR {at['0.001']:.3f} at 0.1% FPR and {at['0.01']:.3f} at 1% FPR; "
        f"{sizes} (FPR resolved to 1/{result['n_non_members']})"
    )
    figures = {
        "auc": auc,
        "auc_lower_95": lower,
        "tpr_at_0.1pct_fpr": at["0.001"],
        "tpr_at_1pct_fpr": at["0.01"],
        "n_members": result["n_members"],
        "n_non_members": result["n_non_members"],
    }
    check = _check(f"{name}_membership_inference", lower <= cfg.mia_max_auc, detail, figures)
    return result, check


def generator_train_parts(cleaned_dir: Path) -> pd.DataFrame:
    """The generator's view of the real customers: the training part of each one's sequence."""
    from components.generate import logic as generate

    sequences, _ = generate.read_sequences(cleaned_dir, with_ts=True)
    return generate.training_histories(sequences)


def generator_records(
    part: pd.DataFrame, vocab: Any, cleaned_dir: Path, gen_cfg: Any
) -> list[list[list[int]]]:
    """Each real customer's token sequences exactly as generate builds them for training."""
    from components.generate import logic as generate

    bands = generate.read_price_bands(cleaned_dir) if vocab.price_bands is not None else None
    has_categories = getattr(vocab, "categories", None) is not None
    categories = generate.read_categories(cleaned_dir) if has_categories else None
    return generate.customer_records(
        part,
        vocab,
        bands=bands,
        categories=categories,
        session_split=gen_cfg.session_split,
        max_sequences=gen_cfg.max_sequences_per_customer,
        max_tokens=gen_cfg.max_tokens_per_customer,
    )


def _customer_scores(model: Any, per_customer: list[list[list[int]]], cfg: AuditConfig):
    """One score per customer: the mean of its sequences' scores."""
    flat = [seq for seqs in per_customer for seq in seqs]
    scores = scoring.generator_scores(model, flat, batch_size=cfg.batch_size)
    out, start = [], 0
    for seqs in per_customer:
        out.append(float(scores[start : start + len(seqs)].mean()))
        start += len(seqs)
    return np.asarray(out, dtype=np.float64)


def generator_membership(
    train_part: pd.DataFrame,
    canary_set: dict[str, Any] | None,
    model: Any,
    vocab: Any,
    cleaned_dir: Path,
    gen_cfg: Any,
    cfg: AuditConfig,
) -> tuple[dict[str, Any] | None, Check]:
    split = split_members(train_part["customer_id"].astype(str).tolist(), canary_set)
    if split is None:
        return None, skipped("generator_membership_inference", "no customers were held out")
    mask, _, seed = split
    members = train_part.loc[~mask].reset_index(drop=True)
    members = members.iloc[_sample(len(members), cfg.mia_max_members, seed)]
    held = train_part.loc[mask].reset_index(drop=True)
    member_scores = _customer_scores(
        model, generator_records(members, vocab, cleaned_dir, gen_cfg), cfg
    )
    held_scores = _customer_scores(model, generator_records(held, vocab, cleaned_dir, gen_cfg), cfg)
    return membership_attack("generator", member_scores, held_scores, cfg)


def recommender_membership(
    training_dir: Path, canary_set: dict[str, Any] | None, model: Any, cfg: AuditConfig
) -> tuple[dict[str, Any] | None, Check]:
    # load_training_set reads the country_id column as train does (all 0 in an older set).
    real = load_training_set(training_dir).real.reset_index(drop=True)
    split = split_members(real["customer_id"].astype(str).tolist(), canary_set)
    if split is None:
        return None, skipped("recommender_membership_inference", "no customers were held out")
    mask, _, seed = split
    # A one-item sequence has nothing to predict and no loss: it says nothing about membership.
    long_enough = (real["items"].map(len) >= 2).to_numpy()
    members = real.loc[~mask & long_enough]
    members = members.iloc[_sample(len(members), cfg.mia_max_members, seed)]
    held = real.loc[mask & long_enough]
    kwargs = {"max_history": model.config.max_history, "batch_size": cfg.batch_size}
    member_scores = scoring.recommender_scores(
        model,
        [list(s) for s in members["items"]],
        country_ids=members[COUNTRY_COLUMN].tolist(),
        **kwargs,
    )
    held_scores = scoring.recommender_scores(
        model, [list(s) for s in held["items"]], country_ids=held[COUNTRY_COLUMN].tolist(), **kwargs
    )
    return membership_attack("recommender", member_scores, held_scores, cfg)


# copies


def _sessions(per_customer: list[list[list[int]]], vocab: Any) -> list[list[str]]:
    """The item sequences (stock codes) of token records, one per trained sequence."""
    return [
        [vocab.tokens[t] for t in seq if vocab.is_item(t)] for seqs in per_customer for seq in seqs
    ]


def synthetic_copies(
    train_part: pd.DataFrame,
    synthetic_dir: Path,
    canary_set: dict[str, Any] | None,
    vocab: Any,
    cleaned_dir: Path,
    gen_cfg: Any,
    cfg: AuditConfig,
) -> tuple[dict[str, Any] | None, Check]:
    """Synthetic sessions that copy a training session, against the rate for held-out sessions.

    The training sessions are the item sequences the generator was trained on; the held-out ones
    are built the same way from the customers kept out. Both reference sets have the same number
    of customers (a seeded sample of members as large as the holdout), so the held-out rate is the
    rate of chance look-alikes that the copy rate is judged against.
    """
    name = "synthetic_copies"
    split = split_members(train_part["customer_id"].astype(str).tolist(), canary_set)
    if split is None:
        return None, skipped(name, "no customers were held out, so there is no baseline")
    mask, _, seed = split
    synthetic = art.read_parquet(synthetic_dir / art.SYNTHETIC_SESSIONS, ["items"])
    sessions = [list(s) for s in synthetic["items"]]
    members_part = train_part.loc[~mask].reset_index(drop=True)
    held_part = train_part.loc[mask].reset_index(drop=True)
    members_part = members_part.iloc[_sample(len(members_part), len(held_part), seed)]
    members = _sessions(generator_records(members_part, vocab, cleaned_dir, gen_cfg), vocab)
    held = _sessions(generator_records(held_part, vocab, cleaned_dir, gen_cfg), vocab)
    opts = {"jaccard": cfg.copy_jaccard, "min_items": cfg.copy_min_items}
    train_rate = empirical.copy_rate(sessions, members, **opts)
    base_rate = empirical.copy_rate(sessions, held, **opts)
    p_value = empirical.paired_excess_p_value(train_rate.pop("flags"), base_rate.pop("flags"))
    result = {"training": train_rate, "held_out": base_rate, "p_value": p_value, **opts}
    rate, base = train_rate["rate"], base_rate["rate"]
    if rate is None or base is None:
        return result, skipped(name, f"no synthetic session has {cfg.copy_min_items}+ items")
    # Fails only when the excess is both material (above the margin) and not chance (paired
    # one-sided test at 5 %): with a few dozen synthetic sessions one look-alike is 2-3 %.
    passed = not (rate - base > cfg.copy_margin and p_value < 0.05)
    detail = (
        f"{rate:.2%} of {train_rate['n_synthetic']} synthetic sessions copy one of "
        f"{train_rate['n_reference']} training sessions ({train_rate['exact_rate']:.2%} exactly, "
        f"the rest Jaccard >= {cfg.copy_jaccard}), against {base:.2%} for "
        f"{base_rate['n_reference']} held-out sessions (excess p = {p_value:.3g}); fails above "
        f"a {cfg.copy_margin:.2%} excess at p < 0.05"
    )
    figures = {
        "copy_rate": rate,
        "exact_copy_rate": train_rate["exact_rate"],
        "baseline_rate": base,
        "baseline_exact_rate": base_rate["exact_rate"],
        "p_value": p_value,
        "n_synthetic": train_rate["n_synthetic"],
        "n_reference": train_rate["n_reference"],
    }
    return result, _check(name, passed, detail, figures)


# raw ids


def raw_id_scan(
    cleaned_dir: Path,
    directories: dict[str, Path],
    exclude: set[str],
    cfg: AuditConfig,
) -> tuple[dict[str, Any], Check]:
    """No real customer id in the generator's files or the synthetic data."""
    customers = art.read_parquet(cleaned_dir / art.SEQUENCES, ["customer_id"])["customer_id"]
    result = empirical.scan_for_ids(
        directories,
        customers.astype(str).tolist(),
        exclude=exclude,
        min_length=cfg.id_min_length,
    )
    where = ", ".join(f"{f['file']} ({f['n_ids']} ids)" for f in result["found"])
    detail = (
        f"searched {result['n_ids_searched']} customer ids in {result['n_files']} files of "
        f"{', '.join(directories)}; "
        + (f"FOUND in {where}" if where else "none found")
        + f" ({result['n_ids_excluded']} ids equal a stock code, country or token: not searched)"
    )
    figures = {k: v for k, v in result.items() if k != "found"}
    figures["files_with_ids"] = [f["file"] for f in result["found"]]
    return result, _check("no_raw_customer_ids", not result["found"], detail, figures)
