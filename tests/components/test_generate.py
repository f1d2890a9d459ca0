"""Tests of the generate step: vocabulary, contribution bound, DP accounting, sampling, configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from components.common import artifacts
from components.common.errors import ConfigError, InputError, PrivacyError
from components.common.privacy import DPConfig, PrivacyRecord, compute_epsilon, default_delta
from components.common.splits import leave_last_out
from components.generate import logic
from components.generate.config import GenerateConfig
from components.generate.model import load_model
from components.generate.sample import sample_sequences
from components.generate.tokenizer import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    VOCAB_FILE,
    ItemVocab,
    country_token,
)

N_CUSTOMERS = 240
N_ITEMS = 150
COUNTRIES = ("France", "Germany", "United Kingdom")
MAX_LENGTH = 16
LONG_CUSTOMER = "99999"


def _stock_code(i: int) -> str:
    return f"{20000 + i}" if i % 3 else f"{20000 + i}A"


def write_cleaned(out: Path, *, n_customers: int = N_CUSTOMERS, seed: int = 0) -> Path:
    """A small cleaned/ dir: customers buy mostly from their country's third of the catalogue.

    One extra customer has a history far longer than ``MAX_LENGTH``.
    """
    rng = np.random.default_rng(seed)
    codes = [_stock_code(i) for i in range(N_ITEMS)]
    rows = []
    for c in range(n_customers):
        country_idx = c % len(COUNTRIES)
        pool = codes[country_idx * 50 : (country_idx + 1) * 50]
        n = int(rng.integers(1, 12))
        items = list(rng.choice(pool, size=n, replace=False))
        rows.append((f"{12000 + c}", COUNTRIES[country_idx], items))
    rows.append((LONG_CUSTOMER, "France", codes[:120]))
    seq = pd.DataFrame(rows, columns=["customer_id", "country", "items"])
    seq["ts"] = [
        list(pd.date_range("2011-01-01", periods=len(i), freq="h", tz="UTC")) for i in seq["items"]
    ]
    out.mkdir(parents=True, exist_ok=True)
    seq.to_parquet(out / artifacts.SEQUENCES)
    items = pd.DataFrame({"item_id": codes, "description": [f"ITEM {c}" for c in codes]})
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
    }
    base.update(over)
    return GenerateConfig(**base)


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cleaned(tmp_path_factory.mktemp("gen") / "cleaned")


@pytest.fixture(scope="module")
def dp_run(cleaned: Path) -> tuple[dict, Path, Path]:
    out = cleaned.parent / "dp"
    summary = logic.run(tiny_config(), cleaned, out / "generator_model", out / "synthetic", seed=3)
    return summary, out / "generator_model", out / "synthetic"


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

    loaded = ItemVocab.load(tmp_path)
    assert loaded.tokens == vocab.tokens
    assert loaded.countries == vocab.countries
    ids = loaded.encode("France", ["85123A", "22423"])
    assert ids == [1, 4, 8, 6, 2]
    assert loaded.decode(ids) == ("France", ["85123A", "22423"])


def test_tokenizers_file_agrees_with_vocab(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    vocab = ItemVocab.build(["85123A", "71053"], ["France"], 16)
    vocab.save(tmp_path)
    tok = Tokenizer.from_file(str(tmp_path / TOKENIZER_FILE))
    text = f"<bos> {country_token('France')} 85123A 71053 <eos>"
    assert tok.encode(text).ids == vocab.encode("France", ["85123A", "71053"])


def test_unknown_items_are_dropped_and_unknown_country_raises() -> None:
    vocab = ItemVocab.build(["85123A"], ["France"], 16)
    assert vocab.encode("France", ["NOPE", "85123A"]) == [1, 4, vocab.first_item_id, 2]
    with pytest.raises(InputError, match="'Spain'"):
        vocab.encode("Spain", ["85123A"])


def test_malformed_vocab_file_is_an_input_error(tmp_path: Path) -> None:
    vocab = ItemVocab.build(["85123A"], ["France"], 16)
    vocab.save(tmp_path)
    payload = json.loads((tmp_path / VOCAB_FILE).read_text())
    payload["first_item_id"] = 7
    (tmp_path / VOCAB_FILE).write_text(json.dumps(payload))
    with pytest.raises(InputError, match="first_item_id"):
        ItemVocab.load(tmp_path)


# contribution bound and split


def test_each_customer_contributes_one_bounded_record(cleaned: Path) -> None:
    sequences, catalogue = logic.read_sequences(cleaned)
    train_part = leave_last_out(sequences).train
    vocab = ItemVocab.build(catalogue, train_part["country"], MAX_LENGTH)
    records = logic.customer_records(train_part, vocab)

    assert len(records) == len(sequences)  # one record per customer, none split
    assert max(len(r) for r in records) == MAX_LENGTH
    long_row = int(np.flatnonzero(train_part["customer_id"] == LONG_CUSTOMER)[0])
    long_record = records[long_row]
    # 120 items, the last two held out; the most recent 13 training items are kept.
    history = [_stock_code(i) for i in range(120)]
    assert len(long_record) == MAX_LENGTH
    assert vocab.decode(long_record) == ("France", history[:-2][-(MAX_LENGTH - 3) :])


def test_held_out_items_never_reach_training_records(cleaned: Path) -> None:
    sequences, catalogue = logic.read_sequences(cleaned)
    split = leave_last_out(sequences)
    vocab = ItemVocab.build(catalogue, split.train["country"], MAX_LENGTH)
    records = logic.customer_records(split.train, vocab)
    by_customer = dict(zip(split.train["customer_id"], records, strict=True))
    for row in split.eval.itertuples(index=False):
        _, items = vocab.decode(by_customer[row.customer_id])
        assert row.valid_item not in items
        assert row.test_item not in items


# the DP run


def test_privacy_record_is_complete_and_recomputable(dp_run: tuple[dict, Path, Path]) -> None:
    summary, model_dir, _ = dp_run
    record = PrivacyRecord.model_validate_json((model_dir / artifacts.PRIVACY).read_text())
    n = N_CUSTOMERS + 1
    assert record.training == "generator"
    assert record.dp is True
    assert record.unit == "customer"
    assert record.n_units == n
    assert record.delta == pytest.approx(default_delta(n))
    assert record.noise_multiplier > 0.3
    # Poisson sampling: 1 / number of batches of the expected size, len(loader) = ceil(n / 48).
    assert record.sample_rate == pytest.approx(1 / 6)
    assert record.steps == 2 * 6
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


def test_model_dir_holds_model_vocab_and_step_record(dp_run: tuple[dict, Path, Path]) -> None:
    _, model_dir, synthetic_dir = dp_run
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is False
    vocab = ItemVocab.load(model_dir)
    assert config["vocab_size"] == len(vocab) == 4 + len(COUNTRIES) + N_ITEMS
    assert vocab.max_length == MAX_LENGTH
    for out in (model_dir, synthetic_dir):
        step = json.loads((out / artifacts.STEP_RECORD).read_text())
        assert step["step"] == "generate"
        assert step["summary"]["n_synthetic"] == 60


def test_synthetic_sessions_hold_only_catalogue_codes(dp_run: tuple[dict, Path, Path]) -> None:
    _, _, synthetic_dir = dp_run
    frame = pd.read_parquet(synthetic_dir / artifacts.SYNTHETIC_SESSIONS)
    assert list(frame.columns) == ["synthetic_id", "country", "items"]
    assert len(frame) == 60
    assert frame["synthetic_id"].tolist()[:2] == ["syn-000001", "syn-000002"]
    assert frame["synthetic_id"].is_unique
    catalogue = {_stock_code(i) for i in range(N_ITEMS)}
    assert set(frame["country"]) <= set(COUNTRIES)
    for items in frame["items"]:
        items = list(items)
        assert 1 <= len(items) <= MAX_LENGTH - 3
        assert set(items) <= catalogue
        assert len(set(items)) == len(items)  # no repeats, like real sequences
        assert not any(i.startswith("<") for i in items)


def test_sampling_is_seeded(dp_run: tuple[dict, Path, Path]) -> None:
    _, model_dir, _ = dp_run
    model, vocab = load_model(model_dir), ItemVocab.load(model_dir)
    first = sample_sequences(model, vocab, 25, seed=11, batch_size=10)
    second = sample_sequences(model, vocab, 25, seed=11, batch_size=10)
    other = sample_sequences(model, vocab, 25, seed=12, batch_size=10)
    assert first == second
    assert first != other


def test_temperature_sharpens_sampling(dp_run: tuple[dict, Path, Path]) -> None:
    _, model_dir, _ = dp_run
    model, vocab = load_model(model_dir), ItemVocab.load(model_dir)
    cold = sample_sequences(model, vocab, 40, seed=1, temperature=0.05, no_repeat_items=False)
    hot = sample_sequences(model, vocab, 40, seed=1, temperature=5.0, no_repeat_items=False)
    # Near-greedy decoding keeps drawing the same few tokens; a hot one spreads over the catalogue.
    assert len({i for _, s in cold for i in s}) < len({i for _, s in hot for i in s})


def test_non_dp_training_records_no_guarantee(cleaned: Path, tmp_path: Path) -> None:
    cfg = tiny_config(dp=DPConfig(enabled=False), epochs=1, n_synthetic=5)
    summary = logic.run(cfg, cleaned, tmp_path / "m", tmp_path / "s", seed=0)
    record = PrivacyRecord.model_validate_json((tmp_path / "m" / artifacts.PRIVACY).read_text())
    assert record.dp is False
    assert record.epsilon is None
    assert record.noise_multiplier == 0.0
    assert record.max_grad_norm is None
    assert record.steps == 6  # ceil(241 / 48) batches
    assert summary["epsilon"] is None
    assert summary["clipping"] is None
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


# bad input and config


@pytest.mark.parametrize(
    "bad",
    [
        {"size": "huge"},
        {"architecture": "bert"},
        {"max_length": 4},
        {"epochs": 0},
        {"batch_size": 0},
        {"temperature": 0.0},
        {"n_synthetic": -1},
        {"clipping": "magic"},
        {"num_threads": 0},
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


def test_duplicate_customer_is_an_input_error(tmp_path: Path) -> None:
    cleaned = write_cleaned(tmp_path / "cleaned", n_customers=10)
    seq = pd.read_parquet(cleaned / artifacts.SEQUENCES)
    pd.concat([seq, seq.iloc[:1]]).to_parquet(cleaned / artifacts.SEQUENCES)
    with pytest.raises(InputError, match="customer_id '12000'"):
        logic.run(tiny_config(batch_size=4), cleaned, tmp_path / "m", tmp_path / "s", seed=0)


@pytest.mark.parametrize("clipping", ["ghost", "hooks"])
def test_empty_poisson_batches_still_take_their_noise_step(tmp_path: Path, clipping: str) -> None:
    # Expected batch 1 of 21 customers: about a third of the Poisson batches draw nobody. Each
    # must still be a (noise-only) step that the accountant counts.
    small = write_cleaned(tmp_path / "cleaned", n_customers=20)
    cfg = tiny_config(batch_size=1, epochs=1, n_synthetic=2, clipping=clipping)
    summary = logic.run(cfg, small, tmp_path / "m", tmp_path / "s", seed=0)
    record = PrivacyRecord.model_validate_json((tmp_path / "m" / artifacts.PRIVACY).read_text())
    assert record.steps == 21
    assert record.sample_rate == pytest.approx(1 / 21)
    assert summary["steps"] == 21
