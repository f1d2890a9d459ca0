"""bench.recommender: a tiny block end to end, the parallel table, and the verdict rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench import recommender as br

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "online-retail-sample.parquet"


@pytest.fixture(scope="module")
def retail_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 150 customers of the bundled Online Retail sample, as a raw parquet."""
    raw = pd.read_parquet(SAMPLE)
    ids = sorted(raw["CustomerID"].dropna().unique())[:150]
    path = tmp_path_factory.mktemp("retail") / "slice.parquet"
    raw[raw["CustomerID"].isin(ids)].to_parquet(path, index=False)
    return path


def _args(tmp: Path, source: Path, *extra: str) -> object:
    return br.parse_args(
        [
            "--datasets",
            "online_retail",
            "--source",
            f"online_retail={source}",
            "--cache",
            str(tmp / "cache"),
            "--out",
            str(tmp / "out.json"),
            "--gen-size",
            "tiny",
            "--gen-epochs",
            "1",
            "--gen-batch-size",
            "32",
            "--n-synthetic",
            "60",
            "--epochs",
            "1",
            *extra,
        ]
    )


def test_effect_verdict_rule_on_hand_made_numbers() -> None:
    helps = br.effect_verdict([0.03, 0.031, 0.029])
    assert helps["verdict"] == "helps"
    assert helps["mean"] == pytest.approx(0.03)
    assert helps["std"] == pytest.approx(0.001)
    assert br.effect_verdict([-0.03, -0.031, -0.029])["verdict"] == "hurts"
    # mean 0.01, sample std 0.01: |mean| is not above 2 x std.
    assert br.effect_verdict([0.0, 0.01, 0.02])["verdict"] == "no clear difference"
    assert br.effect_verdict([0.05, 0.06])["verdict"] == "too few seeds"
    # Exactly at the threshold is not enough: 2 x std must be strictly exceeded.
    at = br.effect_verdict([1.0, 2.0, 3.0])  # mean 2, std 1
    assert at["verdict"] == "no clear difference"


def test_synthetic_effect_pairs_by_seed() -> None:
    def row(values: dict[int, float]) -> dict:
        return {
            "per_seed": [
                {"seed": s, **{sl: {"hr@10": v, "ndcg@10": v / 2} for sl in br.SLICES}}
                for s, v in values.items()
            ]
        }

    block = {
        "real_only": {"4": row({0: 0.10, 1: 0.20, 2: 0.30})},
        # Listed in another order: seed 2 must meet seed 2.
        "real_plus_synthetic": {"4": row({2: 0.32, 0: 0.12, 1: 0.22})},
    }
    effect = br.synthetic_effect(block)["4"]["cold_users"]
    assert effect["hr@10"]["diffs"] == pytest.approx([0.02, 0.02, 0.02])
    assert effect["hr@10"]["verdict"] == "helps"
    assert effect["ndcg@10"]["mean"] == pytest.approx(0.01)


def test_step_time_splits_dp_rows(tmp_path: Path) -> None:
    def timed(ms: float) -> dict:
        return {"timing": {"step_ms": {"mean": ms}, "step_cpu_ms": {"mean": ms / 2}}}

    results = {
        "datasets": {
            "d": {
                "p": {
                    "real_only": {"none": timed(10.0), "4": timed(30.0)},
                    "synthetic_only": {"4": timed(20.0)},  # trained without DP
                    "real_plus_synthetic": {"4": timed(50.0)},
                }
            }
        }
    }
    t = br.step_time(results)["d"]
    assert t["non_dp_step_ms"] == pytest.approx(15.0)
    assert t["dp_step_ms"] == pytest.approx(40.0)
    assert t["dp_ratio_step"] == pytest.approx(40.0 / 15.0)
    assert t["dp_rows"] == 2


def test_plan_puts_subsampled_private_rows_in_their_own_block() -> None:
    args = br.parse_args(["--datasets", "amazon_beauty", "online_retail"])
    blocks, skipped = br.plan_blocks(args)
    names = {b.name: b for b in blocks}
    assert skipped == {"amazon_beauty/temporal": "no real timestamps in the data"}
    full = names["amazon_beauty/leave_last_out"]
    assert full.epsilons == ("none",)
    assert full.models == ("popularity", "cooc_knn", "real_only")
    sub = names["amazon_beauty_sub1500/leave_last_out"]
    assert sub.subsample == 1500 and sub.epsilons == ("none", "1", "4", "8")
    costs = [br.estimate_seconds(args, b) for b in blocks]
    assert costs == sorted(costs, reverse=True)


@pytest.mark.slow
def test_tiny_block_end_to_end(tmp_path: Path, retail_slice: Path) -> None:
    args = _args(tmp_path, retail_slice, "--epsilons", "4", "--seeds", "0")
    saved: list[dict] = []
    block = br.run_protocol(
        args, "online_retail", "leave_last_out", lambda b: saved.append(json.loads(json.dumps(b)))
    )
    assert block["n_test"] > 50
    assert set(block["slice_sizes"]) == {"all", "cold_users", "cold_items"}
    for model in br.MODELS:
        assert model in block, model
    dp_row = block["real_only"]["4"]
    assert 0.0 <= dp_row["all"]["hr@10"]["mean"] <= 1.0
    assert dp_row["all"]["hr@10"]["std"] == 0.0  # one seed
    assert dp_row["per_seed"][0]["seed"] == 0
    assert dp_row["used"]["seeds"] == [0] and dp_row["used"]["epochs"] == 1
    assert dp_row["used"]["dp"] is True
    assert dp_row["timing"]["epsilon"]["mean"] == pytest.approx(4.0, abs=0.1)
    syn_row = block["synthetic_only"]["4"]
    assert syn_row["used"]["dp"] is False  # touches no real record
    assert syn_row["timing"]["epsilon"] is None
    mixed = block["real_plus_synthetic"]["4"]
    assert mixed["mix"]["weight"] in args.weights
    assert mixed["used"]["generator"]["shared_by_seeds"] is True
    assert mixed["used"]["n_train_sequences"] > block["n_real_sequences"]
    effect = block["synthetic_effect"]["4"]["all"]["hr@10"]
    assert effect["n"] == 1 and effect["verdict"] == "too few seeds"
    expected = mixed["per_seed"][0]["all"]["hr@10"] - dp_row["per_seed"][0]["all"]["hr@10"]
    assert effect["mean"] == pytest.approx(expected)
    # Saved after the baselines, so a run cut short keeps them.
    assert "popularity" in saved[0] and "real_only" not in saved[0]
    assert saved[-1]["synthetic_effect"]["4"]["all"]["hr@10"]["verdict"] == "too few seeds"


@pytest.mark.slow
def test_parallel_table_merges_blocks_and_skips_missing_data(
    tmp_path: Path, retail_slice: Path
) -> None:
    args = _args(
        tmp_path,
        retail_slice,
        "--datasets",
        "online_retail",
        "diginetica",
        "--source",
        f"online_retail={retail_slice}",
        f"diginetica={tmp_path / 'absent'}",
        "--models",
        "popularity",
        "cooc_knn",
        "--epsilons",
        "none",
        "--jobs",
        "2",
        "--min-test-cases",
        "20",
    )
    written = br.run_table(args)
    on_disk = json.loads(Path(args.out).read_text())
    assert on_disk["complete"] is True
    assert set(on_disk["datasets"]["online_retail"]) == {"leave_last_out", "temporal"}
    for protocol in ("leave_last_out", "temporal"):
        pop = on_disk["datasets"]["online_retail"][protocol]["popularity"]["none"]
        assert 0.0 < pop["all"]["hr@10"]["mean"] <= 1.0
        assert on_disk["blocks"][f"online_retail/{protocol}"]["status"] == "done"
    assert "diginetica/leave_last_out" in on_disk["skipped"]
    assert "does not exist" in on_disk["skipped"]["diginetica/temporal"]
    assert on_disk["settings"]["jobs"] == 2
    # What the generator reads before the cutoff keeps ingest's other files (countries.json...).
    cache = Path(args.cache) / br.code_fingerprint() / "online_retail"
    kept = {p.name for p in (cache / "cleaned").iterdir()}
    assert "countries.json" in kept
    assert kept <= {p.name for p in (cache / "temporal" / "cleaned-before").iterdir()}
    assert written["datasets"] == on_disk["datasets"]
    table = br.format_table(on_disk)
    assert "online_retail" in table and "popularity" in table
    assert not math.isnan(pop["sampled"]["hr@10"]["mean"])


def _beauty_results(hr: float, ndcg: float) -> dict:
    sampled = {"hr@10": {"mean": hr, "std": 0.001}, "ndcg@10": {"mean": ndcg, "std": 0.002}}
    row = {"n_seeds": 3, "sampled": sampled}
    return {"datasets": {"amazon_beauty": {"leave_last_out": {"real_only": {"none": row}}}}}


def test_published_comparison_states_the_gap() -> None:
    above = br.published_comparison(_beauty_results(0.5061, 0.3425))["amazon_beauty"]
    assert above["published"] == {"hr@10": 0.4696, "ndcg@10": 0.3156}
    assert above["difference"]["hr@10"] == pytest.approx(0.0365)
    assert above["difference"]["ndcg@10"] == pytest.approx(0.0269)
    assert above["reaches_published"] is True
    # HR above, NDCG below: not reached
    mixed = br.published_comparison(_beauty_results(0.48, 0.30))["amazon_beauty"]
    assert mixed["reaches_published"] is False
    assert mixed["difference"]["ndcg@10"] == pytest.approx(-0.0156)
    # no Beauty row, no comparison
    assert br.published_comparison({"datasets": {}}) == {}
    line = br.format_published(_beauty_results(0.5061, 0.3425))
    assert "hr@10 0.5061+-0.0010 vs 0.4696 (+0.0365)" in line


def test_show_prints_an_existing_file_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results = _beauty_results(0.5061, 0.3425)
    results.update({"settings": {}, "wall_seconds": 12.0, "skipped": {}})
    out = tmp_path / "r.json"
    out.write_text(json.dumps(results))
    assert br.main(["--show", "--out", str(out), "--cache", str(tmp_path / "none")]) == 0
    printed = capsys.readouterr().out
    assert "vs 0.4696 (+0.0365)" in printed
    assert not (tmp_path / "none").exists()
    assert br.main(["--show", "--out", str(tmp_path / "missing.json")]) == 2


def test_an_empty_slice_says_so_rather_than_too_few_seeds() -> None:
    assert br.effect_verdict([])["verdict"] == "no test cases"
    assert br.effect_verdict([0.1])["verdict"] == "too few seeds"
