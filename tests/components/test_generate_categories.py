"""Category tokens of the generator: vocabulary contract, training records, and conditioning.

The tiny data set here gives every item one of three categories independent of the country,
and each customer buys from a single category, so a generator that reads its category token
writes sessions of that category. One non-private model is trained once per module and used
for torch sampling and, exported, for ONNX sampling.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common import artifacts
from components.common.canaries import CanaryConfig
from components.common.errors import InputError
from components.common.privacy import DPConfig
from components.export.config import ExportConfig
from components.export.generator import export_generator
from components.generate import logic
from components.generate.config import GenerateConfig
from components.generate.model import load_model
from components.generate.sample import sample_sessions
from components.generate.tokenizer import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    VOCAB_FILE,
    ItemVocab,
    Session,
    band_token,
    category_token,
)
from components.ingest import loaders
from components.ingest import logic as ingest_logic
from serving.errors import BadRequest
from serving.generator import GeneratorModel

SHARED_BEAUTY = ingest_logic.SHARED_DATA / "amazon-beauty-sports-s3rec"
CATEGORIES = ("a", "b", "c")
COUNTRIES = ("France", "Germany")
N_ITEMS = 60
MAX_LENGTH = 14


def _code(i: int) -> str:
    return f"{30000 + i}"


def _category_of(i: int) -> str | None:
    # item 0 has no category: it becomes "other"
    return None if i == 0 else CATEGORIES[i % 3]


def write_cleaned(out: Path, *, n_customers: int = 180, seed: int = 0) -> Path:
    """Customer c buys 2..8 items of category ``c % 3``, from the country ``c // 3 % 2``."""
    rng = np.random.default_rng(seed)
    pools = {
        name: [_code(i) for i in range(N_ITEMS) if _category_of(i) == name] for name in CATEGORIES
    }
    rows = []
    for c in range(n_customers):
        pool = pools[CATEGORIES[c % 3]]
        items = list(rng.choice(pool, size=int(rng.integers(2, 9)), replace=False))
        start = pd.Timestamp(2011, c % 12 + 1, 1, tz="UTC")
        ts = [start + pd.Timedelta(hours=k) for k in range(len(items))]
        rows.append((f"{50000 + c}", COUNTRIES[c // 3 % 2], items, ts))
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["customer_id", "country", "items", "ts"]).to_parquet(
        out / artifacts.SEQUENCES
    )
    pd.DataFrame(
        {
            "item_id": [_code(i) for i in range(N_ITEMS)],
            "description": [f"ITEM {i}" for i in range(N_ITEMS)],
            "price_band": [i * 2 // N_ITEMS for i in range(N_ITEMS)],
            "category": pd.array([_category_of(i) for i in range(N_ITEMS)], dtype="string"),
        }
    ).to_parquet(out / artifacts.ITEMS)
    return out


def category_vocab(max_length: int = 20) -> ItemVocab:
    return ItemVocab.build(
        ["85123A", "71053", "22423"],
        ["United Kingdom", "France"],
        max_length,
        months=True,
        n_price_bands=2,
        categories=["b", "a", "b"],
    )


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cleaned(tmp_path_factory.mktemp("cat") / "cleaned")


@pytest.fixture(scope="module")
def trained(cleaned: Path) -> tuple[dict, Path, Path]:
    """A non-private tiny generator trained on the category data, and its synthetic dir."""
    cfg = GenerateConfig(
        size="tiny",
        max_length=MAX_LENGTH,
        epochs=10,
        batch_size=16,
        learning_rate=1e-2,
        n_synthetic=60,
        dp=DPConfig(enabled=False),
        canaries=CanaryConfig(count=0, holdout_fraction=0.1),
    )
    out = cleaned.parent / "run"
    summary = logic.run(cfg, cleaned, out / "generator_model", out / "synthetic", seed=0)
    return summary, out / "generator_model", out / "synthetic"


def _share_of(sessions: list, category: str) -> float:
    codes = {_code(i) for i in range(N_ITEMS) if _category_of(i) == category}
    items = [i for s in sessions for i in s]
    return sum(i in codes for i in items) / len(items)


# vocabulary ---------------------------------------------------------------------------------


def test_category_vocab_follows_the_contract_and_round_trips(tmp_path: Path) -> None:
    vocab = category_vocab()
    # specials, 2 countries, 12 months, 2 bands, then the sorted categories, then the items
    assert vocab.tokens[19:21] == [band_token(1), category_token("a")]
    assert vocab.categories == {"a": 20, "b": 21}
    assert vocab.tokens[20:22] == ["<cat:a>", "<cat:b>"]
    assert vocab.first_item_id == 22
    assert vocab.frame_tokens == 6 and vocab.max_items == 14

    seq = vocab.encode("France", ["71053", "22423"], month=3, price_band=1, category="b")
    assert seq == [1, 4, 8, 19, 21, vocab.item_id("71053"), vocab.item_id("22423"), 2]
    assert vocab.decode_session(seq) == Session(
        country="France", items=["71053", "22423"], month=3, price_band=1, category="b"
    )

    vocab.save(tmp_path)
    payload = json.loads((tmp_path / VOCAB_FILE).read_text())
    assert payload["categories"] == {"a": 20, "b": 21}
    assert payload["first_item_id"] == 22
    again = ItemVocab.load(tmp_path)
    assert again.tokens == vocab.tokens and again.categories == vocab.categories
    tok = json.loads((tmp_path / TOKENIZER_FILE).read_text())
    assert tok["model"]["vocab"]["<cat:b>"] == 21


def test_vocab_without_categories_writes_no_key_and_old_files_load(tmp_path: Path) -> None:
    vocab = ItemVocab.build(["1", "2"], ["France"], 10, months=True, n_price_bands=2)
    assert vocab.categories is None
    assert "categories" not in vocab.to_dict()
    assert vocab.frame_tokens == 5
    vocab.save(tmp_path)
    assert ItemVocab.load(tmp_path).categories is None
    empty = ItemVocab.build(["1", "2"], ["France"], 10, categories=[])
    assert empty.categories is None and empty.first_item_id == len(SPECIAL_TOKENS) + 1


def test_unknown_category_raises_naming_the_field_and_listing_allowed() -> None:
    vocab = category_vocab()
    with pytest.raises(InputError, match=r"allowed: \['a', 'b'\]") as caught:
        vocab.category_id("z")
    assert caught.value.column == "category"
    plain = ItemVocab.build(["1"], ["France"], 10)
    with pytest.raises(InputError, match="no category conditioning"):
        plain.encode("France", ["1"], category="a")


def test_malformed_categories_in_vocab_file_are_an_input_error(tmp_path: Path) -> None:
    vocab = category_vocab()
    payload = vocab.to_dict()
    payload["categories"] = {"a": 21, "b": 20}  # ids swapped against the token strings
    (tmp_path / VOCAB_FILE).write_text(json.dumps(payload))
    with pytest.raises(InputError, match="malformed generator vocabulary"):
        ItemVocab.load(tmp_path)


# categories from items.parquet and the training records -------------------------------------


def test_read_categories(cleaned: Path, tmp_path: Path) -> None:
    got = logic.read_categories(cleaned)
    assert got[_code(0)] == logic.OTHER_CATEGORY
    assert got[_code(1)] == "b" and got[_code(3)] == "a"
    assert set(got.values()) == {"a", "b", "c", "other"}

    items = pd.read_parquet(cleaned / artifacts.ITEMS)
    (tmp_path / "none").mkdir()
    items.drop(columns=["category"]).to_parquet(tmp_path / "none" / artifacts.ITEMS)
    assert logic.read_categories(tmp_path / "none") is None
    (tmp_path / "null").mkdir()
    items.assign(category=pd.array([None] * len(items), dtype="string")).to_parquet(
        tmp_path / "null" / artifacts.ITEMS
    )
    assert logic.read_categories(tmp_path / "null") is None
    (tmp_path / "bad").mkdir()
    bad = items.copy()
    bad.loc[5, "category"] = "two words"
    bad.to_parquet(tmp_path / "bad" / artifacts.ITEMS)
    with pytest.raises(InputError, match="'two words'") as caught:
        logic.read_categories(tmp_path / "bad")
    assert (caught.value.column, caught.value.row) == ("category", 5)


def test_session_category_is_the_most_common_with_ties_to_the_smallest() -> None:
    cats = {"1": "b", "2": "b", "3": "a", "4": "c"}
    assert logic.session_category(["3", "1", "2"], cats) == "b"
    assert logic.session_category(["4", "3"], cats) == "a"
    assert logic.session_category(["9"], cats) == logic.OTHER_CATEGORY


def test_records_carry_the_category_after_the_band(cleaned: Path) -> None:
    sequences, catalogue = logic.read_sequences(cleaned, with_ts=True)
    bands = logic.read_price_bands(cleaned)
    cats = logic.read_categories(cleaned)
    train = logic.training_histories(sequences)
    vocab = ItemVocab.build(
        catalogue,
        train["country"],
        MAX_LENGTH,
        months=True,
        n_price_bands=2,
        categories=cats.values(),
    )
    records = logic.customer_records(train, vocab, bands=bands, categories=cats)
    assert len(records) == len(train)
    for row, segments in zip(train.itertuples(), records, strict=True):
        (seq,) = segments
        session = vocab.decode_session(seq)
        assert seq[4] in vocab.category_ids
        # every customer buys within one category, so it is the session's category
        assert session.category == CATEGORIES[(int(row.customer_id) - 50000) % 3]
        assert session.items == list(row.items)


def test_audit_rebuilds_the_training_records_with_their_category(cleaned: Path) -> None:
    from components.dp_audit import attacks

    sequences, catalogue = logic.read_sequences(cleaned, with_ts=True)
    cats = logic.read_categories(cleaned)
    train = logic.training_histories(sequences)
    vocab = ItemVocab.build(
        catalogue,
        train["country"],
        MAX_LENGTH,
        months=True,
        n_price_bands=2,
        categories=cats.values(),
    )
    cfg = GenerateConfig(max_length=MAX_LENGTH)
    expected = logic.customer_records(
        train,
        vocab,
        bands=logic.read_price_bands(cleaned),
        categories=cats,
        session_split=cfg.session_split,
        max_sequences=cfg.max_sequences_per_customer,
        max_tokens=cfg.max_tokens_per_customer,
    )
    got = attacks.generator_records(attacks.generator_train_parts(cleaned), vocab, cleaned, cfg)
    assert got == expected
    assert all(seq[4] in vocab.category_ids for segments in got for seq in segments)


@pytest.mark.skipif(not SHARED_BEAUTY.is_dir(), reason="no shared Amazon Beauty data")
def test_beauty_slice_round_trips_with_categories() -> None:
    events = loaders.load_amazon_beauty(SHARED_BEAUTY)
    users = events["customer_id"].drop_duplicates().iloc[:300]
    part = events[events["customer_id"].isin(users)]
    cats = dict(zip(part["item_id"], part["category"], strict=True))
    vocab = ItemVocab.build(
        part["item_id"], ["unknown"], 24, months=True, n_price_bands=1, categories=cats.values()
    )
    assert 1 < len(vocab.categories) <= 7
    assert set(vocab.categories) <= {"1", "15", "17", "31", "4", "64", "8"}
    for _, group in part.groupby("customer_id", sort=False):
        items = group["item_id"].tolist()
        category = logic.session_category(items, cats)
        seq = vocab.encode("unknown", items, month=1, price_band=0, category=category)
        session = vocab.decode_session(seq)
        assert session.category == category
        assert session.items == items[-vocab.max_items :]
        assert all(vocab.is_item(t) for t in seq[5:-1])


# conditioning in torch and ONNX sampling ----------------------------------------------------


def test_run_trains_with_categories_and_writes_them(trained: tuple[dict, Path, Path]) -> None:
    summary, model_dir, synthetic_dir = trained
    assert summary["conditioning"] == ["country", "month", "price_band", "category"]
    assert ItemVocab.load(model_dir).categories is not None
    frame = pd.read_parquet(synthetic_dir / artifacts.SYNTHETIC_SESSIONS)
    assert set(frame["category"]) <= {*CATEGORIES, logic.OTHER_CATEGORY}
    assert frame["items"].map(len).min() >= 1
    quality = json.loads((synthetic_dir / "quality.json").read_text())
    assert quality["fidelity"]["synthetic"]["jsd_category"] is not None


@pytest.mark.parametrize("category", ["a", "c"])
def test_torch_sampling_follows_the_category(
    trained: tuple[dict, Path, Path], category: str
) -> None:
    _, model_dir, _ = trained
    vocab = ItemVocab.load(model_dir)
    model = load_model(model_dir)
    sessions = sample_sessions(model, vocab, 40, seed=1, category=category)
    assert {s.category for s in sessions} == {category}
    assert all(vocab.item_id(i) is not None for s in sessions for i in s.items)
    # a third would be chance (about 150 items drawn, so chance stays below 0.45)
    assert _share_of([s.items for s in sessions], category) > 0.6
    with pytest.raises(InputError, match="allowed"):
        sample_sessions(model, vocab, 1, seed=1, category="zz")


def test_onnx_sampling_follows_the_category(trained: tuple[dict, Path, Path]) -> None:
    _, model_dir, _ = trained
    exported = model_dir.parent / "exported"
    export_generator(
        model_dir, exported, cfg=ExportConfig(parity_batch_sizes=(1, 2), parity_lengths=(6,))
    )
    # specials 0-3, two countries, twelve months, two bands, then the categories
    assert json.loads((exported / VOCAB_FILE).read_text())["categories"] == {
        "a": 20,
        "b": 21,
        "c": 22,
        "other": 23,
    }
    model = GeneratorModel(exported, require_gpu=False)
    model.load()

    async def call(instances: list[dict]) -> list[list[dict]]:
        payload = await model.preprocess({"instances": instances})
        out = model.postprocess(await model.predict(payload))
        return [p["sessions"] for p in out["predictions"]]

    given_a, given_c, free = asyncio.run(
        call(
            [
                {"n": 30, "seed": 1, "category": "a"},
                {"n": 30, "seed": 2, "category": "c", "country": "France"},
                {"n": 30, "seed": 3},
            ]
        )
    )
    assert {s["category"] for s in given_a} == {"a"}
    assert {(s["country"], s["category"]) for s in given_c} == {("France", "c")}
    assert _share_of([s["items"] for s in given_a], "a") > 0.6
    assert _share_of([s["items"] for s in given_c], "c") > 0.6
    assert {s["category"] for s in free} <= {*CATEGORIES, logic.OTHER_CATEGORY}
    for s in [*given_a, *given_c, *free]:
        assert s["items"] and all(not i.startswith("<") for i in s["items"])

    for bad, allowed in (("zz", "a, b, c, other"), (3, "a, b, c, other")):
        with pytest.raises(BadRequest) as caught:
            asyncio.run(call([{"n": 1, "category": bad}]))
        assert caught.value.field == "instances[0].category"
        assert caught.value.allowed == allowed
