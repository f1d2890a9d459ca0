"""The attacks and scans of the empirical audit: membership ROC, synthetic copies, raw ids.

Pure functions over scores, item lists and files; :mod:`components.dp_audit.logic` feeds them the
models' outputs and turns their figures into checks.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LOW_FPRS = (0.001, 0.01)
# Id-like tokens: letters, digits and the separators ids use. '.' is part of a token so that the
# digits of a decimal number ("5.12346") never read as an id ("12346").
_TOKEN = re.compile(r"[A-Za-z0-9_.\-]+")


def roc(member_scores: Sequence[float], non_member_scores: Sequence[float]) -> dict[str, Any]:
    """ROC of the threshold attack "member when the score is high".

    Returns:
        auc (ties count one half), the curve (fpr, tpr at every distinct threshold), TPR at each
        FPR of :data:`LOW_FPRS` (the best TPR whose FPR does not exceed it), and the sample sizes.
    """
    pos = np.asarray(member_scores, dtype=np.float64)
    neg = np.asarray(non_member_scores, dtype=np.float64)
    n_pos, n_neg = len(pos), len(neg)
    result: dict[str, Any] = {"n_members": n_pos, "n_non_members": n_neg}
    if n_pos == 0 or n_neg == 0:
        result.update(auc=None, fpr=[], tpr=[], tpr_at_fpr={str(f): None for f in LOW_FPRS})
        return result
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(n_pos), np.zeros(n_neg)])
    # Mann-Whitney U from average ranks: ties get half credit.
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    auc = (ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)

    desc = np.argsort(-scores, kind="mergesort")
    s, y = scores[desc], labels[desc]
    tps, fps = np.cumsum(y), np.cumsum(1 - y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct threshold
    tpr = np.r_[0.0, tps[last] / n_pos]
    fpr = np.r_[0.0, fps[last] / n_neg]
    at = {}
    for target in LOW_FPRS:
        ok = fpr <= target + 1e-12
        at[str(target)] = float(tpr[ok].max())
    result.update(auc=float(auc), fpr=fpr.tolist(), tpr=tpr.tolist(), tpr_at_fpr=at)
    return result


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC estimate (Hanley and McNeil, 1982).

    Args:
        auc: the estimated AUC.
        n_pos: positive samples (members).
        n_neg: negative samples (non-members).
    """
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1.0 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )
    return float(np.sqrt(max(var, 0.0)))


def _jaccard_best(query: set[str], index: dict[str, list[int]], sizes: list[int]) -> float:
    overlap: dict[int, int] = defaultdict(int)
    for item in query:
        for ref in index.get(item, ()):
            overlap[ref] += 1
    best = 0.0
    for ref, inter in overlap.items():
        best = max(best, inter / (len(query) + sizes[ref] - inter))
    return best


def copy_rate(
    synthetic: Sequence[Sequence[str]],
    reference: Sequence[Sequence[str]],
    *,
    jaccard: float,
    min_items: int,
) -> dict[str, Any]:
    """Share of synthetic sessions that copy a reference session exactly or nearly.

    Exact: the same items in the same order. Near: the item sets have Jaccard similarity at least
    ``jaccard``. Sessions (synthetic or reference) with fewer than ``min_items`` items are left out:
    a one- or two-item basket matches a popular one by chance, which says nothing about copying.

    Returns:
        rate (exact or near), exact_rate, counts and sizes, and ``flags``: per counted synthetic
        session (those with ``min_items`` or more, in order) whether it copies one.
    """
    refs = [list(r) for r in reference if len(r) >= min_items]
    syn = [list(s) for s in synthetic if len(s) >= min_items]
    exact_set = {tuple(r) for r in refs}
    index: dict[str, list[int]] = defaultdict(list)
    sizes = []
    for ref_id, ref in enumerate(refs):
        items = set(ref)
        sizes.append(len(items))
        for item in items:
            index[item].append(ref_id)
    n_exact = n_any = 0
    flags = []
    for session in syn:
        is_exact = tuple(session) in exact_set
        near = is_exact or _jaccard_best(set(session), index, sizes) >= jaccard
        n_exact += is_exact
        n_any += near
        flags.append(bool(near))
    n = len(syn)
    return {
        "flags": flags,
        "rate": n_any / n if n else None,
        "exact_rate": n_exact / n if n else None,
        "n_copies": n_any,
        "n_exact": n_exact,
        "n_synthetic": n,
        "n_reference": len(refs),
    }


def paired_excess_p_value(flags_a: Sequence[bool], flags_b: Sequence[bool]) -> float:
    """One-sided exact McNemar p-value that ``a`` flags more sessions than ``b``.

    Both lists flag the same synthetic sessions against two reference sets of the same size. If
    the generator copies neither, the two sets are exchangeable and a session that copies exactly
    one of them is equally likely to copy either: the count of "a only" among the discordant
    sessions is Binomial(discordant, 1/2).
    """
    from components.dp_audit.bound import binomial_tail

    a_only = sum(1 for a, b in zip(flags_a, flags_b, strict=True) if a and not b)
    b_only = sum(1 for a, b in zip(flags_a, flags_b, strict=True) if b and not a)
    return binomial_tail(a_only, a_only + b_only, 0.5)


def _tokens(text: str) -> set[str]:
    return {t.rstrip(".") for t in _TOKEN.findall(text)}


def _strings_of_json(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield str(key)
            yield from _strings_of_json(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings_of_json(inner)


def _parquet_strings(path: Path) -> Iterable[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for column in table.columns:
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        while pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            array = array.flatten()
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            yield from (v for v in array.to_pylist() if v is not None)
    yield from table.schema.names


def _safetensors_header(path: Path) -> str:
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return handle.read(min(size, 100_000_000)).decode("utf-8", errors="replace")


def _printable_runs(data: bytes) -> str:
    return "\n".join(m.decode("ascii") for m in re.findall(rb"[\x20-\x7e]{4,}", data))


def file_strings(path: Path) -> tuple[list[str], str]:
    """The strings of one file that could carry an id, and how they were read.

    JSON: every key and string value. Parquet: every string cell (lists flattened) and the column
    names. safetensors: the header (tensor names and metadata); the tensor payload is numbers and
    is not read as text. Other UTF-8 files: the text. Other binaries: runs of 4+ printable ASCII
    characters (what ``strings`` shows).
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return list(_parquet_strings(path)), "parquet string cells"
    if suffix == ".safetensors":
        return [_safetensors_header(path)], "safetensors header"
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [_printable_runs(data)], "printable runs"
    if suffix == ".json":
        try:
            return list(_strings_of_json(json.loads(text))), "json strings"
        except json.JSONDecodeError:
            pass
    return [text], "text"


def scan_for_ids(
    directories: dict[str, str | os.PathLike[str]],
    customer_ids: Iterable[str],
    *,
    exclude: Iterable[str] = (),
    min_length: int = 4,
) -> dict[str, Any]:
    """Look for raw customer ids in every file under ``directories``.

    An id counts when it appears as a whole token of a string (see :func:`file_strings`). Ids that
    are also a catalogue stock code, country or vocabulary token (``exclude``) cannot be told apart
    from those legitimate strings and are not searched for; ids shorter than ``min_length`` match
    only a whole string, never a token inside one (a two-digit id would match every number).

    Returns:
        ``found``: one {"file", "read_as", "n_ids"} per file with a hit (counts only: the ids
        themselves are never written), and the numbers of files, ids searched, excluded and short.
    """
    excluded = {str(e) for e in exclude}
    all_ids = {str(c) for c in customer_ids if c is not None}
    ids = all_ids - excluded
    long_ids = {c for c in ids if len(c) >= min_length}
    short_ids = ids - long_ids
    found = []
    n_files = 0
    for label, directory in directories.items():
        root = Path(directory)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            n_files += 1
            strings, how = file_strings(path)
            hits = set()
            for text in strings:
                if text in ids:
                    hits.add(text)
                hits |= _tokens(text) & long_ids
            if hits:
                # The ids themselves stay out of the audit's output and logs.
                found.append(
                    {
                        "file": f"{label}/{path.relative_to(root)}",
                        "read_as": how,
                        "n_ids": len(hits),
                    }
                )
    return {
        "found": found,
        "n_files": n_files,
        "n_ids_searched": len(ids),
        "n_ids_excluded": len(all_ids & excluded),
        "n_ids_short": len(short_ids),
    }
