"""The run report: what was trained, how well, at what privacy cost, and whether it was deployed.

Reads the artifacts of every step that ran and writes ``report.md``, a self-contained
``report.html`` (inline style, no external assets, so it opens from a laptop or an artifact store
alike) and ``metrics.json`` for machines. Steps that did not run (export, register_features and
deploy when the audit blocked deployment) are passed as ``None`` and reported as not run.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Any

from components.common.artifacts import (
    CLEANING_REPORT,
    STEP_RECORD,
    StepTimer,
    atomic_dir,
    read_json,
    write_json,
)
from components.common.errors import InputError
from components.common.htmltable import render_table
from components.common.steps import STEPS
from components.report.config import ReportConfig

logger = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
METRICS = "metrics.json"
SERVERS = "servers.json"
AUDIT_FILE = "audit.json"
RECOMMENDER_METRICS = "metrics.json"

MODELS = ("popularity", "real_only", "real_plus_synthetic")
METRIC_KEYS = ("hr@10", "ndcg@10", "mrr", "coverage")
TRAININGS = ("generator", "recommender", "recommender_real_only")
# Headline figures of the empirical audit (dp_audit's audit.json), absent in older audits.
EMPIRICAL_KEYS = (
    "accountant_epsilon",
    "empirical_epsilon_lower_bound",
    "mia_auc",
    "mia_tpr_at_0.1pct_fpr",
    "mia_tpr_at_1pct_fpr",
    "mia_n_members",
    "mia_n_non_members",
    "copy_rate",
    "copy_rate_baseline",
    # which model each worst-case figure came from (absent in older audits)
    "empirical_epsilon_lower_bound_model",
    "mia_auc_model",
    "mia_tpr_at_0.1pct_fpr_model",
    "mia_tpr_at_1pct_fpr_model",
)


def _read_metrics(recommender_dir: Path) -> dict[str, dict[str, float]]:
    path = recommender_dir / RECOMMENDER_METRICS
    raw = read_json(path)
    out: dict[str, dict[str, float]] = {}
    for model in MODELS:
        if not isinstance(raw, dict) or not isinstance(raw.get(model), dict):
            raise InputError(
                f"metrics lack model {model!r}; expected {list(MODELS)}", file=str(path)
            )
        values = {}
        for key in METRIC_KEYS:
            value = raw[model].get(key)
            if not isinstance(value, (int, float)):
                raise InputError(
                    f"metric {model}.{key}={value!r} must be a number", file=str(path), column=key
                )
            values[key] = float(value)
        out[model] = values
    return out


def _read_cleaning(cleaned_dir: Path) -> dict[str, Any]:
    path = cleaned_dir / CLEANING_REPORT
    raw = read_json(path)
    missing = [k for k in ("rows_read", "rows_kept", "dropped") if k not in raw]
    if missing:
        raise InputError(f"cleaning report lacks keys {missing}", file=str(path))
    # JSON artifacts are written with sorted keys; ingest records the order its rules ran in.
    dropped = raw["dropped"]
    order = [r for r in raw.get("rules", []) if r in dropped]
    order += sorted(r for r in dropped if r not in order)
    return {
        "rows_read": int(raw["rows_read"]),
        "rows_kept": int(raw["rows_kept"]),
        "dropped": {str(rule): int(dropped[rule]) for rule in order},
    }


def _read_audit(audit_dir: Path) -> dict[str, Any]:
    path = audit_dir / AUDIT_FILE
    raw = read_json(path)
    missing = [
        k for k in ("trainings", "total_epsilon", "epsilon_budget", "passed") if k not in raw
    ]
    if missing:
        raise InputError(f"audit lacks keys {missing}", file=str(path))
    return raw


def _read_feature_sources(training_dir: Path) -> list[dict[str, str]]:
    """Each recommender feature and where its values come from, as fuse recorded them.

    An older training set without the record gives an empty list (the section says so).
    """
    path = training_dir / STEP_RECORD
    if not path.is_file():
        return []
    summary = read_json(path).get("summary") or {}
    rows = []
    for kind, key in (("item", "feature_sources"), ("customer", "customer_feature_sources")):
        sources = summary.get(key) or {}
        if not isinstance(sources, dict):
            raise InputError(f"{key} must be an object of feature -> source", file=str(path))
        rows += [
            {"feature": str(name), "kind": kind, "source": str(source)}
            for name, source in sources.items()
        ]
    return rows


def _read_steps(dirs: dict[str, Path | None]) -> dict[str, float]:
    """Wall time per step from each input dir's ``step.json``.

    A step with two output dirs (generate) writes the record in both; the longer one counts.
    """
    steps: dict[str, float] = {}
    for name, directory in dirs.items():
        if directory is None:
            continue
        path = directory / STEP_RECORD
        if not path.is_file():
            logger.warning("no %s in %s: wall time of %s unknown", STEP_RECORD, directory, name)
            continue
        record = read_json(path)
        step = str(record.get("step") or name)
        wall = record.get("wall_s")
        if isinstance(wall, (int, float)):
            steps[step] = max(float(wall), steps.get(step, 0.0))
    order = {s: i for i, s in enumerate(STEPS)}
    return dict(sorted(steps.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _read_endpoints(deployment_dir: Path | None) -> list[dict[str, Any]]:
    """Served endpoints from ``servers.json``: a list of servers or {"servers": [...]}."""
    if deployment_dir is None:
        return []
    path = deployment_dir / SERVERS
    if not path.is_file():
        return []
    raw = read_json(path)
    if isinstance(raw, dict) and "servers" in raw:
        raw = raw["servers"]
    elif isinstance(raw, dict):
        # {model name: server record}
        raw = [{"model": k, **v} for k, v in raw.items() if isinstance(v, dict)]
    endpoints = []
    for server in raw or []:
        if not isinstance(server, dict):
            continue
        model = server.get("model") or server.get("name")
        host = server.get("host", "127.0.0.1")
        port = server.get("port")
        base = server.get("url") or (f"http://{host}:{port}" if port is not None else None)
        # The model's V2 endpoint; deploy records the server's base URL.
        url = base
        if base and model and "/v2/models/" not in base:
            url = f"{base.rstrip('/')}/v2/models/{model}"
        endpoints.append({"model": model, "url": url, "pid": server.get("pid")})
    return endpoints


def collect(
    *,
    cleaned_dir: Path,
    generator_dir: Path,
    synthetic_dir: Path,
    training_dir: Path,
    recommender_dir: Path,
    audit_dir: Path,
    exported_dir: Path | None,
    feature_store_dir: Path | None,
    deployment_dir: Path | None,
) -> dict[str, Any]:
    """Gather the figures of the report (the content of ``metrics.json``)."""
    audit = _read_audit(audit_dir)
    trainings = audit["trainings"]
    epsilon = {name: (trainings.get(name) or {}).get("epsilon") for name in TRAININGS}
    epsilon["total"] = audit["total_epsilon"]
    epsilon["budget"] = audit["epsilon_budget"]
    steps = _read_steps(
        {
            "ingest": cleaned_dir,
            "generate": generator_dir,
            "generate_synthetic": synthetic_dir,
            "fuse": training_dir,
            "train": recommender_dir,
            "dp_audit": audit_dir,
            "export": exported_dir,
            "register_features": feature_store_dir,
            "deploy": deployment_dir,
        }
    )
    deployed = deployment_dir is not None
    return {
        "metrics": _read_metrics(recommender_dir),
        "epsilon": epsilon,
        "privacy": {
            name: {
                k: (trainings.get(name) or {}).get(k)
                for k in ("reported", "recomputed_prv", "recomputed_rdp", "delta")
            }
            for name in TRAININGS
        },
        "total_delta": audit.get("total_delta"),
        "composition": audit.get("composition"),
        "cleaning": _read_cleaning(cleaned_dir),
        "feature_sources": _read_feature_sources(training_dir),
        "steps": steps,
        "audit_passed": bool(audit["passed"]),
        "audit_checks": audit.get("checks", []),
        "audit_failed_checks": [c["name"] for c in audit.get("checks", []) if not c["passed"]],
        "empirical_audit": {key: audit.get(key) for key in EMPIRICAL_KEYS},
        "deployed": deployed,
        "endpoints": _read_endpoints(deployment_dir),
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _sections(cfg: ReportConfig, figures: dict[str, Any]) -> list[tuple[str, list[str], list]]:
    """The report as (heading, column names, rows) tables, shared by the md and html writers."""
    verdict = "PASSED" if figures["audit_passed"] else "FAILED"
    if not figures["deployed"]:
        deployment = "blocked by the DP audit: export, register_features and deploy did not run"
    elif figures["endpoints"]:
        deployment = f"deployed: {len(figures['endpoints'])} local server(s), manifests rendered"
    else:
        deployment = "deployed: manifests rendered, no local servers started"
    eps = figures["epsilon"]
    privacy = figures["privacy"]
    failed = [c for c in figures["audit_checks"] if not c["passed"]]
    verdict_rows = [["DP audit", verdict], ["deployment", deployment]]
    verdict_rows += [[f"failed check: {c['name']}", c["detail"]] for c in failed]
    emp = figures.get("empirical_audit") or {}

    def worst_of(key: str) -> str:
        model = emp.get(f"{key}_model")
        return f", worst model: {model}" if model else ""

    sample = (
        f" ({emp['mia_n_members']} members, {emp['mia_n_non_members']} held out"
        f"{worst_of('mia_auc')})"
        if emp.get("mia_n_members") is not None
        else ""
    )
    # With n held-out customers the smallest false-positive rate an attack can show is 1/n.
    n_held = emp.get("mia_n_non_members")
    floor = f"resolves to 1/{n_held}" if n_held and n_held < 1000 else ""

    def tpr_label(rate: str, key: str, *extra: str) -> str:
        notes = [n for n in (worst_of(key)[2:], *extra) if n]
        return f"attack TPR at {rate} FPR" + (f" ({'; '.join(notes)})" if notes else "")

    return [
        ("Verdict", ["item", "value"], verdict_rows),
        (
            "Empirical privacy audit",
            ["figure", "value"],
            [
                ["accountant epsilon (composed)", _fmt(emp.get("accountant_epsilon"))],
                [
                    "empirical epsilon lower bound (95 %, canaries"
                    f"{worst_of('empirical_epsilon_lower_bound')})",
                    _fmt(emp.get("empirical_epsilon_lower_bound")),
                ],
                [f"membership attack AUC{sample}", _fmt(emp.get("mia_auc"))],
                [
                    tpr_label("0.1 %", "mia_tpr_at_0.1pct_fpr", floor),
                    _fmt(emp.get("mia_tpr_at_0.1pct_fpr")),
                ],
                [tpr_label("1 %", "mia_tpr_at_1pct_fpr"), _fmt(emp.get("mia_tpr_at_1pct_fpr"))],
                ["synthetic copies of training sessions", _fmt(emp.get("copy_rate"))],
                ["same rate for held-out sessions", _fmt(emp.get("copy_rate_baseline"))],
                ["details", "audit.html and audit.json beside this report"],
                [
                    "synthetic data quality (fidelity, utility, copies)",
                    "quality.html and quality.json beside this report",
                ],
            ],
        ),
        (
            "Recommendation quality (leave-last-out test)",
            ["model", *METRIC_KEYS],
            [
                [model, *(_fmt(figures["metrics"][model][k]) for k in METRIC_KEYS)]
                for model in MODELS
            ],
        ),
        (
            "Features of the recommender and where they come from",
            ["feature", "kind", "source"],
            [[f["feature"], f["kind"], f["source"]] for f in figures["feature_sources"]]
            or [["none recorded", "", "the training set predates feature records"]],
        ),
        (
            "Privacy (user-level, unit = customer)",
            [
                "training",
                "epsilon (audited)",
                "reported",
                "recomputed PRV",
                "recomputed RDP",
                "delta",
            ],
            [
                [
                    name,
                    _fmt(eps[name]),
                    _fmt(privacy[name]["reported"]),
                    _fmt(privacy[name]["recomputed_prv"]),
                    _fmt(privacy[name]["recomputed_rdp"]),
                    _fmt(privacy[name]["delta"], 3),
                ]
                for name in TRAININGS
            ]
            + [
                ["total", _fmt(eps["total"]), "", "", "", _fmt(figures["total_delta"], 3)],
                ["budget", _fmt(eps["budget"]), "", "", "", ""],
            ],
        ),
        (
            "Audit checks",
            ["check", "passed", "detail"],
            [
                [c["name"], "yes" if c["passed"] else "NO", c["detail"]]
                for c in figures["audit_checks"]
            ],
        ),
        (
            "Cleaning",
            ["rule", "rows"],
            [["rows read", figures["cleaning"]["rows_read"]]]
            + [[f"dropped: {r}", n] for r, n in figures["cleaning"]["dropped"].items()]
            + [["rows kept", figures["cleaning"]["rows_kept"]]],
        ),
        (
            "Wall time per step",
            ["step", "seconds"],
            [[step, f"{wall:.1f}"] for step, wall in figures["steps"].items()],
        ),
        (
            "Served endpoints",
            ["model", "url", "pid"],
            [[e["model"], e["url"], _fmt(e["pid"])] for e in figures["endpoints"]]
            or [["none", "no servers running for this run", ""]],
        ),
    ]


def _cell_md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(cfg: ReportConfig, figures: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = [f"# {cfg.title}", ""]
    if not figures["audit_passed"]:
        failed = [c for c in figures["audit_checks"] if not c["passed"]]
        lines += ["**DP audit FAILED: deployment blocked.**", ""]
        lines += [f"- FAILED {c['name']}: {c['detail']}" for c in failed]
        lines.append("")
    if figures.get("composition"):
        lines += [f"Privacy composition: {figures['composition']}.", ""]
    for heading, columns, rows in _sections(cfg, figures):
        lines += [f"## {heading}", ""]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1.5rem}"
    "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}"
    "th{background:#f3f3f3}.fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}"
)


def render_html(cfg: ReportConfig, figures: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline style, no scripts, no links out)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(cfg.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(cfg.title)}</h1>",
    ]
    if not figures["audit_passed"]:
        failed = [c for c in figures["audit_checks"] if not c["passed"]]
        parts.append('<p class="fail">DP audit FAILED: deployment blocked.</p><ul>')
        parts += [f"<li>{esc(c['name'])}: {esc(c['detail'])}</li>" for c in failed]
        parts.append("</ul>")
    if figures.get("composition"):
        parts.append(f"<p>Privacy composition: {esc(figures['composition'])}.</p>")
    for heading, columns, rows in _sections(cfg, figures):
        parts.append(f"<h2>{esc(heading)}</h2>")
        parts.append(render_table(columns, rows))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def run(
    cfg: ReportConfig,
    *,
    out_dir: str | os.PathLike[str],
    cleaned_dir: str | os.PathLike[str],
    generator_dir: str | os.PathLike[str],
    synthetic_dir: str | os.PathLike[str],
    training_dir: str | os.PathLike[str],
    recommender_dir: str | os.PathLike[str],
    audit_dir: str | os.PathLike[str],
    exported_dir: str | os.PathLike[str] | None = None,
    feature_store_dir: str | os.PathLike[str] | None = None,
    deployment_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``metrics.json`` into ``out_dir``.

    Args:
        cfg: report settings.
        out_dir: the report directory to write.
        cleaned_dir: ingest output (``cleaning_report.json``).
        generator_dir: generator model (its ``step.json``).
        synthetic_dir: synthetic sessions (its ``step.json``).
        training_dir: fused training set (its ``step.json``).
        recommender_dir: recommender model (``metrics.json``).
        audit_dir: dp_audit output (``audit.json``).
        exported_dir: export output, None when export did not run.
        feature_store_dir: register_features output, None when it did not run.
        deployment_dir: deploy output (``servers.json``), None when deployment was blocked.

    Returns:
        The figures written to ``metrics.json``.

    Raises:
        InputError: an artifact is missing or lacks a promised key.
    """
    timer = StepTimer("report")

    def opt(path: str | os.PathLike[str] | None) -> Path | None:
        return None if path is None else Path(path)

    figures = collect(
        cleaned_dir=Path(cleaned_dir),
        generator_dir=Path(generator_dir),
        synthetic_dir=Path(synthetic_dir),
        training_dir=Path(training_dir),
        recommender_dir=Path(recommender_dir),
        audit_dir=Path(audit_dir),
        exported_dir=opt(exported_dir),
        feature_store_dir=opt(feature_store_dir),
        deployment_dir=opt(deployment_dir),
    )
    # The report's own time: reading every artifact (rendering below takes milliseconds).
    figures["steps"]["report"] = round(timer.elapsed(), 3)
    with atomic_dir(out_dir) as tmp:
        (tmp / REPORT_MD).write_text(render_markdown(cfg, figures), encoding="utf-8")
        (tmp / REPORT_HTML).write_text(render_html(cfg, figures), encoding="utf-8")
        write_json(tmp / METRICS, figures)
        timer.write(tmp, {"audit_passed": figures["audit_passed"], "deployed": figures["deployed"]})
    logger.info(
        "report written to %s (audit %s, deployed %s)",
        out_dir,
        "passed" if figures["audit_passed"] else "failed",
        figures["deployed"],
    )
    return figures
