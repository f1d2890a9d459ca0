"""Tests of the generate step: vocabulary, contribution bounds, DP accounting, configs, quality."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from components.common import artifacts, canaries
from components.common.canaries import CanaryConfig
from components.common.errors import ConfigError, InputError, PrivacyError
from components.common.privacy import DPConfig, PrivacyRecord, compute_epsilon, default_delta
from components.generate import logic, quality
from components.generate.config import GenerateConfig
from components.generate.model import build_model, load_model
from components.generate.tokenizer import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    VOCAB_FILE,
    ItemVocab,
    Session,
    band_token,
    country_token,
    month_token,
)
from components.generate.train import IGNORE, SequenceLoss, pack_records, train_generator
from components.generate.utility import recommender_utility

N_CUSTOMERS = 240
N_ITEMS = 150
N_BANDS = 4
COUNTRIES = ("France", "Germany", "United Kingdom")
MAX_LENGTH = 16
LONG_CUSTOMER = "99999"
HOLDOUT = 0.1


def _stock_code(i: int) -> str:
    return f"{20000 + i}" if i % 3 else f"{20000 + i}A"


def write_cleaned(out: Path, *, n_customers: int = N_CUSTOMERS, seed: int = 0) -> Path:
    """A small cleaned/ dir: customers buy mostly from their country's third of the catalogue.

    Customer c's purchases start in month ``c % 12 + 1`` (one invoice of up to three items per
    day). One extra customer has a history far longer than ``MAX_LENGTH``.
    """
    rng = np.random.default_rng(seed)
    codes = [_stock_code(i) for i in range(N_ITEMS)]
    rows = []
    for c in range(n_customers):
        country_idx = c % len(COUNTRIES)
        pool = codes[country_idx * 50 : (country_idx + 1) * 50]
        n = int(rng.integers(1, 12))
        items = list(rng.choice(pool, size=n, replace=False))
        start = pd.Timestamp(2011, c % 12 + 1, 1, tz="UTC")
        ts = [start + pd.Timedelta(days=k // 3) for k in range(n)]
        rows.append((f"{12000 + c}", COUNTRIES[country_idx], items, ts))
    long_ts = list(pd.date_range("2011-01-01", periods=120, freq="D", tz="UTC"))
    rows.append((LONG_CUSTOMER, "France", codes[:120], long_ts))
    seq = pd.DataFrame(rows, columns=["customer_id", "country", "items", "ts"])
    out.mkdir(parents=True, exist_ok=True)
    seq.to_parquet(out / artifacts.SEQUENCES)
    items = pd.DataFrame(
        {
            "item_id": codes,
            "description": [f"ITEM {c}" for c in codes],
            "price_band": [i * N_BANDS // N_ITEMS for i in range(N_ITEMS)],
        }
    )
    items.to_parquet(out / artifacts.ITEMS)
    return out


def tiny_config(**over) -> GenerateConfig:
    base = {
        "size": "tiny",
        "max_length": MAX_LENGTH,
        "epochs": 2,
        "batch_size": 48,
        "learning_rate": 1e-2,
        "n_synthetic": 60,
        "dp": DPConfig(target_epsilon=4.0),
        # No canaries (the audit's tests cover them), but its held-out customers.
        "canaries": CanaryConfig(count=0, holdout_fraction=HOLDOUT),
    }
    base.update(over)
    return GenerateConfig(**base)


def n_members(cleaned: Path, seed: int) -> int:
    seq = pd.read_parquet(cleaned / artifacts.SEQUENCES)
    return int((~canaries.held_out(seq["customer_id"].tolist(), HOLDOUT, seed)).sum())


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cleaned(tmp_path_factory.mktemp("gen") / "cleaned")


@pytest.fixture(scope="module")
def dp_run(cleaned: Path) -> tuple[dict, Path, Path]:
    out = cleaned.parent / "dp"
    summary = logic.run(tiny_config(), cleaned, out / "generator_model", out / "synthetic", seed=3)
    return summary, out / "generator_model", out / "synthetic"


def conditioned_vocab(max_length: int = 32) -> ItemVocab:
    return ItemVocab.build(
        ["85123A", "71053", "22423"],
        ["United Kingdom", "France"],
        max_length,
        months=True,
        n_price_bands=3,
    )


# vocabulary


def test_vocab_file_follows_the_contract_and_round_trips(tmp_path: Path) -> None:
    vocab = ItemVocab.build(["85123A", "71053", "22423"], ["United Kingdom", "France"], 64)
    vocab.save(tmp_path)
    payload = json.loads((tmp_path / VOCAB_FILE).read_text())
    assert payload["tokens"][:4] == list(SPECIAL_TOKENS)
    assert (payload["pad_id"], payload["bos_id"], payload["eos_id"], payload["unk_id"]) == (
        0,
        1,
        2,
        3,
    )
    assert payload["countries"] == {"France": 4, "United Kingdom": 5}
    assert payload["tokens"][4:6] == ["<country:France>", "<country:United Kingdom>"]
    assert payload["first_item_id"] == 6
    assert payload["tokens"][6:] == ["22423", "71053", "85123A"]
    assert payload["max_length"] == 64
    assert "months" not in payload and "price_bands" not in payload  # an unconditioned vocab

    loaded = ItemVocab.load(tmp_path)
    assert loaded.tokens == vocab.tokens
    assert loaded.countries == vocab.countries
    ids = loaded.encode("France", ["85123A", "22423"])
    assert ids == [1, 4, 8, 6, 2]
    assert loaded.decode(ids) == ("France", ["85123A", "22423"])


def test_conditioned_vocab_follows_the_contract(tmp_path: Path) -> None:
    vocab = conditioned_vocab()
    vocab.save(tmp_path)
    payload = json.loads((tmp_path / VOCAB_FILE).read_text())
    assert payload["countries"] == {"France": 4, "United Kingdom": 5}
    assert payload["months"] == {str(m): 5 + m for m in range(1, 13)}
    assert payload["price_bands"] == {"0": 18, "1": 19, "2": 20}
    assert payload["tokens"][6] == "<month:1>" and payload["tokens"][17] == "<month:12>"
    assert payload["tokens"][18:21] == ["<band:0>", "<band:1>", "<band:2>"]
    assert payload["first_item_id"] == 21
    assert payload["tokens"][21:] == ["22423", "71053", "85123A"]

    loaded = ItemVocab.load(tmp_path)
    assert loaded.months == vocab.months and loaded.price_bands == vocab.price_bands
    assert loaded.frame_tokens == 5
    assert loaded.max_items == 27
    ids = loaded.encode("France", ["85123A", "22423"], month=12, price_band=1)
    assert ids == [1, 4, 17, 19, 23, 21, 2]
    assert loaded.decode_session(ids) == Session("France", ["85123A", "22423"], 12, 1)
    assert loaded.decode(ids) == ("France", ["85123A", "22423"])


def test_tokenizers_file_agrees_with_vocab(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    vocab = conditioned_vocab(16)
    vocab.save(tmp_path)
    tok = Tokenizer.from_file(str(tmp_path / TOKENIZER_FILE))
    text = f"<bos> {country_token('France')} {month_token(3)} {band_token(2)} 85123A 71053 <eos>"
    expected = vocab.encode("France", ["85123A", "71053"], month=3, price_band=2)
    assert tok.encode(text).ids == expected


def test_unknown_items_are_dropped_and_unknown_conditions_raise() -> None:
    vocab = conditioned_vocab(16)
    assert vocab.encode("France", ["NOPE", "85123A"], month=1, price_band=0) == [
        1,
        4,
        6,
        18,
        vocab.first_item_id + 2,
        2,
    ]
    with pytest.raises(InputError, match=r"'Spain'.*allowed: \['France', 'United Kingdom'\]"):
        vocab.encode("Spain", ["85123A"])
    with pytest.raises(InputError, match="month 13 is not one of 1..12"):
        vocab.encode("France", ["85123A"], month=13)
    with pytest.raises(InputError, match=r"price_band 3 is not one of 0..2"):
        vocab.encode("France", ["85123A"], price_band=3)
    plain = ItemVocab.build(["85123A"], ["France"], 16)
    with pytest.raises(InputError, match="no month conditioning"):
        plain.encode("France", ["85123A"], month=1)


def test_malformed_vocab_file_is_an_input_error(tmp_path: Path) -> None:
    vocab = conditioned_vocab(16)
    vocab.save(tmp_path)
    payload = json.loads((tmp_path / VOCAB_FILE).read_text())
    payload["first_item_id"] = 7
    (tmp_path / VOCAB_FILE).write_text(json.dumps(payload))
    with pytest.raises(InputError, match="first_item_id"):
        ItemVocab.load(tmp_path)
    payload["first_item_id"] = 21
    payload["months"]["12"] = 99
    (tmp_path / VOCAB_FILE).write_text(json.dumps(payload))
    with pytest.raises(InputError, match="months"):
        ItemVocab.load(tmp_path)


# contribution bounds and split


def _records(cleaned: Path, **kw) -> tuple[pd.DataFrame, ItemVocab, list]:
    sequences, catalogue = logic.read_sequences(cleaned, with_ts=True)
    bands = logic.read_price_bands(cleaned)
    train_part = logic.training_histories(sequences)
    vocab = ItemVocab.build(
        catalogue, train_part["country"], MAX_LENGTH, months=True, n_price_bands=N_BANDS
    )
    return train_part, vocab, logic.customer_records(train_part, vocab, bands=bands, **kw)


def test_history_split_gives_each_customer_one_bounded_sequence(cleaned: Path) -> None:
    train_part, vocab, records = _records(cleaned)
    assert len(records) == len(train_part)  # one record per customer, none split
    assert all(len(r) == 1 for r in records)
    assert max(len(r[0]) for r in records) == MAX_LENGTH
    long_row = int(np.flatnonzero(train_part["customer_id"] == LONG_CUSTOMER)[0])
    (long_seq,) = records[long_row]
    # 120 items, the last two held out; the most recent 11 training items are kept. The month
    # is that of the first kept item's purchase, the band the lower median of the kept items.
    history = [_stock_code(i) for i in range(120)][:-2]
    kept = history[-(MAX_LENGTH - 5) :]
    first_day = pd.Timestamp("2011-01-01") + pd.Timedelta(days=118 - len(kept))
    band = sorted(i * N_BANDS // N_ITEMS for i in range(118 - len(kept), 118))[(len(kept) - 1) // 2]
    assert vocab.decode_session(long_seq) == Session("France", kept, first_day.month, band)


def test_a_customer_with_500_sessions_contributes_at_most_the_cap() -> None:
    codes = [_stock_code(i) for i in range(N_ITEMS)]
    vocab = ItemVocab.build(codes, ["France"], MAX_LENGTH, months=True, n_price_bands=N_BANDS)
    bands = {c: i * N_BANDS // N_ITEMS for i, c in enumerate(codes)}
    # 500 invoices of 2 items each (codes repeat across invoices only in this synthetic frame).
    items = [codes[(2 * k + j) % N_ITEMS] for k in range(500) for j in range(2)]
    ts = [pd.Timestamp("2010-01-01", tz="UTC") + pd.Timedelta(hours=k) for k in range(500)]
    frame = pd.DataFrame(
        {
            "customer_id": ["heavy", "light"],
            "country": ["France", "France"],
            "items": [items, codes[:3]],
            "ts": [[t for t in ts for _ in range(2)], [ts[0]] * 3],
        }
    )
    records = logic.customer_records(
        frame, vocab, bands=bands, session_split="invoice", max_sequences=4
    )
    heavy, light = records
    assert len(heavy) == 4  # the cap, of 500 sessions
    assert [vocab.decode_session(s).items for s in heavy] == [
        items[2 * k : 2 * k + 2] for k in range(496, 500)
    ]
    assert len(light) == 1
    # A token cap drops the oldest sequences first, then cuts the oldest items of the last one.
    capped = logic.customer_records(
        frame, vocab, bands=bands, session_split="invoice", max_sequences=4, max_tokens=16
    )[0]
    assert sum(len(s) for s in capped) <= 16
    assert [vocab.decode_session(s).items for s in capped] == [items[996:998], items[998:1000]]
    tight = logic.customer_records(
        frame, vocab, bands=bands, session_split="invoice", max_sequences=500, max_tokens=6
    )[0]
    assert [vocab.decode_session(s).items for s in tight] == [items[-1:]]

    # Packed, the heavy customer is still one training row, and one DP unit.
    inputs, targets, positions = pack_records(records, MAX_LENGTH)
    assert inputs.shape[0] == 2
    assert int((targets[0] != IGNORE).sum()) == sum(len(s) - 1 for s in heavy)
    assert positions[0, : len(heavy[0]) - 1].tolist() == list(range(len(heavy[0]) - 1))
    assert positions[0, len(heavy[0]) - 1] == 0  # the next sequence restarts


def test_token_cap_below_one_item_is_a_config_error(cleaned: Path) -> None:
    with pytest.raises(ConfigError, match="max_tokens_per_customer=5 must be >= 6"):
        _records(cleaned, max_tokens=5)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_packed_sequences_are_modelled_as_if_alone(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(architecture, "tiny", 40, 16).eval()
    first, second = [1, 4, 20, 21, 22, 2], [1, 5, 30, 31, 2]
    inputs, targets, positions = pack_records([[first, second]], 16)
    packed = model(input_ids=inputs, position_ids=positions, use_cache=False).logits
    alone = [
        model(
            input_ids=torch.tensor([s[:-1]]),
            position_ids=torch.arange(len(s) - 1)[None],
            use_cache=False,
        ).logits[0]
        for s in (first, second)
    ]
    torch.testing.assert_close(packed[0, :5], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[0, 5:9], alone[1], atol=1e-5, rtol=1e-5)
    # The customer's loss is the mean over all its sequences' tokens.
    loss = SequenceLoss()(packed, targets)
    per_token = torch.cat(
        [
            torch.nn.functional.cross_entropy(a, torch.tensor(s[1:]), reduction="none")
            for a, s in zip(alone, (first, second), strict=True)
        ]
    )
    assert float(loss.detach()) == pytest.approx(float(per_token.detach().mean()), rel=1e-5)


def test_loss_weights_condition_and_eos_targets() -> None:
    # Targets of one row: a country (4), a month (9), two items (21, 22), eos (2), padding.
    targets = torch.tensor([[4, 9, 21, 22, 2, IGNORE]])
    logits = torch.randn(1, 6, 30)
    per_token = torch.nn.functional.cross_entropy(logits[0, :5], targets[0, :5], reduction="none")
    weights = torch.tensor([5.0, 5.0, 1.0, 1.0, 0.5])
    loss = SequenceLoss(first_item_id=20, condition_weight=5.0, eos_weight=0.5)(logits, targets)
    assert float(loss) == pytest.approx(float((per_token * weights).sum() / weights.sum()))
    plain = SequenceLoss()(logits, targets)
    assert float(plain) == pytest.approx(float(per_token.mean()))


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_dp_unit_is_the_customer_however_many_sequences(architecture: str) -> None:
    # 60 customers of 3 sequences each: 60 DP units and Poisson rows, never 180.
    records = [[[1, 4, 10 + (c + k) % 20, 2] for k in range(3)] for c in range(60)]
    model = build_model(architecture, "tiny", 30, 16)
    cfg = tiny_config(
        architecture=architecture,
        batch_size=4,
        epochs=1,
        max_sequences_per_customer=3,
        dp=DPConfig(target_epsilon=4.0, accountant="rdp"),  # RDP: a faster noise search
    )
    result = train_generator(model, records, cfg, seed=0)
    assert result.privacy.n_units == 60
    assert result.privacy.sample_rate == pytest.approx(4 / 60)
    assert result.steps == 15
    assert result.privacy.delta == pytest.approx(default_delta(60))


def test_held_out_items_never_reach_training_records(cleaned: Path) -> None:
    sequences, _ = logic.read_sequences(cleaned, with_ts=True)
    split = logic.leave_last_out(sequences)
    train_part, vocab, records = _records(cleaned)
    by_customer = dict(zip(train_part["customer_id"], records, strict=True))
    for row in split.eval.itertuples(index=False):
        (seq,) = by_customer[row.customer_id]
        items = vocab.decode_session(seq).items
        assert row.valid_item not in items
        assert row.test_item not in items


# the DP run


def test_privacy_record_is_complete_and_recomputable(
    dp_run: tuple[dict, Path, Path], cleaned: Path
) -> None:
    summary, model_dir, _ = dp_run
    record = PrivacyRecord.model_validate_json((model_dir / artifacts.PRIVACY).read_text())
    n = n_members(cleaned, seed=3)  # held-out customers are not trained on and not counted
    assert 200 < n < N_CUSTOMERS + 1
    steps_per_epoch = -(-n // 48)
    assert record.training == "generator"
    assert record.dp is True
    assert record.unit == "customer"
    assert record.n_units == n
    assert record.delta == pytest.approx(default_delta(n))
    assert record.delta < 1 / n
    assert record.noise_multiplier > 0.3
    assert record.sample_rate == pytest.approx(1 / steps_per_epoch)
    assert record.steps == 2 * steps_per_epoch
    assert record.max_grad_norm == 1.0
    assert record.accountant == "prv"
    assert record.target_epsilon == 4.0
    assert record.epsilon is not None and 3.0 < record.epsilon <= 4.0 + 1e-6
    again = compute_epsilon(
        noise_multiplier=record.noise_multiplier,
        sample_rate=record.sample_rate,
        steps=record.steps,
        delta=record.delta,
        accountant=record.accountant,
        n_units=record.n_units,
    )
    assert again == pytest.approx(record.epsilon, rel=0.02)
    assert summary["epsilon"] == record.epsilon
    assert summary["steps"] == record.steps
    assert summary["clipping"] == "ghost"
    assert summary["n_customers"] == n
    assert summary["n_held_out_customers"] == N_CUSTOMERS + 1 - n
    assert summary["conditioning"] == ["country", "month", "price_band"]


def test_model_dir_holds_model_vocab_and_step_record(dp_run: tuple[dict, Path, Path]) -> None:
    _, model_dir, synthetic_dir = dp_run
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is False
    vocab = ItemVocab.load(model_dir)
    assert config["vocab_size"] == len(vocab) == 4 + len(COUNTRIES) + 12 + N_BANDS + N_ITEMS
    assert vocab.max_length == MAX_LENGTH
    for out in (model_dir, synthetic_dir):
        step = json.loads((out / artifacts.STEP_RECORD).read_text())
        assert step["step"] == "generate"
        assert step["summary"]["n_synthetic"] == 60


def test_synthetic_sessions_hold_only_catalogue_codes(dp_run: tuple[dict, Path, Path]) -> None:
    _, _, synthetic_dir = dp_run
    frame = pd.read_parquet(synthetic_dir / artifacts.SYNTHETIC_SESSIONS)
    assert list(frame.columns) == [
        "synthetic_id",
        "country",
        "items",
        "month",
        "price_band",
        "category",
    ]
    assert len(frame) == 60
    assert frame["synthetic_id"].tolist()[:2] == ["syn-000001", "syn-000002"]
    assert frame["synthetic_id"].is_unique
    catalogue = {_stock_code(i) for i in range(N_ITEMS)}
    assert set(frame["country"]) <= set(COUNTRIES)
    assert set(frame["month"]) <= set(range(1, 13))
    assert set(frame["price_band"]) <= set(range(N_BANDS))
    for items in frame["items"]:
        items = list(items)
        assert 1 <= len(items) <= MAX_LENGTH - 5
        assert set(items) <= catalogue
        assert len(set(items)) == len(items)  # no repeats, like real sequences
        assert not any(i.startswith("<") for i in items)


def test_quality_report_is_one_self_contained_file(dp_run: tuple[dict, Path, Path]) -> None:
    summary, _, synthetic_dir = dp_run
    report = json.loads((synthetic_dir / quality.QUALITY_JSON).read_text())
    page = (synthetic_dir / quality.QUALITY_HTML).read_text()
    assert report["n_synthetic"] == 60
    assert report["n_held_out_sessions"] == summary["n_held_out_customers"]
    fid = report["fidelity"]["synthetic"]
    for key in ("jsd_item_popularity", "jsd_length", "jsd_country", "jsd_month"):
        assert 0.0 <= fid[key] <= 1.0
    assert fid["catalogue_item_share"] == 1.0
    util = report["utility"]
    assert util["n_cases"] > 0
    assert 0.0 <= util["synthetic_only"]["hr@10"] <= 1.0
    priv = report["privacy"]
    assert 0.0 <= priv["near_copy_rate_train"] <= 1.0
    assert summary["quality"]["jsd_length"] == pytest.approx(fid["jsd_length"], abs=1e-4)
    # Five embedded plots and no external resource.
    assert page.count('src="data:image/png;base64,') == 5
    assert not re.search(r'src="(?!data:)', page)
    assert "<h2>Utility</h2>" in page and "<h2>Privacy</h2>" in page
    # the train-on-synthetic check with the pipeline's recommender (default on)
    rec = report["utility_recommender"]
    assert rec["n_cases"] == util["n_cases"]
    assert rec["synthetic_only"]["n_sequences"] > 0 and rec["real_only"]["n_sequences"] > 0
    for source in ("synthetic_only", "real_only", "popularity"):
        assert 0.0 <= rec[source]["hr@10"] <= 1.0
    assert summary["quality"]["rec_hr@10_real_only"] == pytest.approx(
        rec["real_only"]["hr@10"], abs=1e-4
    )
    assert "With the pipeline's recommender" in page


def test_jsd_is_zero_for_equal_and_one_for_disjoint() -> None:
    assert quality.jsd([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0)
    assert quality.jsd([1, 0], [0, 5]) == pytest.approx(1.0)
    assert 0 < quality.jsd([3, 1], [1, 3]) < 1


def test_copy_rates_catch_a_copying_generator() -> None:
    catalogue = [str(i) for i in range(50)]
    train = [Session("F", [str(i), str(i + 1), str(i + 2), str(i + 3)]) for i in range(40)]
    held = [Session("F", [str(i + 3), str(i + 1), str(i + 9)]) for i in range(40)]
    copies = train[:10] + [Session("F", train[10].items[:3] + ["49"])]
    out, _ = quality.privacy(copies, train, held, catalogue=catalogue, seed=0)
    assert out["exact_copy_rate_train"] == pytest.approx(10 / 11)
    assert out["near_copy_rate_train"] == pytest.approx(10 / 11)  # 3/5 shared is below 0.8
    assert out["exact_copy_rate_held_out"] == 0.0


def test_utility_scores_the_next_item_model() -> None:
    sessions = [Session("F", ["a", "b", "c"])] * 5 + [Session("F", ["d", "e"])]
    cases = [(["x", "a"], "b"), (["d"], "e"), (["b"], "zzz")]
    out = quality.utility(sessions, sessions, cases)
    assert out["real_only"]["hr@10"] == pytest.approx(2 / 3)
    assert out["real_only"]["ndcg@10"] == pytest.approx(2 / 3)  # both hits at rank 1
    assert out["hr_ratio"] == pytest.approx(1.0)


def test_recommender_utility_rewards_sessions_that_keep_real_transitions() -> None:
    """Synthetic sessions that follow the real chains teach the recommender; shuffled ones not."""
    catalogue = [f"i{n:02d}" for n in range(30)]
    # Real behaviour: ten chains of three items, a -> b -> c.
    chains = [catalogue[3 * c : 3 * c + 3] for c in range(10)]
    train = [Session("F", list(chain)) for chain in chains for _ in range(8)]
    cases = [([chain[0], chain[1]], chain[2]) for chain in chains] + [
        ([chain[0]], chain[1]) for chain in chains
    ]
    faithful = [Session("F", list(chain)) for chain in chains for _ in range(8)]
    rng = np.random.default_rng(0)
    shuffled = [Session("F", list(rng.choice(catalogue, size=3, replace=False))) for _ in range(80)]
    good = recommender_utility(
        faithful, train, cases, catalogue=catalogue, bands=None, epochs=30, seed=0
    )
    bad = recommender_utility(
        shuffled, train, cases, catalogue=catalogue, bands=None, epochs=30, seed=0
    )
    assert good["n_cases"] == 20
    assert good["synthetic_only"]["hr@10"] >= 0.9
    assert good["real_only"]["hr@10"] >= 0.9
    assert bad["synthetic_only"]["ndcg@10"] < good["synthetic_only"]["ndcg@10"] - 0.3
    # popularity is flat here (every item bought 8 times): a third of the catalogue fits in 10
    assert good["popularity"]["hr@10"] < 0.6


def test_non_dp_training_records_no_guarantee(cleaned: Path, tmp_path: Path) -> None:
    cfg = tiny_config(dp=DPConfig(enabled=False), epochs=1, n_synthetic=5, quality_report=False)
    summary = logic.run(cfg, cleaned, tmp_path / "m", tmp_path / "s", seed=0)
    record = PrivacyRecord.model_validate_json((tmp_path / "m" / artifacts.PRIVACY).read_text())
    assert record.dp is False
    assert record.epsilon is None
    assert record.noise_multiplier == 0.0
    assert record.max_grad_norm is None
    assert record.steps == -(-n_members(cleaned, 0) // 48)
    assert summary["dp"] is False
    assert summary["epsilon"] is None
    assert summary["clipping"] is None
    assert summary["quality"] is None
    assert not (tmp_path / "s" / quality.QUALITY_HTML).exists()
    assert len(pd.read_parquet(tmp_path / "s" / artifacts.SYNTHETIC_SESSIONS)) == 5


def test_non_dp_training_learns_the_country_structure(cleaned: Path, tmp_path: Path) -> None:
    cfg = tiny_config(dp=DPConfig(enabled=False), epochs=8, n_synthetic=90, learning_rate=2e-2)
    summary = logic.run(cfg, cleaned, tmp_path / "m", tmp_path / "s", seed=0)
    assert summary["epoch_losses"][-1] < summary["epoch_losses"][0] - 0.5
    frame = pd.read_parquet(tmp_path / "s" / artifacts.SYNTHETIC_SESSIONS)
    codes = [_stock_code(i) for i in range(N_ITEMS)]
    in_pool = total = 0
    for country, items in zip(frame["country"], frame["items"], strict=True):
        pool = set(codes[COUNTRIES.index(country) * 50 :][:50])
        in_pool += sum(i in pool for i in items)
        total += len(items)
    # A third would be chance; the long customer's France history blurs France a little.
    assert in_pool / total > 0.6
    # Every country is sampled (no collapse onto the largest), roughly a third each.
    shares = frame["country"].value_counts(normalize=True)
    assert set(shares.index) == set(COUNTRIES)
    assert shares.max() < 0.6

    # Continue from that checkpoint: its vocabulary is reused and training goes on from its loss.
    again = logic.run(
        tiny_config(
            dp=DPConfig(enabled=False),
            epochs=1,
            n_synthetic=5,
            quality_report=False,
            pretrained_path=str(tmp_path / "m"),
        ),
        cleaned,
        tmp_path / "m2",
        tmp_path / "s2",
        seed=0,
    )
    assert again["pretrained_path"] == str(tmp_path / "m")
    assert again["epoch_losses"][0] < summary["epoch_losses"][0] - 0.5
    assert ItemVocab.load(tmp_path / "m2").tokens == ItemVocab.load(tmp_path / "m").tokens


def test_pretrained_checkpoint_without_vocab_is_resized(cleaned: Path, tmp_path: Path) -> None:
    build_model("llama", "tiny", 50, MAX_LENGTH).save_pretrained(tmp_path / "ckpt")
    cfg = tiny_config(
        dp=DPConfig(enabled=False),
        epochs=1,
        n_synthetic=3,
        quality_report=False,
        pretrained_path=str(tmp_path / "ckpt"),
    )
    logic.run(cfg, cleaned, tmp_path / "m", tmp_path / "s", seed=0)
    assert load_model(tmp_path / "m").config.vocab_size == len(ItemVocab.load(tmp_path / "m"))


def test_tied_pretrained_checkpoint_with_ghost_clipping_is_a_config_error(
    cleaned: Path, tmp_path: Path
) -> None:
    model = build_model("llama", "tiny", 50, MAX_LENGTH)
    model.config.tie_word_embeddings = True
    model.save_pretrained(tmp_path / "ckpt")
    cfg = tiny_config(pretrained_path=str(tmp_path / "ckpt"))
    with pytest.raises(ConfigError, match="ties its input and output embeddings"):
        logic.run(cfg, cleaned, tmp_path / "m", tmp_path / "s", seed=0)
    assert not (tmp_path / "m").exists()


# bad input and config


def test_default_target_epsilon_is_8() -> None:
    assert GenerateConfig().dp.target_epsilon == 8.0


@pytest.mark.parametrize(
    "bad",
    [
        {"size": "huge"},
        {"architecture": "bert"},
        {"max_length": 4},
        {"epochs": 0},
        {"batch_size": 0},
        {"temperature": 0.0},
        {"condition_temperature": 0.0},
        {"condition_loss_weight": 0.0},
        {"eos_loss_weight": -1.0},
        {"top_k": 0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"n_synthetic": -1},
        {"clipping": "magic"},
        {"num_threads": 0},
        {"max_sequences_per_customer": 0},
        {"max_tokens_per_customer": 2},
        {"session_split": "day"},
        {"pretrained_path": ""},
        {"unknown_key": 1},
        {"dp": {"target_epsilon": -1.0}},
    ],
)
def test_bad_config_values_raise(bad: dict) -> None:
    with pytest.raises(ValidationError):
        GenerateConfig(**bad)


def test_batch_larger_than_customers_is_a_config_error(cleaned: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size=5000"):
        logic.run(tiny_config(batch_size=5000), cleaned, tmp_path / "m", tmp_path / "s", seed=0)
    assert not (tmp_path / "m").exists()
    assert not (tmp_path / "s").exists()


def test_delta_not_below_one_over_customers_is_a_privacy_error(
    cleaned: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(dp=DPConfig(delta=0.01))
    with pytest.raises(PrivacyError, match="delta=0.01"):
        logic.run(cfg, cleaned, tmp_path / "m", tmp_path / "s", seed=0)


def test_missing_sequences_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="sequences.parquet"):
        logic.run(tiny_config(), tmp_path, tmp_path / "m", tmp_path / "s", seed=0)


def test_missing_price_band_is_an_input_error(tmp_path: Path) -> None:
    cleaned = write_cleaned(tmp_path / "cleaned", n_customers=10)
    items = pd.read_parquet(cleaned / artifacts.ITEMS).drop(columns=["price_band"])
    items.to_parquet(cleaned / artifacts.ITEMS)
    with pytest.raises(InputError, match="price_band"):
        logic.run(tiny_config(batch_size=4), cleaned, tmp_path / "m", tmp_path / "s", seed=0)


def test_duplicate_customer_is_an_input_error(tmp_path: Path) -> None:
    cleaned = write_cleaned(tmp_path / "cleaned", n_customers=10)
    seq = pd.read_parquet(cleaned / artifacts.SEQUENCES)
    pd.concat([seq, seq.iloc[:1]]).to_parquet(cleaned / artifacts.SEQUENCES)
    with pytest.raises(InputError, match="customer_id '12000'"):
        logic.run(tiny_config(batch_size=4), cleaned, tmp_path / "m", tmp_path / "s", seed=0)


@pytest.mark.parametrize("clipping", ["ghost", "hooks"])
def test_empty_poisson_batches_still_take_their_noise_step(tmp_path: Path, clipping: str) -> None:
    # Expected batch 1 of ~20 customers: about a third of the Poisson batches draw nobody. Each
    # must still be a (noise-only) step that the accountant counts.
    small = write_cleaned(tmp_path / "cleaned", n_customers=20)
    cfg = tiny_config(batch_size=1, epochs=1, n_synthetic=2, clipping=clipping)
    summary = logic.run(cfg, small, tmp_path / "m", tmp_path / "s", seed=0)
    record = PrivacyRecord.model_validate_json((tmp_path / "m" / artifacts.PRIVACY).read_text())
    n = n_members(small, 0)
    assert record.steps == n
    assert record.sample_rate == pytest.approx(1 / n)
    assert summary["steps"] == n
