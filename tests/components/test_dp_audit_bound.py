"""The audit's statistics against hand-computed values: binomial tails, the one-run bound, ROC,
copy rates and the raw-id scan."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from components.common.errors import ConfigError
from components.dp_audit import bound, empirical

# --- binomial and the one-run bound -------------------------------------------------------------


def test_binomial_terms_hand_computed() -> None:
    assert bound.binomial_pmf(2, 4, 0.5) == pytest.approx(6 / 16)
    assert bound.binomial_pmf(0, 3, 0.2) == pytest.approx(0.8**3)
    # P[Bin(3, p) >= 2] = 3 p^2 (1 - p) + p^3
    p = 0.7
    assert bound.binomial_tail(2, 3, p) == pytest.approx(3 * p**2 * (1 - p) + p**3)
    assert bound.binomial_tail(0, 5, 0.3) == 1.0
    assert bound.binomial_tail(6, 5, 0.3) == 0.0


def test_p_value_pure_dp_is_the_binomial_tail() -> None:
    # Ten guesses, all right, under epsilon = 0 (coin flips): 2^-10.
    assert bound.p_value(m=10, r=10, v=10, epsilon=0.0, delta=0.0) == pytest.approx(1 / 1024)
    q = math.exp(1.0) / (1 + math.exp(1.0))
    assert bound.p_value(m=20, r=10, v=8, epsilon=1.0, delta=0.0) == pytest.approx(
        sum(math.comb(10, k) * q**k * (1 - q) ** (10 - k) for k in range(8, 11))
    )


def test_p_value_delta_term_hand_computed() -> None:
    # r = 2, v = 2 at epsilon 0: tail 1/4; P[1 <= Bin < 2] / 1 = 1/2, P[0 <= Bin < 2] / 2 = 3/8;
    # the max is 1/2, so p = 1/4 + 2 * m * delta * 1/2 = 0.25 + 2 * 10 * 0.01 * 0.5.
    assert bound.p_value(m=10, r=2, v=2, epsilon=0.0, delta=0.01) == pytest.approx(0.35)


def test_lower_bound_of_all_correct_guesses_hand_computed() -> None:
    # With delta 0 the bound solves q^10 = 0.05 for q = e^eps / (1 + e^eps).
    q = 0.05 ** (1 / 10)
    expected = math.log(q / (1 - q))
    got = bound.epsilon_lower_bound(m=10, r=10, v=10, delta=0.0, alpha=0.05)
    assert got == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(1.0517, abs=1e-3)
    # delta only ever lowers the bound.
    assert bound.epsilon_lower_bound(m=10, r=10, v=10, delta=1e-3, alpha=0.05) < got


def test_chance_guesses_give_no_bound() -> None:
    assert bound.epsilon_lower_bound(m=100, r=100, v=50, delta=1e-5) == 0.0
    assert bound.epsilon_lower_bound(m=100, r=0, v=0, delta=1e-5) == 0.0


@pytest.mark.parametrize(
    "counts", [{"m": 5, "r": 6, "v": 1}, {"m": 5, "r": 4, "v": 5}, {"m": 5, "r": 4, "v": -1}]
)
def test_impossible_counts_are_refused(counts: dict) -> None:
    with pytest.raises(ConfigError, match="0 <= v <= r <= m"):
        bound.p_value(**counts, epsilon=1.0, delta=0.0)


def test_guesses_take_the_top_and_bottom_scores() -> None:
    scores = [0.1, 0.9, 0.5, 0.3, 0.7]
    assert bound.guesses(scores, 2, 1) == [-1, 1, 0, 0, 1]
    with pytest.raises(ConfigError, match="k_in=3 and k_out=3"):
        bound.guesses(scores, 3, 3)


def test_perfect_separation_bound_is_bonferroni_corrected() -> None:
    m = 100
    included = [i % 2 == 0 for i in range(m)]
    scores = [1.0 if inc else 0.0 for inc in included]
    one = bound.audit_canaries(scores, included, delta=0.0, k_fractions=[0.5])
    # All 100 guesses right at alpha 0.05: q^100 = 0.05.
    q = 0.05 ** (1 / 100)
    assert one["epsilon_lower_bound"] == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert one["best"] == {
        "k_in": 50,
        "k_out": 50,
        "guesses": 100,
        "correct": 100,
        "epsilon_lb": one["epsilon_lower_bound"],
    }
    # Five tests: each runs at 0.01, so the same 100 right guesses prove less.
    five = bound.audit_canaries(scores, included, delta=0.0, k_fractions=[0.05, 0.1, 0.2, 0.3, 0.5])
    q5 = 0.01 ** (1 / 100)
    assert five["alpha_per_test"] == pytest.approx(0.01)
    assert five["epsilon_lower_bound"] == pytest.approx(math.log(q5 / (1 - q5)), abs=1e-6)


def test_scores_unrelated_to_inclusion_give_a_small_bound() -> None:
    included = [(i * 7919) % 13 < 6 for i in range(200)]
    scores = [float((i * 104729) % 97) for i in range(200)]
    result = bound.audit_canaries(scores, included, delta=1e-5, k_fractions=[0.1, 0.25, 0.5])
    assert result["epsilon_lower_bound"] < 0.5


# --- ROC ----------------------------------------------------------------------------------------


def test_roc_hand_computed() -> None:
    result = empirical.roc([3.0, 2.0, 0.5], [1.0, 0.0, 2.0])
    # Pairs (member > non-member): 3>all (3), 2>1,0 and tie with 2 (2.5), 0.5>0 (1) -> 6.5 / 9.
    assert result["auc"] == pytest.approx(6.5 / 9)
    assert result["n_members"] == 3 and result["n_non_members"] == 3
    # Threshold 3: TPR 1/3 at FPR 0, the best at FPR <= 0.1 %.
    assert result["tpr_at_fpr"]["0.001"] == pytest.approx(1 / 3)
    assert result["fpr"][0] == 0.0 and result["tpr"][-1] == 1.0 and result["fpr"][-1] == 1.0


def test_roc_of_identical_scores_is_chance() -> None:
    result = empirical.roc([1.0] * 4, [1.0] * 6)
    assert result["auc"] == pytest.approx(0.5)
    assert result["tpr_at_fpr"]["0.01"] == 0.0


# --- copies -------------------------------------------------------------------------------------


def test_copy_rate_exact_near_and_short_sessions() -> None:
    reference = [["a", "b", "c", "d", "e"], ["x", "y", "z"], ["p", "q"]]
    synthetic = [
        ["a", "b", "c", "d", "e"],  # exact
        ["e", "d", "c", "b", "a"],  # same set, other order: near (Jaccard 1)
        ["a", "b", "c", "d", "f"],  # 4 / 6 = 0.67: not near
        ["x", "y", "z", "w"],  # 3 / 4 = 0.75: not near at 0.8
        ["p", "q"],  # too short to count
    ]
    result = empirical.copy_rate(synthetic, reference, jaccard=0.8, min_items=3)
    assert result["n_synthetic"] == 4
    assert result["n_reference"] == 2
    assert result["n_exact"] == 1
    assert result["n_copies"] == 2
    assert result["rate"] == pytest.approx(0.5)
    assert result["exact_rate"] == pytest.approx(0.25)
    looser = empirical.copy_rate(synthetic, reference, jaccard=0.75, min_items=3)
    assert looser["n_copies"] == 3


# --- raw ids ------------------------------------------------------------------------------------


def _files(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text(
        json.dumps({"loss": 5.12346, "tokens": ["85123A", "12350"], "n": 3}), encoding="utf-8"
    )
    (root / "notes.txt").write_text("trained on 3 customers\n", encoding="utf-8")
    pd.DataFrame({"synthetic_id": ["syn-000001"], "items": [["85123A"]]}).to_parquet(
        root / "synthetic_sessions.parquet"
    )
    return root


def test_scan_finds_nothing_in_clean_files(tmp_path: Path) -> None:
    root = _files(tmp_path / "gen")
    # "12346" only appears inside the decimal 5.12346; "12350" is a stock code (excluded).
    result = empirical.scan_for_ids(
        {"gen": root}, ["12346", "12350", "17850"], exclude={"12350", "85123A"}
    )
    assert result["found"] == []
    assert result["n_ids_searched"] == 2
    assert result["n_ids_excluded"] == 1
    assert result["n_files"] == 3


@pytest.mark.parametrize("where", ["text", "json", "parquet"])
def test_scan_finds_a_planted_id(tmp_path: Path, where: str) -> None:
    root = _files(tmp_path / "gen")
    if where == "text":
        (root / "notes.txt").write_text("customer 17850 bought a lot.\n", encoding="utf-8")
    elif where == "json":
        (root / "config.json").write_text(json.dumps({"owner": "17850"}), encoding="utf-8")
    else:
        pd.DataFrame({"synthetic_id": ["17850"], "items": [["85123A"]]}).to_parquet(
            root / "synthetic_sessions.parquet"
        )
    result = empirical.scan_for_ids({"gen": root}, ["12346", "17850"], exclude={"85123A"})
    name = {"text": "notes.txt", "json": "config.json", "parquet": "synthetic_sessions.parquet"}
    assert [f["file"] for f in result["found"]] == [f"gen/{name[where]}"]
    assert result["found"][0]["n_ids"] == 1
    # The id itself is never part of the result.
    assert "17850" not in json.dumps(result)


def test_short_ids_match_only_whole_strings(tmp_path: Path) -> None:
    root = _files(tmp_path / "gen")
    (root / "short.json").write_text(json.dumps({"a": "7 items", "b": "42"}), encoding="utf-8")
    result = empirical.scan_for_ids({"gen": root}, ["7", "42"], min_length=4)
    assert [f["file"] for f in result["found"]] == ["gen/short.json"]
    assert result["found"][0]["n_ids"] == 1
    assert result["n_ids_short"] == 2


def test_auc_standard_error_hand_computed() -> None:
    # A = 0.5, 10 and 10 samples: Q1 = Q2 = 1/3, var = (0.25 + 2 * 9 * (1/3 - 1/4)) / 100.
    assert empirical.auc_standard_error(0.5, 10, 10) == pytest.approx(math.sqrt(0.0175))
    assert empirical.auc_standard_error(0.5, 1000, 1000) < empirical.auc_standard_error(0.5, 10, 10)


def test_paired_excess_p_value_hand_computed() -> None:
    flags_train = [True, True, True, False, False]
    flags_held = [False, False, True, False, True]
    # Discordant: two "train only", one "held-out only": P[Bin(3, 1/2) >= 2] = 1/2.
    assert empirical.paired_excess_p_value(flags_train, flags_held) == pytest.approx(0.5)
    assert empirical.paired_excess_p_value([True] * 6, [False] * 6) == pytest.approx(1 / 64)
    assert empirical.paired_excess_p_value([False] * 3, [False] * 3) == 1.0
