"""Quality of synthetic sessions against real sessions the generator never saw.

The reference is the customers the audit's hash rule keeps out of training
(``canaries.holdout_fraction``): their whole sequences, bounded exactly like the training
records. Three groups of figures, each also computed for a seeded sample of real *training*
sessions of the same size as the synthetic set ("real reference": what a generator that copied
its training data would score, so a synthetic figure has a scale):

- fidelity: Jensen-Shannon divergence (base 2, 0 = same distribution, 1 = disjoint) of item
  popularity, session length, country, month, price band and category (where present); overlap
  of item-to-next-item transitions (share of the held-out transitions that also occur in the
  set, and share of the set's transitions that occur in the held-out sessions); share of items
  that are catalogue items and share of the catalogue that appears.
- utility: a first-order next-item model (item-to-next-item counts, popularity for unseen items)
  fitted on the synthetic sessions only, and the same model fitted on the real training sessions,
  both scored on the held-out customers' last item given the rest (HR@10, NDCG@10).
- privacy: exact copies (same item list) and near copies (Jaccard >= 0.8) of training sessions
  among synthetic sessions of at least ``MIN_COPY_ITEMS`` items, beside the same rates against
  the held-out sessions, with the training side subsampled to the held-out count so that both
  sides have equally many chances. A generator that memorises shows a training rate above the
  held-out rate; the DP audit goes further (canaries).

``write`` stores ``quality.json`` and a self-contained ``quality.html`` (plots as base64 PNG).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.common.artifacts import write_json
from components.generate.tokenizer import Session

logger = logging.getLogger(__name__)

QUALITY_JSON = "quality.json"
QUALITY_HTML = "quality.html"
NEAR_COPY_JACCARD = 0.8
MIN_COPY_ITEMS = 3  # shorter sessions coincide by chance too often to mean copying
TOP_K = 10


def jsd(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon divergence in bits of two count or probability vectors (0..1)."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return max(0.0, min(1.0, (kl(p) + kl(q)) / 2))


def _counts(values: Sequence[Any], support: Sequence[Any]) -> np.ndarray:
    counter = Counter(values)
    return np.array([counter.get(v, 0) for v in support], dtype=float)


def _transitions(sessions: Sequence[Session]) -> set[tuple[str, str]]:
    return {(a, b) for s in sessions for a, b in zip(s.items, s.items[1:], strict=False)}


def fidelity(
    sessions: Sequence[Session],
    held_out: Sequence[Session],
    *,
    catalogue: Sequence[str],
    max_items: int,
) -> dict[str, Any]:
    """Fidelity figures of ``sessions`` against ``held_out`` (see the module docstring)."""
    catalogue_set = set(catalogue)
    items = [i for s in sessions for i in s.items]
    held_items = [i for s in held_out for i in s.items]
    lengths = range(1, max_items + 1)
    countries = sorted({s.country for s in (*sessions, *held_out)})
    out: dict[str, Any] = {
        "jsd_item_popularity": jsd(_counts(items, catalogue), _counts(held_items, catalogue)),
        "jsd_length": jsd(
            _counts([len(s.items) for s in sessions], lengths),
            _counts([len(s.items) for s in held_out], lengths),
        ),
        "jsd_country": jsd(
            _counts([s.country for s in sessions], countries),
            _counts([s.country for s in held_out], countries),
        ),
        "mean_length": float(np.mean([len(s.items) for s in sessions])) if sessions else 0.0,
        "held_out_mean_length": float(np.mean([len(s.items) for s in held_out])),
    }
    for name, attr, support in (
        ("month", "month", list(range(1, 13))),
        ("price_band", "price_band", sorted({s.price_band for s in held_out} - {None})),
        (
            "category",
            "category",
            sorted({s.category for s in (*sessions, *held_out)} - {None}),
        ),
    ):
        mine = [getattr(s, attr) for s in sessions if getattr(s, attr) is not None]
        theirs = [getattr(s, attr) for s in held_out if getattr(s, attr) is not None]
        out[f"jsd_{name}"] = (
            jsd(_counts(mine, support), _counts(theirs, support)) if mine and theirs else None
        )
    mine_t, held_t = _transitions(sessions), _transitions(held_out)
    shared = len(mine_t & held_t)
    out["transition_recall"] = shared / len(held_t) if held_t else None
    out["transition_precision"] = shared / len(mine_t) if mine_t else None
    out["catalogue_item_share"] = (
        sum(i in catalogue_set for i in items) / len(items) if items else None
    )
    out["catalogue_coverage"] = len(set(items) & catalogue_set) / max(len(catalogue_set), 1)
    return out


class NextItemModel:
    """First-order next-item scores: counts of item -> next item, popularity for the rest."""

    def __init__(self, sessions: Sequence[Session]) -> None:
        self.after: dict[str, Counter] = {}
        popularity: Counter = Counter()
        for s in sessions:
            popularity.update(s.items)
            for a, b in zip(s.items, s.items[1:], strict=False):
                self.after.setdefault(a, Counter())[b] += 1
        self.popular = [item for item, _ in popularity.most_common()]

    def recommend(self, history: Sequence[str], k: int = TOP_K) -> list[str]:
        """``k`` items not in ``history``: successors of its last item first, then popular."""
        seen = set(history)
        out: list[str] = []
        if history and history[-1] in self.after:
            for item, _ in self.after[history[-1]].most_common():
                if item not in seen:
                    out.append(item)
                    if len(out) == k:
                        return out
        chosen = set(out)
        for item in self.popular:
            if item not in seen and item not in chosen:
                out.append(item)
                if len(out) == k:
                    break
        return out


def utility(
    synthetic: Sequence[Session],
    train: Sequence[Session],
    cases: Sequence[tuple[list[str], str]],
) -> dict[str, Any]:
    """HR@10 and NDCG@10 on held-out next items of the model fitted on each source."""
    out: dict[str, Any] = {"n_cases": len(cases), "model": "first-order next-item counts"}
    for name, sessions in (("synthetic_only", synthetic), ("real_only", train)):
        model = NextItemModel(sessions)
        hits = ndcg = 0.0
        for history, target in cases:
            ranked = model.recommend(history)
            if target in ranked:
                rank = ranked.index(target)
                hits += 1
                ndcg += 1 / math.log2(rank + 2)
        n = max(len(cases), 1)
        out[name] = {"hr@10": hits / n, "ndcg@10": ndcg / n}
    real = out["real_only"]["hr@10"]
    out["hr_ratio"] = out["synthetic_only"]["hr@10"] / real if real > 0 else None
    return out


def _jaccard_max(
    sessions: Sequence[Session], reference: Sequence[Session], catalogue: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per session: the largest Jaccard similarity to a reference session, and exact matches."""
    from scipy import sparse

    index = {item: i for i, item in enumerate(catalogue)}

    def matrix(rows: Sequence[Session]) -> sparse.csr_matrix:
        cols = [[index[i] for i in set(s.items) if i in index] for s in rows]
        indptr = np.cumsum([0, *(len(c) for c in cols)])
        data = np.ones(int(indptr[-1]), dtype=np.float32)
        flat = np.fromiter((c for row in cols for c in row), dtype=np.int64, count=int(indptr[-1]))
        return sparse.csr_matrix((data, flat, indptr), shape=(len(rows), len(catalogue)))

    if not sessions or not reference:
        return np.zeros(len(sessions)), np.zeros(len(sessions), dtype=bool)
    a, b = matrix(sessions), matrix(reference)
    inter = (a @ b.T).toarray()
    size_a = np.asarray(a.sum(axis=1)).ravel()[:, None]
    size_b = np.asarray(b.sum(axis=1)).ravel()[None, :]
    union = np.maximum(size_a + size_b - inter, 1)
    jac = inter / union
    best = jac.max(axis=1)
    ref_lists = {tuple(s.items) for s in reference}
    exact = np.array([tuple(s.items) in ref_lists for s in sessions])
    return best, exact


def privacy(
    synthetic: Sequence[Session],
    train: Sequence[Session],
    held_out: Sequence[Session],
    *,
    catalogue: Sequence[str],
    seed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Copy rates of synthetic sessions against training and held-out sessions."""
    rng = np.random.default_rng([seed, 7])
    long_syn = [s for s in synthetic if len(s.items) >= MIN_COPY_ITEMS]
    n_ref = min(len(train), len(held_out))
    train_ref = [train[i] for i in rng.choice(len(train), size=n_ref, replace=False)]
    held_ref = [held_out[i] for i in rng.choice(len(held_out), size=n_ref, replace=False)]
    best_train, exact_train = _jaccard_max(long_syn, train_ref, catalogue)
    best_held, exact_held = _jaccard_max(long_syn, held_ref, catalogue)
    n = max(len(long_syn), 1)
    out = {
        "n_sessions_checked": len(long_syn),
        "min_items": MIN_COPY_ITEMS,
        "n_reference_sessions": n_ref,
        "near_copy_jaccard": NEAR_COPY_JACCARD,
        "exact_copy_rate_train": float(exact_train.sum() / n),
        "exact_copy_rate_held_out": float(exact_held.sum() / n),
        "near_copy_rate_train": float((best_train >= NEAR_COPY_JACCARD).sum() / n),
        "near_copy_rate_held_out": float((best_held >= NEAR_COPY_JACCARD).sum() / n),
        "mean_nearest_jaccard_train": float(best_train.mean()) if len(long_syn) else None,
        "mean_nearest_jaccard_held_out": float(best_held.mean()) if len(long_syn) else None,
    }
    return out, {"train": best_train, "held_out": best_held}


def evaluate(
    *,
    synthetic: Sequence[Session],
    train: Sequence[Session],
    held_out: Sequence[Session],
    next_item_cases: Sequence[tuple[list[str], str]],
    catalogue: Sequence[str],
    max_items: int,
    seed: int,
    recommender: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All quality figures as one JSON-able dict (plots' data under ``"_plots"``).

    ``recommender`` is :func:`components.generate.utility.recommender_utility`'s result, kept
    under ``"utility_recommender"`` (None: not measured).
    """
    rng = np.random.default_rng([seed, 11])
    n_ref = min(len(train), max(len(synthetic), 1))
    reference = [train[i] for i in rng.choice(len(train), size=n_ref, replace=False)]
    fid = fidelity(synthetic, held_out, catalogue=catalogue, max_items=max_items)
    fid_ref = fidelity(reference, held_out, catalogue=catalogue, max_items=max_items)
    priv, nearest = privacy(synthetic, train, held_out, catalogue=catalogue, seed=seed)
    report = {
        "reference": "customers held out of training (canaries.holdout_fraction)",
        "n_synthetic": len(synthetic),
        "n_train_sessions": len(train),
        "n_held_out_sessions": len(held_out),
        "fidelity": {"synthetic": fid, "real_reference": fid_ref},
        "utility": utility(synthetic, train, next_item_cases),
        "utility_recommender": recommender,
        "privacy": priv,
        "_plots": {
            "synthetic": synthetic,
            "held_out": held_out,
            "catalogue": list(catalogue),
            "nearest": nearest,
        },
    }
    logger.info(
        "quality: %d synthetic vs %d held-out sessions, item JSD %.3f, length JSD %.3f, "
        "HR@10 synthetic %.3f real %.3f",
        len(synthetic),
        len(held_out),
        fid["jsd_item_popularity"],
        fid["jsd_length"],
        report["utility"]["synthetic_only"]["hr@10"],
        report["utility"]["real_only"]["hr@10"],
    )
    return report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the step summary and the bench table carry."""
    fid = report["fidelity"]["synthetic"]
    util = report["utility"]
    priv = report["privacy"]
    rec = report.get("utility_recommender") or {}
    return {
        "jsd_item_popularity": _r(fid["jsd_item_popularity"]),
        "jsd_length": _r(fid["jsd_length"]),
        "jsd_country": _r(fid["jsd_country"]),
        "jsd_month": _r(fid["jsd_month"]),
        "jsd_price_band": _r(fid["jsd_price_band"]),
        "jsd_category": _r(fid.get("jsd_category")),
        "transition_recall": _r(fid["transition_recall"]),
        "transition_precision": _r(fid["transition_precision"]),
        "catalogue_item_share": _r(fid["catalogue_item_share"]),
        "catalogue_coverage": _r(fid["catalogue_coverage"]),
        "mean_length": _r(fid["mean_length"]),
        "held_out_mean_length": _r(fid["held_out_mean_length"]),
        "hr@10_synthetic_only": _r(util["synthetic_only"]["hr@10"]),
        "hr@10_real_only": _r(util["real_only"]["hr@10"]),
        "ndcg@10_synthetic_only": _r(util["synthetic_only"]["ndcg@10"]),
        "ndcg@10_real_only": _r(util["real_only"]["ndcg@10"]),
        # the pipeline's recommender trained on each source (None when not measured)
        "rec_hr@10_synthetic_only": _r(rec.get("synthetic_only", {}).get("hr@10")),
        "rec_hr@10_real_only": _r(rec.get("real_only", {}).get("hr@10")),
        "rec_hr@10_popularity": _r(rec.get("popularity", {}).get("hr@10")),
        "rec_ndcg@10_synthetic_only": _r(rec.get("synthetic_only", {}).get("ndcg@10")),
        "rec_ndcg@10_real_only": _r(rec.get("real_only", {}).get("ndcg@10")),
        "exact_copy_rate_train": _r(priv["exact_copy_rate_train"]),
        "exact_copy_rate_held_out": _r(priv["exact_copy_rate_held_out"]),
        "near_copy_rate_train": _r(priv["near_copy_rate_train"]),
        "near_copy_rate_held_out": _r(priv["near_copy_rate_held_out"]),
    }


def _r(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, digits)
    return value


# rendering


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of each figure of the report."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    syn, held = data["synthetic"], data["held_out"]
    figures = []

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, sessions in (("synthetic", syn), ("held-out real", held)):
        counts = np.array(sorted(Counter(i for s in sessions for i in s.items).values())[::-1])
        if len(counts):
            ax.loglog(np.arange(1, len(counts) + 1), counts / counts.sum(), label=label)
    ax.set_xlabel("item rank")
    ax.set_ylabel("share of purchases")
    ax.legend()
    figures.append(("Item popularity (rank-frequency)", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    top = max([len(s.items) for s in (*syn, *held)] or [1])
    bins = np.arange(1, top + 2) - 0.5
    for label, sessions in (("synthetic", syn), ("held-out real", held)):
        ax.hist([len(s.items) for s in sessions], bins=bins, density=True, alpha=0.5, label=label)
    ax.set_xlabel("items per session")
    ax.legend()
    figures.append(("Session length", _png(fig)))
    plt.close(fig)

    for title, attr in (("Country (top 8)", "country"), ("Month", "month")):
        held_c = Counter(getattr(s, attr) for s in held if getattr(s, attr) is not None)
        syn_c = Counter(getattr(s, attr) for s in syn if getattr(s, attr) is not None)
        if not held_c:
            continue
        keys = [k for k, _ in held_c.most_common(8)] if attr == "country" else list(range(1, 13))
        x = np.arange(len(keys))
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for offset, label, counter in ((-0.2, "synthetic", syn_c), (0.2, "held-out real", held_c)):
            total = max(sum(counter.values()), 1)
            ax.bar(x + offset, [counter.get(k, 0) / total for k in keys], 0.4, label=label)
        ax.set_xticks(x, [str(k)[:10] for k in keys], rotation=45 if attr == "country" else 0)
        ax.set_ylabel("share of sessions")
        ax.legend()
        figures.append((title, _png(fig)))
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(0, 1, 21)
    for label, values in (
        ("vs training sessions", data["nearest"]["train"]),
        ("vs held-out sessions", data["nearest"]["held_out"]),
    ):
        if len(values):
            ax.hist(values, bins=bins, alpha=0.5, label=label)
    ax.axvline(NEAR_COPY_JACCARD, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("Jaccard similarity to the nearest real session")
    ax.set_ylabel("synthetic sessions")
    ax.legend()
    figures.append(("Nearest real session (privacy)", _png(fig)))
    plt.close(fig)
    return figures


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """An escaped table: a name column, then one formatted cell per value."""

    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{cell(v)}</td>" for v in values)
        + "</tr>"
        for name, *values in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    """One self-contained HTML page of the report."""
    fid, ref = report["fidelity"]["synthetic"], report["fidelity"]["real_reference"]
    util, priv = report["utility"], report["privacy"]
    fid_rows = [
        (key, fid.get(key), ref.get(key))
        for key in (
            "jsd_item_popularity",
            "jsd_length",
            "jsd_country",
            "jsd_month",
            "jsd_price_band",
            "jsd_category",
            "transition_recall",
            "transition_precision",
            "catalogue_item_share",
            "catalogue_coverage",
            "mean_length",
            "held_out_mean_length",
        )
    ]
    util_rows = [
        ("HR@10", util["synthetic_only"]["hr@10"], util["real_only"]["hr@10"]),
        ("NDCG@10", util["synthetic_only"]["ndcg@10"], util["real_only"]["ndcg@10"]),
    ]
    priv_rows = [
        ("exact copy rate", priv["exact_copy_rate_train"], priv["exact_copy_rate_held_out"]),
        ("near copy rate", priv["near_copy_rate_train"], priv["near_copy_rate_held_out"]),
        (
            "mean nearest Jaccard",
            priv["mean_nearest_jaccard_train"],
            priv["mean_nearest_jaccard_held_out"],
        ),
    ]
    imgs = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, b in figures
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 10px;text-align:right}td:first-child{text-align:left}"
        "figure{display:inline-block;margin:8px}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Synthetic session quality"
        f"</title><style>{style}</style></head><body>"
        "<h1>Synthetic session quality</h1>"
        f"<p>{report['n_synthetic']} synthetic sessions against {report['n_held_out_sessions']} "
        "sessions of customers held out of training (never seen by the generator). The real "
        f"reference is a sample of {min(report['n_train_sessions'], report['n_synthetic'])} "
        "real training sessions scored the same way.</p>"
        "<h2>Fidelity</h2><p>Jensen-Shannon divergence in bits (0 is identical); transition "
        "recall and precision against the held-out sessions.</p>"
        + _table(fid_rows, ("figure", "synthetic", "real reference"))
        + f"<h2>Utility</h2><p>{html.escape(util['model'])}, scored on {util['n_cases']} "
        "held-out customers' last item.</p>"
        + _table(util_rows, ("metric", "trained on synthetic", "trained on real"))
        + _recommender_section(report.get("utility_recommender"))
        + f"<h2>Privacy</h2><p>Synthetic sessions of at least {priv['min_items']} items "
        f"({priv['n_sessions_checked']}) against {priv['n_reference_sessions']} training and "
        f"as many held-out sessions; near copy: Jaccard at least {priv['near_copy_jaccard']}."
        "</p>"
        + _table(priv_rows, ("figure", "vs training", "vs held-out"))
        + "<h2>Plots</h2>"
        + imgs
        + "</body></html>\n"
    )


def _recommender_section(rec: dict[str, Any] | None) -> str:
    """The train-on-synthetic table of the pipeline's recommender ('' when not measured)."""
    if not rec:
        return ""
    rows = [
        (
            metric,
            rec["synthetic_only"].get(key),
            rec["real_only"].get(key),
            rec["popularity"].get(key),
        )
        for metric, key in (("HR@10", "hr@10"), ("NDCG@10", "ndcg@10"))
    ]
    sizes = (
        rec["synthetic_only"].get("n_sequences"),
        rec["real_only"].get("n_sequences"),
    )
    return (
        f"<h3>With the pipeline's recommender</h3><p>{html.escape(rec['model'])}; "
        f"trained on {sizes[0]} synthetic and {sizes[1]} real sequences, scored on "
        f"{rec['n_cases']} held-out cases. Popularity is counted over the real training "
        "sessions. This is a budget check: without item content and with few epochs the "
        "recommender scores below the first-order model above even on real sessions, so read "
        "the columns against each other (does the synthetic column reach popularity? the real "
        "one?), not against the table above. The recommender's own benchmark "
        "(make bench-recommender) measures it fully trained.</p>"
        + _table(rows, ("metric", "trained on synthetic", "trained on real", "popularity"))
    )


def write(out_dir: str | Path, report: dict[str, Any]) -> None:
    """Write ``quality.json`` (without the plot data) and ``quality.html``."""
    out_dir = Path(out_dir)
    figures = _plots(report["_plots"])
    public = {k: v for k, v in report.items() if k != "_plots"}
    write_json(out_dir / QUALITY_JSON, public)
    (out_dir / QUALITY_HTML).write_text(render_html(public, figures), encoding="utf-8")
