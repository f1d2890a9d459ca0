"""Tests of torch sampling: conditions, prefix, degenerate parameters, what reaches the output."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from components.common.errors import ConfigError, InputError
from components.generate.model import build_model
from components.generate.sample import sample_sequences, sample_sessions
from components.generate.tokenizer import BOS_ID, EOS_ID, ItemVocab

CODES = [f"{21000 + i}" for i in range(40)]
COUNTRIES = ["France", "Germany", "United Kingdom"]
MAX_LENGTH = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Decode on one torch thread, as the step does: small matmuls, and a contended second
    thread on a shared machine made decoding several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vocab() -> ItemVocab:
    return ItemVocab.build(CODES, COUNTRIES, MAX_LENGTH, months=True, n_price_bands=3)


@pytest.fixture(scope="module")
def model(vocab: ItemVocab) -> torch.nn.Module:
    """A random tiny model whose special and condition logits are pushed up at every position.

    If the sampler's masks failed, pad/bos/unk/conditions would be drawn at item positions.
    """
    torch.manual_seed(0)
    lm = build_model("llama", "tiny", len(vocab), MAX_LENGTH).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(0.1)
        lm.lm_head.weight[: vocab.first_item_id] += 5 * lm.lm_head.weight[: vocab.first_item_id]
        lm.lm_head.weight[: vocab.first_item_id] += 0.5
    return lm


def test_forced_conditions_appear_in_every_session(model, vocab) -> None:
    sessions = sample_sessions(
        model, vocab, 30, seed=0, country="Germany", month=12, price_band=2, batch_size=7
    )
    assert len(sessions) == 30
    assert {(s.country, s.month, s.price_band) for s in sessions} == {("Germany", 12, 2)}


def test_unforced_conditions_are_sampled_within_their_group(model, vocab) -> None:
    sessions = sample_sessions(model, vocab, 200, seed=1)
    assert {s.country for s in sessions} <= set(COUNTRIES)
    assert {s.month for s in sessions} <= set(range(1, 13))
    assert {s.price_band for s in sessions} <= {0, 1, 2}
    assert len({s.month for s in sessions}) > 3  # drawn, not fixed


def test_special_and_condition_tokens_never_reach_the_items(model, vocab) -> None:
    sessions = sample_sessions(model, vocab, 200, seed=2, no_repeat_items=False, temperature=2.0)
    for s in sessions:
        assert 1 <= len(s.items) <= vocab.max_items
        assert set(s.items) <= set(CODES)


def test_no_repeat_items_never_repeats(model, vocab) -> None:
    for s in sample_sessions(model, vocab, 100, seed=3, temperature=3.0):
        assert len(set(s.items)) == len(s.items)


def test_prefix_opens_every_session_and_counts_in_max_items(model, vocab) -> None:
    sessions = sample_sessions(model, vocab, 20, seed=4, prefix=CODES[:2], max_items=3)
    for s in sessions:
        assert s.items[:2] == CODES[:2]
        assert len(s.items) <= 3
        assert CODES[0] not in s.items[2:]
    full = sample_sessions(model, vocab, 3, seed=4, prefix=CODES[:2], max_items=2)
    assert [s.items for s in full] == [CODES[:2]] * 3


def test_max_items_caps_every_session(model, vocab) -> None:
    sessions = sample_sessions(model, vocab, 50, seed=5, max_items=2, temperature=5.0)
    assert max(len(s.items) for s in sessions) <= 2


def test_sampling_is_seeded(model, vocab) -> None:
    first = sample_sessions(model, vocab, 25, seed=11, batch_size=10)
    second = sample_sessions(model, vocab, 25, seed=11, batch_size=10)
    other = sample_sessions(model, vocab, 25, seed=12, batch_size=10)
    assert first == second
    assert first != other


def _reference_next(model, vocab: ItemVocab, tokens: list[int], used: list[int]) -> int:
    """Greedy choice at an item position, recomputed without the cache: eos keeps its
    probability among items and eos, the unused items share the rest."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1]
    allowed = torch.zeros(len(vocab), dtype=torch.bool)
    allowed[vocab.first_item_id :] = True
    allowed[EOS_ID] = bool(used)
    probs = torch.softmax(logits.masked_fill(~allowed, -math.inf), -1)
    p_eos = float(probs[EOS_ID])
    items = probs.clone()
    items[EOS_ID] = 0
    items[used] = 0
    q = items / items.sum() * (1 - p_eos)
    q[EOS_ID] = p_eos
    return int(torch.argmax(q))


def test_temperature_zero_is_greedy(model, vocab) -> None:
    a = sample_sessions(model, vocab, 4, seed=0, temperature=0)
    b = sample_sessions(model, vocab, 4, seed=99, temperature=0.0)
    assert a == b
    assert len({tuple(s.items) for s in a}) == 1  # every row makes the same choices
    s = a[0]
    tokens = [BOS_ID, vocab.country_id(s.country), vocab.month_id(s.month)]
    tokens.append(vocab.band_id(s.price_band))
    used: list[int] = []
    for code in s.items:
        assert _reference_next(model, vocab, tokens, used) == vocab.item_id(code)
        tokens.append(vocab.item_id(code))
        used.append(vocab.item_id(code))
    if len(s.items) < vocab.max_items:
        assert _reference_next(model, vocab, tokens, used) == EOS_ID


def test_top_k_one_and_tiny_top_p_are_greedy(model, vocab) -> None:
    greedy = sample_sessions(model, vocab, 6, seed=0, temperature=0)
    assert sample_sessions(model, vocab, 6, seed=5, top_k=1) == greedy
    assert sample_sessions(model, vocab, 6, seed=5, top_p=1e-9) == greedy


def test_off_values_of_top_k_and_top_p_change_nothing(model, vocab) -> None:
    base = sample_sessions(model, vocab, 20, seed=8)
    assert sample_sessions(model, vocab, 20, seed=8, top_k=0) == base
    assert sample_sessions(model, vocab, 20, seed=8, top_k=10_000) == base
    assert sample_sessions(model, vocab, 20, seed=8, top_p=1.0) == base


def test_top_k_restricts_the_choices(model, vocab) -> None:
    sessions = sample_sessions(model, vocab, 100, seed=9, top_k=2, no_repeat_items=False)
    # The first item is drawn at the same position after the same conditions' logits... only
    # two distinct first items per (country, month, band) context.
    by_context = {}
    for s in sessions:
        by_context.setdefault((s.country, s.month, s.price_band), set()).add(s.items[0])
    assert max(len(v) for v in by_context.values()) <= 2


def test_huge_temperature_approaches_uniform(model, vocab) -> None:
    sessions = sample_sessions(model, vocab, 300, seed=10, temperature=1e6, country="France")
    months = Counter(s.month for s in sessions)
    assert len(months) == 12
    assert max(months.values()) < 3 * 300 / 12


def test_condition_temperature_softens_only_the_conditions(model, vocab) -> None:
    sessions = sample_sessions(model, vocab, 120, seed=3, temperature=0, condition_temperature=1e6)
    assert len({s.month for s in sessions}) > 6  # conditions drawn near uniformly
    by_context = {}
    for s in sessions:
        by_context.setdefault((s.country, s.month, s.price_band), set()).add(tuple(s.items))
    assert all(len(v) == 1 for v in by_context.values())  # items greedy given the conditions
    greedy = sample_sessions(model, vocab, 5, seed=3, temperature=0, condition_temperature=0)
    assert len({(s.country, s.month, s.price_band) for s in greedy}) == 1


def test_n_zero_gives_nothing(model, vocab) -> None:
    assert sample_sessions(model, vocab, 0, seed=0) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"max_items": 0}, "max_items"),
        ({"max_items": 12}, "max_items"),  # above the 11 items a 16-token sequence holds
        ({"batch_size": 0}, "batch_size"),
        ({"n": -1}, "n"),
        ({"condition_temperature": -1.0}, "condition_temperature"),
        ({"condition_temperature": float("nan")}, "condition_temperature"),
    ],
)
def test_degenerate_numeric_parameters_are_config_errors(model, vocab, params, field) -> None:
    kwargs = {"n": 2, **params}
    n = kwargs.pop("n")
    with pytest.raises(ConfigError, match=rf"\b{field}="):
        sample_sessions(model, vocab, n, seed=0, **kwargs)


def test_every_bad_parameter_is_reported_at_once(model, vocab) -> None:
    with pytest.raises(ConfigError, match=r"temperature=-1.*top_k=-2.*top_p=2"):
        sample_sessions(model, vocab, 1, seed=0, temperature=-1, top_k=-2, top_p=2)


@pytest.mark.parametrize(
    ("params", "field", "allowed"),
    [
        ({"country": "Spain"}, "country", "France"),
        ({"month": 0}, "month", "1..12"),
        ({"month": "12"}, "month", "1..12"),
        ({"price_band": 3}, "price_band", "0..2"),
        ({"prefix": ["NOPE"]}, "prefix", "NOPE"),
        ({"prefix": CODES[:1] * 2}, "prefix", "repeats"),
        ({"prefix": CODES[:12]}, "prefix", "max_items=11"),
        ({"prefix": CODES[0]}, "prefix", "list"),
    ],
)
def test_unknown_conditions_and_prefixes_are_input_errors(
    model, vocab, params, field, allowed
) -> None:
    with pytest.raises(InputError, match=allowed) as info:
        sample_sessions(model, vocab, 1, seed=0, **params)
    assert info.value.column == field


def test_conditions_an_older_vocabulary_lacks_are_rejected(model) -> None:
    plain = ItemVocab.build(CODES, COUNTRIES, MAX_LENGTH)
    lm = build_model("llama", "tiny", len(plain), MAX_LENGTH).eval()
    with pytest.raises(InputError, match="no month conditioning"):
        sample_sessions(lm, plain, 1, seed=0, month=3)
    pairs = sample_sequences(lm, plain, 5, seed=0)
    assert all(c in COUNTRIES and items for c, items in pairs)
