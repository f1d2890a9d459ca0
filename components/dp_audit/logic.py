"""Privacy audit: recompute the epsilon of every DP training and gate deployment on the result.

Each DP training writes a :class:`~components.common.privacy.PrivacyRecord` beside its weights. The
audit trusts none of the reported epsilons: it recomputes each one from the noise multiplier,
sample rate, steps and delta with two Opacus accountants (PRV, the tighter one, and RDP, the
classic upper bound), then composes the trainings that are released together.

Every training whose output leaves the run is composed: the generator (its synthetic sessions), the
deployed recommender, and the real-only recommender that the report publishes as a baseline (its
metrics are computed from a model trained on the same customers, so they spend budget too).
Composition is basic: all are trained on the same customers, so their guarantees add up,
epsilon_total = sum(epsilon_i) at delta_total = sum(delta_i). Each training enters the sum with its
audited epsilon, the larger of the reported and the recomputed PRV figure, so a training that
reports a loose (larger) epsilon is charged what it claimed and one that under-reports is charged
the truth. The synthetic sessions are post-processing of the DP generator and cost nothing extra.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from components.common import artifacts as art
from components.common import canaries, ledger
from components.common.artifacts import PRIVACY, StepTimer, atomic_dir, read_json, write_json
from components.common.errors import PrivacyError
from components.common.privacy import PrivacyRecord, compute_epsilon
from components.common.recommender_model import COUNTRIES, load_recommender, read_countries
from components.dp_audit import attacks
from components.dp_audit import html as audit_html
from components.dp_audit.config import AuditConfig
from components.generate.config import GenerateConfig
from components.generate.model import load_model
from components.generate.tokenizer import VOCAB_FILE, ItemVocab
from components.ingest import countries as public_countries

logger = logging.getLogger(__name__)

AUDIT_FILE = "audit.json"
AUDIT_HTML = "audit.html"
COMPOSITION = "basic: epsilon_total = sum of epsilons, delta_total = sum of deltas"


# The real-only baseline's record, written by the train step beside the deployed model's.
REAL_ONLY_PRIVACY = "real_only_privacy.json"


def read_privacy_record(
    model_dir: str | os.PathLike[str], expected_training: str, filename: str = PRIVACY
) -> PrivacyRecord:
    """Read and validate one training's privacy record (``privacy.json`` by default).

    Args:
        model_dir: the training's model directory.
        expected_training: the name the record should carry ("generator", "recommender").
        filename: the record's file name inside ``model_dir``.

    Returns:
        The validated record.

    Raises:
        InputError: the file is missing or not JSON.
        PrivacyError: a field is missing or out of range, naming every such field at once.
    """
    path = Path(model_dir) / filename
    raw = read_json(path)
    try:
        record = PrivacyRecord.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise PrivacyError(
            f"invalid privacy record of the {expected_training} ({path}): {problems}"
        ) from exc
    logger.info(
        "privacy record %s: dp=%s noise=%s sample_rate=%s steps=%s delta=%s units=%s",
        record.training,
        record.dp,
        record.noise_multiplier,
        record.sample_rate,
        record.steps,
        record.delta,
        record.n_units,
    )
    return record


def _audit_training(
    name: str, record: PrivacyRecord, tolerance: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Recompute one training's epsilon; return its audit entry and its checks."""
    entry: dict[str, Any] = {
        "training": record.training,
        "dp": record.dp,
        "accountant": record.accountant,
        "reported": record.epsilon,
        "recomputed_prv": None,
        "recomputed_rdp": None,
        "epsilon": None,
        "delta": record.delta,
        "noise_multiplier": record.noise_multiplier,
        "sample_rate": record.sample_rate,
        "steps": record.steps,
        "n_units": record.n_units,
        "unit": record.unit,
    }
    checks = [
        {
            "name": f"{name}_record_matches",
            "passed": record.training == name,
            "detail": f"record names training {record.training!r}, expected {name!r}",
        }
    ]
    if not record.dp:
        # No noise, no guarantee: this model must not be deployed, whatever the budget.
        checks.append(
            {
                "name": f"{name}_is_dp",
                "passed": False,
                "detail": f"the {name} was trained without DP-SGD: no finite epsilon",
            }
        )
        return entry, checks
    checks.append({"name": f"{name}_is_dp", "passed": True, "detail": "trained with DP-SGD"})

    accounting = {
        "noise_multiplier": record.noise_multiplier,
        "sample_rate": record.sample_rate,
        "steps": record.steps,
        "delta": record.delta,
        "n_units": record.n_units,
    }
    reported = record.epsilon
    if reported is None or not math.isfinite(reported) or reported < 0:
        raise PrivacyError(
            f"invalid privacy accounting inputs of the {name}: epsilon={reported!r} must be a "
            "finite number >= 0 for a DP training"
        )
    try:
        prv = compute_epsilon(accountant="prv", **accounting)
        rdp = compute_epsilon(accountant="rdp", **accounting)
    except PrivacyError as exc:
        raise PrivacyError(f"{name}: {exc}") from exc

    entry["recomputed_prv"] = prv
    entry["recomputed_rdp"] = rdp
    entry["epsilon"] = max(reported, prv)
    limit = reported * (1.0 + tolerance)
    checks.append(
        {
            "name": f"{name}_epsilon_recomputed",
            "passed": prv <= limit,
            "detail": (
                f"reported {reported:.4g}, recomputed PRV {prv:.4g} (RDP {rdp:.4g}); "
                f"allowed up to {limit:.4g} (tolerance {tolerance:.0%})"
            ),
        }
    )
    return entry, checks


def audit(
    cfg: AuditConfig,
    records: dict[str, PrivacyRecord],
    *,
    epsilon_budget: float,
) -> dict[str, Any]:
    """Audit privacy records already read; see :func:`run`.

    Args:
        cfg: the audit settings (relative tolerance of the recomputation).
        records: the record of each released training, by training name.
        epsilon_budget: the total epsilon the run may spend.

    Returns:
        The audit (what :func:`run` writes to ``audit.json``).
    """
    if not isinstance(epsilon_budget, (int, float)) or not (
        math.isfinite(epsilon_budget) and epsilon_budget > 0
    ):
        raise PrivacyError(f"epsilon_budget={epsilon_budget!r} must be a finite number > 0")

    trainings: dict[str, dict[str, Any]] = {}
    checks: list[dict[str, Any]] = []
    for name, record in records.items():
        entry, training_checks = _audit_training(name, record, cfg.tolerance)
        trainings[name] = entry
        checks.extend(training_checks)

    epsilons = [t["epsilon"] for t in trainings.values()]
    total_delta = sum(t["delta"] for t in trainings.values())
    if any(e is None for e in epsilons):
        total_epsilon = None
        not_dp = sorted(n for n, t in trainings.items() if t["epsilon"] is None)
        budget_check = {
            "name": "total_within_budget",
            "passed": False,
            "detail": f"no finite total: {', '.join(not_dp)} carries no DP guarantee",
        }
    else:
        total_epsilon = float(sum(epsilons))
        budget_check = {
            "name": "total_within_budget",
            "passed": total_epsilon <= epsilon_budget,
            "detail": (
                f"composed epsilon {total_epsilon:.4g} at delta {total_delta:.3g} "
                f"against budget {epsilon_budget:.4g}"
            ),
        }
    checks.append(budget_check)
    passed = all(c["passed"] for c in checks)
    result = {
        "trainings": trainings,
        "composition": COMPOSITION,
        "total_epsilon": total_epsilon,
        "total_delta": total_delta,
        "epsilon_budget": float(epsilon_budget),
        "tolerance": cfg.tolerance,
        "checks": checks,
        "passed": passed,
    }
    for check in checks:
        if not check["passed"]:
            logger.warning("audit check %s failed: %s", check["name"], check["detail"])
    logger.info(
        "dp audit %s: total epsilon %s (delta %.3g), budget %s",
        "passed" if passed else "FAILED",
        total_epsilon,
        total_delta,
        epsilon_budget,
    )
    return result


def empirical_audit(
    cfg: AuditConfig,
    trainings: dict[str, dict[str, Any]],
    generator_dir: Path,
    recommender_dir: Path,
    *,
    cleaned_dir: Path | None,
    synthetic_dir: Path | None,
    training_dir: Path | None,
    generate_cfg: GenerateConfig,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The model-based checks and the raw-id scan; see :mod:`components.dp_audit.attacks`.

    Returns:
        The checks, the summary figures, the canary results and the membership results (the
        last two per model, for ``audit.html``).
    """
    checks: list[dict[str, Any]] = []
    canary_results: dict[str, Any] = {}
    mia_results: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    gen_canaries = canaries.load(generator_dir)
    rec_canaries = canaries.load(recommender_dir)
    train_part = attacks.generator_train_parts(cleaned_dir) if cleaned_dir is not None else None
    # Models and vocabulary are loaded only when a check needs them: an audit of privacy records
    # alone (no canaries, no cleaned/) reads nothing else.
    loaded: dict[str, Any] = {}

    def get(what: str) -> Any:
        if what not in loaded:
            loaders = {
                "vocab": lambda: ItemVocab.load(generator_dir),
                "generator": lambda: load_model(generator_dir),
                "recommender": lambda: load_recommender(recommender_dir),
            }
            loaded[what] = loaders[what]()
        return loaded[what]

    if cfg.empirical:
        for name, canary_set, score in (
            ("generator", gen_canaries, attacks.generator_canary_scores),
            ("recommender", rec_canaries, attacks.recommender_canary_scores),
        ):
            scores = score(canary_set, get(name), cfg) if canary_set else None
            result, check = attacks.canary_audit(
                name,
                canary_set,
                scores,
                accountant_epsilon=trainings[name]["epsilon"],
                delta=trainings[name]["delta"],
                cfg=cfg,
            )
            canary_results[name] = result
            checks.append(check)

        if train_part is not None:
            result, check = attacks.generator_membership(
                train_part,
                gen_canaries,
                get("generator"),
                get("vocab"),
                cleaned_dir,
                generate_cfg,
                cfg,
            )
        else:
            result, check = None, attacks.skipped("generator_membership_inference", NO_CLEANED)
        mia_results["generator"] = result
        checks.append(check)
        if training_dir is not None:
            result, check = attacks.recommender_membership(
                training_dir, rec_canaries, get("recommender"), cfg
            )
        else:
            result, check = (
                None,
                attacks.skipped(
                    "recommender_membership_inference", "no training_set/ given to the audit"
                ),
            )
        mia_results["recommender"] = result
        checks.append(check)

        if train_part is not None and synthetic_dir is not None:
            result, check = attacks.synthetic_copies(
                train_part,
                synthetic_dir,
                gen_canaries,
                get("vocab"),
                cleaned_dir,
                generate_cfg,
                cfg,
            )
        else:
            result, check = None, attacks.skipped("synthetic_copies", NO_CLEANED)
        figures["copies"] = result
        checks.append(check)

    if cleaned_dir is not None:
        catalogue = art.read_parquet(cleaned_dir / art.ITEMS, ["item_id"])["item_id"].astype(str)
        directories = {"generator_model": generator_dir}
        if synthetic_dir is not None:
            directories["synthetic"] = synthetic_dir
        result, check = attacks.raw_id_scan(
            cleaned_dir, directories, set(catalogue) | set(get("vocab").tokens), cfg
        )
    else:
        check = attacks.skipped("no_raw_customer_ids", NO_CLEANED)
    checks.append(check)
    return checks, figures, canary_results, mia_results


NO_CLEANED = "no cleaned/ given to the audit"
COUNTRY_CHECK = "country_vocabulary_public"
COUNTRY_FIX = (
    "set ingest.countries to the operator's public list of markets (the countries the shop "
    "sells to) and rerun from ingest"
)


def country_vocabulary_check(
    generator_dir: Path,
    recommender_dir: Path,
    *,
    cleaned_dir: Path | None,
    training_dir: Path | None,
) -> dict[str, Any]:
    """Whether the models' country vocabularies are public, not derived from the customers.

    The public list and its source come from ``cleaned/countries.json`` (or, without cleaned/,
    from the ``source`` fuse wrote into ``training_set/countries.json``). The check fails when the
    source is "data" (the observed countries) or unknown (an older artifact without it), and
    when the recommender's ``countries.json`` or the generator's country tokens hold a country
    outside the list (the generator may also hold the unknown country).
    """
    figures: dict[str, Any] = {"source": None, "n_countries": None}

    def failed(detail: str) -> dict[str, Any]:
        return {"name": COUNTRY_CHECK, "passed": False, "detail": detail, "figures": figures}

    if cleaned_dir is not None:
        where = cleaned_dir / public_countries.COUNTRIES_FILE
        public = public_countries.read(cleaned_dir)
    elif training_dir is not None and (training_dir / COUNTRIES).is_file():
        where = training_dir / COUNTRIES
        raw = read_json(where)
        names = read_countries(where)[1:]
        source = raw.get("source")
        public = None if source is None else {"countries": names, "source": source}
    else:
        return attacks.skipped(COUNTRY_CHECK, "no cleaned/ or training_set/ given to the audit")
    if public is None:
        return failed(
            f"{where} does not say where the country list came from (an artifact from before "
            f"public country lists: the vocabularies were built from the customers); {COUNTRY_FIX}"
        )
    figures.update(source=public["source"], n_countries=len(public["countries"]))
    if public["source"] != public_countries.SOURCE_CONFIG:
        return failed(
            f"the country vocabulary has source {public['source']!r} ({where}): it is the observed "
            "countries, so every exported model reveals which countries have customers, outside "
            f"DP; {COUNTRY_FIX}"
        )
    allowed = set(public["countries"])
    outside: dict[str, list[str]] = {}
    if (recommender_dir / COUNTRIES).is_file():
        names = read_countries(recommender_dir / COUNTRIES)[1:]
        outside["recommender"] = sorted(set(names) - allowed)
    if (generator_dir / VOCAB_FILE).is_file():
        names = ItemVocab.load(generator_dir).countries
        outside["generator"] = sorted(set(names) - allowed - {public_countries.UNKNOWN})
    leaks = {model: names for model, names in outside.items() if names}
    if leaks:
        listed = "; ".join(f"{m}: {n[:5]}" for m, n in leaks.items())
        return failed(f"vocabularies hold countries outside the public list ({listed})")
    return {
        "name": COUNTRY_CHECK,
        "passed": True,
        "detail": (
            f"{len(allowed)} countries from ingest.countries; checked "
            f"{', '.join(sorted(outside)) or 'no model vocabulary'}: nothing outside the list"
        ),
        "figures": figures,
    }


def _summary(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of the empirical checks (worst case over the models).

    Each worst case may come from a different model, so each figure's ``*_model`` key names
    the model it was taken from ("generator" or "recommender").
    """
    by_name = {c["name"]: c.get("figures") or {} for c in checks}

    def worst(prefix: str, key: str) -> tuple[Any, str | None, dict[str, Any]]:
        found = [
            (by_name[f"{model}_{prefix}"][key], model, by_name[f"{model}_{prefix}"])
            for model in ("generator", "recommender")
            if by_name.get(f"{model}_{prefix}", {}).get(key) is not None
        ]
        return max(found, key=lambda f: f[0]) if found else (None, None, {})

    bound, bound_model, _ = worst("canary_bound", "epsilon_lower_bound")
    auc, auc_model, attack = worst("membership_inference", "auc")
    tpr01, tpr01_model, _ = worst("membership_inference", "tpr_at_0.1pct_fpr")
    tpr1, tpr1_model, _ = worst("membership_inference", "tpr_at_1pct_fpr")
    copies = by_name.get("synthetic_copies", {})
    return {
        "empirical_epsilon_lower_bound": bound,
        "empirical_epsilon_lower_bound_model": bound_model,
        "mia_auc": auc,
        "mia_auc_model": auc_model,
        "mia_tpr_at_0.1pct_fpr": tpr01,
        "mia_tpr_at_0.1pct_fpr_model": tpr01_model,
        "mia_tpr_at_1pct_fpr": tpr1,
        "mia_tpr_at_1pct_fpr_model": tpr1_model,
        "mia_n_members": attack.get("n_members"),
        "mia_n_non_members": attack.get("n_non_members"),
        "copy_rate": copies.get("copy_rate"),
        "copy_rate_baseline": copies.get("baseline_rate"),
    }


def run(
    cfg: AuditConfig,
    generator_dir: str | os.PathLike[str],
    recommender_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    epsilon_budget: float,
    cleaned_dir: str | os.PathLike[str] | None = None,
    synthetic_dir: str | os.PathLike[str] | None = None,
    training_dir: str | os.PathLike[str] | None = None,
    ledger_path: str | os.PathLike[str] | None = None,
    dataset_sha256: str | None = None,
    run_id: str | None = None,
    generate_cfg: GenerateConfig | None = None,
) -> dict[str, Any]:
    """Audit the run's privacy; write ``audit.json`` and ``audit.html``.

    Accounting (always): a check fails when a training was not DP, when its recomputed PRV epsilon
    exceeds the reported one by more than ``cfg.tolerance`` (relative), or when the composed total
    exceeds ``epsilon_budget``. Empirical (when the trainings saved ``canaries.json``, the inputs
    are given and ``cfg.empirical``): the one-run canary bound of each model against its
    accountant epsilon, a loss-threshold membership attack on real customers, synthetic copies of
    training sessions against held-out ones, and a scan of the generator's files and the
    synthetic data for raw customer ids. Always (given cleaned/ or training_set/):
    ``country_vocabulary_public``, which fails unless the country vocabulary came from
    ``ingest.countries`` and no model's vocabulary holds a country outside it. A check whose
    inputs are missing is reported as skipped.
    A failed audit is a result, not an error: ``passed`` is False and deploy does not run.

    With ``ledger_path``, ``dataset_sha256`` and ``run_id`` the run's audited spend is appended to
    the privacy ledger (whether or not the audit passed: the trainings ran), and the page lists
    the dataset's ledger entries.

    Args:
        cfg: audit settings.
        generator_dir: the generator model directory (``privacy.json``, weights, vocabulary,
            ``canaries.json``).
        recommender_dir: the recommender model directory (same).
        out_dir: where ``audit.json``, ``audit.html`` and ``step.json`` go.
        epsilon_budget: total epsilon the run may spend.
        cleaned_dir: ingest's output (real customers, for the attack, the copies and the id scan).
        synthetic_dir: generate's synthetic sessions.
        training_dir: fuse's output (the recommender's real training sequences).
        ledger_path: the privacy ledger file.
        dataset_sha256: the cleaned dataset's content hash.
        run_id: the run's id, recorded in the ledger.
        generate_cfg: the run's generate section, to rebuild the generator's training records of
            real customers exactly (defaults when None).

    Returns:
        The audit dict, with ``passed`` (bool) and the headline figures.

    Raises:
        PrivacyError: an accounting input is invalid (each one named).
        InputError: a privacy record is missing or not JSON, or an artifact lacks a file.
    """
    timer = StepTimer("dp_audit")
    generator_dir, recommender_dir = Path(generator_dir), Path(recommender_dir)
    records = {
        "generator": read_privacy_record(generator_dir, "generator"),
        "recommender": read_privacy_record(recommender_dir, "recommender"),
    }
    if (recommender_dir / REAL_ONLY_PRIVACY).is_file():
        records["recommender_real_only"] = read_privacy_record(
            recommender_dir, "recommender_real_only", REAL_ONLY_PRIVACY
        )
    result = audit(cfg, records, epsilon_budget=epsilon_budget)

    def opt(path: str | os.PathLike[str] | None) -> Path | None:
        return None if path is None else Path(path)

    checks, figures, canary_results, mia_results = empirical_audit(
        cfg,
        result["trainings"],
        generator_dir,
        recommender_dir,
        cleaned_dir=opt(cleaned_dir),
        synthetic_dir=opt(synthetic_dir),
        training_dir=opt(training_dir),
        generate_cfg=generate_cfg if generate_cfg is not None else GenerateConfig(),
    )
    # Before the empirical checks, so a failure is logged with them.
    country_check = country_vocabulary_check(
        generator_dir, recommender_dir, cleaned_dir=opt(cleaned_dir), training_dir=opt(training_dir)
    )
    checks.insert(0, country_check)
    result["checks"].extend(checks)
    result.update(_summary(result["checks"]))
    result["copies"] = figures.get("copies")
    result["accountant_epsilon"] = result["total_epsilon"]
    result["passed"] = all(c["passed"] for c in result["checks"])
    result["failed_checks"] = [c["name"] for c in result["checks"] if not c["passed"]]
    for check in checks:
        if not check["passed"]:
            logger.warning("audit check %s failed: %s", check["name"], check["detail"])
    logger.info(
        "empirical audit: epsilon lower bound %s, membership AUC %s, copy rate %s (held out %s); "
        "audit %s",
        result["empirical_epsilon_lower_bound"],
        result["mia_auc"],
        result["copy_rate"],
        result["copy_rate_baseline"],
        "passed" if result["passed"] else "FAILED: " + ", ".join(result["failed_checks"]),
    )

    entries = None
    if ledger_path is not None and dataset_sha256 is not None and run_id is not None:
        ledger.record(
            ledger_path,
            dataset_sha256=dataset_sha256,
            run_id=run_id,
            epsilon=result["total_epsilon"],
            delta=result["total_delta"],
            trainings={name: t["epsilon"] for name, t in result["trainings"].items()},
        )
        entries = [e for e in ledger.entries(ledger_path) if e["dataset_sha256"] == dataset_sha256]
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / AUDIT_FILE, result)
        (tmp / AUDIT_HTML).write_text(
            audit_html.render(result, canary_results, mia_results, entries), encoding="utf-8"
        )
        timer.write(tmp, {k: result[k] for k in SUMMARY_KEYS})
    return result


SUMMARY_KEYS = (
    "passed",
    "failed_checks",
    "accountant_epsilon",
    "empirical_epsilon_lower_bound",
    "mia_auc",
    "mia_tpr_at_0.1pct_fpr",
    "mia_tpr_at_1pct_fpr",
    "copy_rate",
    "copy_rate_baseline",
)
