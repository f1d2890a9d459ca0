"""``audit.html``: the audit as one self-contained page (figures embedded as base64 PNG).

Canary score histograms (included against excluded), the membership attack's ROC curves, every
check with its figures, and the privacy ledger's entries for the run's dataset.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from components.common.htmltable import render_table

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:62rem;margin:2rem auto;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1.5rem}"
    "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}.fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}"
    "img{max-width:100%}"
)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _histograms(canary_results: dict[str, dict[str, Any]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = {k: v for k, v in canary_results.items() if v}
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 3.4), squeeze=False)
    for ax, (name, result) in zip(axes[0], shown.items(), strict=True):
        both = result["scores_in"] + result["scores_out"]
        bins = 30 if len(set(both)) > 1 else 1
        ax.hist(result["scores_out"], bins=bins, alpha=0.6, label="excluded", color="#4477aa")
        ax.hist(result["scores_in"], bins=bins, alpha=0.6, label="included", color="#cc6677")
        ax.set_title(f"{name}: eps >= {result['epsilon_lower_bound']:.2f}")
        ax.set_xlabel("score (mean log-likelihood / negative loss)")
        ax.set_ylabel("canaries")
        ax.legend()
    out = _png(fig)
    plt.close(fig)
    return out


def _rocs(mia_results: dict[str, dict[str, Any]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = {k: v for k, v in mia_results.items() if v and v.get("auc") is not None}
    if not shown:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in shown.items():
        label = f"{name} (AUC {result['auc']:.3f})"
        for ax in axes:
            ax.plot(result["fpr"], result["tpr"], label=label)
    axes[0].plot([0, 1], [0, 1], "k:", label="chance")
    axes[0].set_title("ROC, linear")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlim(1e-3, 1)
    axes[1].set_ylim(1e-3, 1)
    axes[1].plot([1e-3, 1], [1e-3, 1], "k:", label="chance")
    axes[1].set_title("ROC, log-log (low FPR)")
    for ax in axes:
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right")
    out = _png(fig)
    plt.close(fig)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _worst(audit: dict[str, Any], key: str) -> str:
    """The suffix naming the model a worst-case headline figure was taken from."""
    model = audit.get(f"{key}_model")
    return f" (worst: {model})" if model else ""


def render(
    audit: dict[str, Any],
    canary_results: dict[str, dict[str, Any]],
    mia_results: dict[str, dict[str, Any]],
    ledger_entries: list[dict[str, Any]] | None,
) -> str:
    """The page."""
    esc = html.escape
    verdict = "PASSED" if audit["passed"] else "FAILED"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>recsynth DP audit</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>recsynth DP audit</h1>",
        render_table(
            ["item", "value"],
            [
                ["verdict", verdict],
                ["failed checks", ", ".join(audit["failed_checks"]) or "none"],
                ["accountant epsilon (composed)", _fmt(audit["accountant_epsilon"])],
                ["epsilon budget", _fmt(audit["epsilon_budget"])],
                [
                    "empirical epsilon lower bound"
                    + _worst(audit, "empirical_epsilon_lower_bound"),
                    _fmt(audit["empirical_epsilon_lower_bound"]),
                ],
                ["membership attack AUC" + _worst(audit, "mia_auc"), _fmt(audit["mia_auc"])],
                [
                    "TPR at 0.1% FPR" + _worst(audit, "mia_tpr_at_0.1pct_fpr"),
                    _fmt(audit["mia_tpr_at_0.1pct_fpr"]),
                ],
                [
                    "TPR at 1% FPR" + _worst(audit, "mia_tpr_at_1pct_fpr"),
                    _fmt(audit["mia_tpr_at_1pct_fpr"]),
                ],
                ["synthetic copy rate", _fmt(audit["copy_rate"])],
                ["copy rate of held-out sessions", _fmt(audit["copy_rate_baseline"])],
            ],
        ),
        f"<p>Composition: {esc(audit['composition'])}.</p>",
        "<h2>Checks</h2>",
        render_table(
            ["check", "passed", "detail"],
            [[c["name"], "yes" if c["passed"] else "NO", c["detail"]] for c in audit["checks"]],
        ),
        "<h2>Canary scores (one-run audit)</h2>",
    ]
    hist = _histograms(canary_results)
    if hist:
        parts.append(f'<img alt="canary score histograms" src="data:image/png;base64,{hist}">')
        parts.append(
            "<p>Each canary is a random sequence of catalogue items, included in training with "
            "probability 1/2. A model that memorises its training customers scores the included "
            "canaries higher; the bound counts correct guesses among the top and bottom scores "
            "(best of the guess counts tried, each at a Bonferroni-corrected level).</p>"
        )
    else:
        parts.append("<p>No canaries were trained with.</p>")
    parts.append("<h2>Membership inference on real customers</h2>")
    roc = _rocs(mia_results)
    if roc:
        parts.append(f'<img alt="membership attack ROC" src="data:image/png;base64,{roc}">')
    else:
        parts.append("<p>Not run: no customers were held out.</p>")
    parts.append("<h2>Privacy ledger of this dataset</h2>")
    if ledger_entries:
        parts.append(
            render_table(
                ["recorded at", "run", "kind", "epsilon", "delta", "trainings"],
                [
                    [
                        e.get("timestamp", ""),
                        e.get("run_id", ""),
                        e.get("kind", "spend"),
                        _fmt(e.get("epsilon")),
                        _fmt(e.get("delta")),
                        json.dumps(e.get("trainings", {}), sort_keys=True),
                    ]
                    for e in ledger_entries
                ],
            )
        )
    else:
        parts.append("<p>No ledger was given to the audit.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
