"""The generator's domain vocabulary: special tokens, one token per country, one per stock code.

A customer becomes one token sequence ``[bos, <country:X>, item, item, ..., eos]``. The file
format (``vocab.json``) is a contract with the serving side, which decodes sampled ids back into
stock codes without torch::

    {"tokens": [...], "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3,
     "first_item_id": K, "countries": {"France": id, ...}, "max_length": 64}

``tokens[K:]`` are item tokens whose string is the stock code itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from components.common.errors import ConfigError, InputError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
VOCAB_FILE = "vocab.json"
TOKENIZER_FILE = "tokenizer.json"
# bos, country and eos frame every sequence, so at most max_length - 3 items fit.
FRAME_TOKENS = 3


def country_token(country: str) -> str:
    """The token string of a country, e.g. ``<country:France>``."""
    return f"<country:{country}>"


class ItemVocab:
    """Bijection between token strings and ids for one catalogue and set of countries."""

    def __init__(self, tokens: Sequence[str], countries: dict[str, int], max_length: int) -> None:
        tokens = [str(t) for t in tokens]
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise InputError(
                f"vocabulary must start with {list(SPECIAL_TOKENS)}, got {tokens[:4]}",
                column="tokens",
            )
        if len(set(tokens)) != len(tokens):
            raise InputError("vocabulary tokens must be unique", column="tokens")
        expected = list(range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + len(countries)))
        if sorted(countries.values()) != expected:
            raise InputError(
                f"country ids must follow the special tokens contiguously ({expected[:3]}...)",
                column="countries",
            )
        for country, idx in countries.items():
            if tokens[idx] != country_token(country):
                raise InputError(
                    f"token {idx} is {tokens[idx]!r}, expected {country_token(country)!r}",
                    column="countries",
                )
        if max_length < FRAME_TOKENS + 1:
            raise ConfigError(f"max_length={max_length} must be >= {FRAME_TOKENS + 1}")
        self.tokens = tokens
        self.countries = dict(countries)
        self.max_length = int(max_length)
        self.first_item_id = len(SPECIAL_TOKENS) + len(countries)
        if self.first_item_id >= len(tokens):
            raise InputError("vocabulary has no item tokens", column="tokens")
        self._ids = {tok: i for i, tok in enumerate(tokens)}
        self._country_by_id = {idx: country for country, idx in countries.items()}

    @classmethod
    def build(cls, item_ids: Iterable[str], countries: Iterable[str], max_length: int) -> ItemVocab:
        """A vocabulary over ``item_ids`` (the catalogue) and ``countries``, both sorted.

        Sorting makes the ids a function of the sets alone, not of the row order of the input.
        """
        country_list = sorted({str(c) for c in countries})
        items = sorted({str(i) for i in item_ids})
        clash = set(items) & (set(SPECIAL_TOKENS) | {country_token(c) for c in country_list})
        if clash:
            raise InputError(f"item ids collide with reserved tokens: {sorted(clash)[:5]}")
        start = len(SPECIAL_TOKENS)
        tokens = [*SPECIAL_TOKENS, *(country_token(c) for c in country_list), *items]
        return cls(tokens, {c: start + i for i, c in enumerate(country_list)}, max_length)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_items(self) -> int:
        return len(self.tokens) - self.first_item_id

    @property
    def item_ids(self) -> list[str]:
        """The stock codes, in token-id order."""
        return self.tokens[self.first_item_id :]

    @property
    def country_ids(self) -> list[int]:
        return sorted(self.countries.values())

    def is_item(self, token_id: int) -> bool:
        return self.first_item_id <= token_id < len(self.tokens)

    def encode(self, country: str, items: Sequence[str]) -> list[int]:
        """One customer's record ``[bos, country, items..., eos]`` of at most ``max_length``.

        This is the contribution bound of DP training: a customer is exactly one sequence, and a
        history longer than ``max_length - 3`` keeps its most recent items. Items outside the
        catalogue are dropped rather than mapped to ``<unk>``, so the model never learns to emit
        it.

        Raises:
            InputError: the country is not in the vocabulary.
        """
        if country not in self.countries:
            raise InputError(f"country {country!r} is not in the vocabulary", column="country")
        ids = [self._ids[i] for i in items if i in self._ids and self.is_item(self._ids[i])]
        keep = self.max_length - FRAME_TOKENS
        return [self._ids[BOS], self.countries[country], *ids[-keep:], self._ids[EOS]]

    def decode(self, token_ids: Iterable[int]) -> tuple[str | None, list[str]]:
        """The country and stock codes of a token sequence; specials are skipped, eos ends it."""
        country: str | None = None
        items: list[str] = []
        for raw in token_ids:
            idx = int(raw)
            if idx == EOS_ID:
                break
            if idx in self._country_by_id:
                if country is None:
                    country = self._country_by_id[idx]
            elif self.is_item(idx):
                items.append(self.tokens[idx])
        return country, items

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "pad_id": PAD_ID,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "unk_id": UNK_ID,
            "first_item_id": self.first_item_id,
            "countries": self.countries,
            "max_length": self.max_length,
        }

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``vocab.json`` (the contract) and a ``tokenizers`` WordLevel ``tokenizer.json``."""
        directory = Path(directory)
        (directory / VOCAB_FILE).write_text(
            json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8"
        )
        self.to_tokenizers().save(str(directory / TOKENIZER_FILE))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ItemVocab:
        path = Path(directory) / VOCAB_FILE
        if not path.is_file():
            raise InputError("generator vocabulary is missing", file=str(path))
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            ids = (payload["pad_id"], payload["bos_id"], payload["eos_id"], payload["unk_id"])
            if ids != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
                raise InputError(f"special ids {ids} must be (0, 1, 2, 3)", file=str(path))
            vocab = cls(payload["tokens"], payload["countries"], payload["max_length"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"malformed generator vocabulary: {exc!r}", file=str(path)) from exc
        if vocab.first_item_id != payload.get("first_item_id"):
            raise InputError(
                f"first_item_id={payload.get('first_item_id')} disagrees with the tokens "
                f"(expected {vocab.first_item_id})",
                file=str(path),
            )
        return vocab

    def to_tokenizers(self):  # -> tokenizers.Tokenizer, imported lazily
        """The same vocabulary as a ``tokenizers`` WordLevel tokenizer over space-split tokens."""
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import WhitespaceSplit

        tok = Tokenizer(WordLevel(vocab=dict(self._ids), unk_token=UNK))
        tok.pre_tokenizer = WhitespaceSplit()
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        return tok
