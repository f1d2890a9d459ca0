"""The generator's domain vocabulary: specials, conditioning tokens and one token per stock code.

A training sequence is ``[bos, <country:X>, <month:M>, <band:B>, item, item, ..., eos]``: the
country of the customer, the month of the sequence's first purchase, the median price band of its
items, then the items in order of first purchase. The month and band tokens are optional parts
of a vocabulary (an older one has neither: its sequences are ``[bos, <country:X>, items, eos]``).

Where a dataset has product categories (Amazon Beauty; not Online Retail or Diginetica), the
vocabulary adds one ``<cat:NAME>`` token per category and each sequence carries one of them
after the band: ``[bos, <country:X>, <month:M>, <band:B>, <cat:C>, items..., eos]``, C being
the most common category among the sequence's items (ties: the smallest name). The category is
a session-level condition like month and band, not a token before each item: that makes
"sessions of category C" one forced token at sampling, keeps every position after the
conditions an item, and leaves sequence lengths as they are.

The file format (``vocab.json``) is a contract with the serving side, which decodes sampled ids
back into stock codes without torch::

    {"tokens": [...], "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3,
     "first_item_id": K, "countries": {"France": id, ...},
     "months": {"1": id, ..., "12": id}, "price_bands": {"0": id, ...},
     "categories": {"NAME": id, ...}, "max_length": 64}

``categories`` is absent for a dataset without categories (and in older vocabularies). Token
ids are, in order: the four specials, the countries (sorted), the months 1..12, the price
bands 0..B-1, the categories (sorted names), then the items (sorted stock codes). ``tokens[K:]``
are the item tokens, whose string is the stock code itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components.common.errors import ConfigError, InputError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
VOCAB_FILE = "vocab.json"
TOKENIZER_FILE = "tokenizer.json"
# bos, country and eos frame every sequence; a conditioned vocabulary adds month and band.
FRAME_TOKENS = 3
MONTHS = tuple(range(1, 13))


def country_token(country: str) -> str:
    """The token string of a country, e.g. ``<country:France>``."""
    return f"<country:{country}>"


def month_token(month: int) -> str:
    """The token string of a calendar month 1..12, e.g. ``<month:12>``."""
    return f"<month:{int(month)}>"


def band_token(band: int) -> str:
    """The token string of a price band, e.g. ``<band:3>``."""
    return f"<band:{int(band)}>"


def category_token(category: str) -> str:
    """The token string of a product category, e.g. ``<cat:17>``."""
    return f"<cat:{category}>"


@dataclass(frozen=True)
class Session:
    """One decoded sequence: its conditions (None where the vocabulary has none) and its items."""

    country: str
    items: list[str] = field(default_factory=list)
    month: int | None = None
    price_band: int | None = None
    category: str | None = None


def _check_group(
    tokens: Sequence[str], group: dict[str, int], start: int, name: str, token_of
) -> None:
    """Check that ``group`` occupies ids ``start..start+len-1`` with the right token strings."""
    expected = list(range(start, start + len(group)))
    if sorted(group.values()) != expected:
        raise InputError(
            f"{name} ids must follow the previous token group contiguously "
            f"(expected {expected[:3]}...), got {sorted(group.values())[:3]}...",
            column=name,
        )
    for key, idx in group.items():
        if idx >= len(tokens) or tokens[idx] != token_of(key):
            got = tokens[idx] if idx < len(tokens) else None
            raise InputError(
                f"token {idx} is {got!r}, expected {token_of(key)!r}",
                column=name,
            )


class ItemVocab:
    """Bijection between token strings and ids for one catalogue, its countries and conditions."""

    def __init__(
        self,
        tokens: Sequence[str],
        countries: dict[str, int],
        max_length: int,
        *,
        months: dict[str, int] | None = None,
        price_bands: dict[str, int] | None = None,
        categories: dict[str, int] | None = None,
    ) -> None:
        tokens = [str(t) for t in tokens]
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise InputError(
                f"vocabulary must start with {list(SPECIAL_TOKENS)}, got {tokens[:4]}",
                column="tokens",
            )
        if len(set(tokens)) != len(tokens):
            raise InputError("vocabulary tokens must be unique", column="tokens")
        start = len(SPECIAL_TOKENS)
        _check_group(tokens, countries, start, "countries", country_token)
        start += len(countries)
        if months is not None:
            if sorted(int(m) for m in months) != list(MONTHS):
                raise InputError(
                    f"months must be exactly 1..12, got {sorted(months)}", column="months"
                )
            _check_group(tokens, months, start, "months", lambda m: month_token(int(m)))
            start += len(months)
        if price_bands is not None:
            if sorted(int(b) for b in price_bands) != list(range(len(price_bands))):
                raise InputError(
                    f"price_bands must be 0..B-1, got {sorted(price_bands)}", column="price_bands"
                )
            _check_group(tokens, price_bands, start, "price_bands", lambda b: band_token(int(b)))
            start += len(price_bands)
        if categories is not None:
            if not categories:
                raise InputError("categories is present but empty", column="categories")
            _check_group(tokens, categories, start, "categories", category_token)
            start += len(categories)
        self.tokens = tokens
        self.countries = dict(countries)
        self.months = None if months is None else {str(int(k)): v for k, v in months.items()}
        self.price_bands = (
            None if price_bands is None else {str(int(k)): v for k, v in price_bands.items()}
        )
        self.categories = None if categories is None else {str(k): v for k, v in categories.items()}
        self.first_item_id = start
        if max_length < self.frame_tokens + 1:
            raise ConfigError(
                f"max_length={max_length} must be >= {self.frame_tokens + 1} "
                f"({self.frame_tokens} frame and condition tokens plus one item)"
            )
        self.max_length = int(max_length)
        if self.first_item_id >= len(tokens):
            raise InputError("vocabulary has no item tokens", column="tokens")
        self._ids = {tok: i for i, tok in enumerate(tokens)}
        self._country_by_id = {idx: country for country, idx in countries.items()}
        self._month_by_id = {idx: int(m) for m, idx in (self.months or {}).items()}
        self._band_by_id = {idx: int(b) for b, idx in (self.price_bands or {}).items()}
        self._category_by_id = {idx: c for c, idx in (self.categories or {}).items()}

    @classmethod
    def build(
        cls,
        item_ids: Iterable[str],
        countries: Iterable[str],
        max_length: int,
        *,
        months: bool = False,
        n_price_bands: int | None = None,
        categories: Iterable[str] | None = None,
    ) -> ItemVocab:
        """A vocabulary over ``item_ids`` (the catalogue) and ``countries``, both sorted.

        Sorting makes the ids a function of the sets alone, not of the row order of the input.
        ``months`` adds the twelve month tokens, ``n_price_bands`` the band tokens 0..n-1 and
        ``categories`` (names; None or empty: none) one token per category.
        """
        country_list = sorted({str(c) for c in countries})
        items = sorted({str(i) for i in item_ids})
        month_tokens = [month_token(m) for m in MONTHS] if months else []
        band_tokens = [band_token(b) for b in range(n_price_bands or 0)]
        category_list = sorted({str(c) for c in categories or ()})
        category_tokens = [category_token(c) for c in category_list]
        reserved = set(SPECIAL_TOKENS) | {country_token(c) for c in country_list}
        clash = set(items) & (
            reserved | set(month_tokens) | set(band_tokens) | set(category_tokens)
        )
        if clash:
            raise InputError(f"item ids collide with reserved tokens: {sorted(clash)[:5]}")
        start = len(SPECIAL_TOKENS)
        country_ids = {c: start + i for i, c in enumerate(country_list)}
        start += len(country_list)
        month_ids = {str(m): start + i for i, m in enumerate(MONTHS)} if months else None
        start += len(month_tokens)
        band_ids = {str(b): start + b for b in range(n_price_bands)} if n_price_bands else None
        start += len(band_tokens)
        category_ids = {c: start + i for i, c in enumerate(category_list)} or None
        tokens = [
            *SPECIAL_TOKENS,
            *(country_token(c) for c in country_list),
            *month_tokens,
            *band_tokens,
            *category_tokens,
            *items,
        ]
        return cls(
            tokens,
            country_ids,
            max_length,
            months=month_ids,
            price_bands=band_ids,
            categories=category_ids,
        )

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

    @property
    def month_ids(self) -> list[int]:
        """Ids of the month tokens (empty for a vocabulary without months)."""
        return sorted((self.months or {}).values())

    @property
    def band_ids(self) -> list[int]:
        """Ids of the price band tokens (empty for a vocabulary without bands)."""
        return sorted((self.price_bands or {}).values())

    @property
    def category_ids(self) -> list[int]:
        """Ids of the category tokens (empty for a vocabulary without categories)."""
        return sorted((self.categories or {}).values())

    @property
    def n_price_bands(self) -> int:
        return len(self.price_bands or {})

    @property
    def frame_tokens(self) -> int:
        """Tokens around the items of a sequence: bos, country, [month], [band], [category], eos."""
        return (
            FRAME_TOKENS
            + (self.months is not None)
            + (self.price_bands is not None)
            + (self.categories is not None)
        )

    @property
    def max_items(self) -> int:
        """Most items one sequence can hold."""
        return self.max_length - self.frame_tokens

    def is_item(self, token_id: int) -> bool:
        return self.first_item_id <= token_id < len(self.tokens)

    def item_id(self, code: str) -> int | None:
        """The token id of a stock code, None when it is not in the catalogue."""
        idx = self._ids.get(str(code))
        return idx if idx is not None and self.is_item(idx) else None

    def country_id(self, country: str) -> int:
        """The token id of ``country``.

        Raises:
            InputError: the country is not in the vocabulary (the message lists the allowed ones).
        """
        if country not in self.countries:
            raise InputError(
                f"country {country!r} is not in the vocabulary; allowed: {sorted(self.countries)}",
                column="country",
            )
        return self.countries[country]

    def month_id(self, month: int) -> int:
        """The token id of calendar month ``month`` (1..12).

        Raises:
            InputError: the vocabulary has no months, or ``month`` is not 1..12.
        """
        if self.months is None:
            raise InputError("this generator has no month conditioning", column="month")
        key = str(month) if isinstance(month, int) and not isinstance(month, bool) else None
        if key not in self.months:
            raise InputError(f"month {month!r} is not one of 1..12", column="month")
        return self.months[key]

    def band_id(self, band: int) -> int:
        """The token id of price band ``band`` (0..bands-1).

        Raises:
            InputError: the vocabulary has no price bands, or ``band`` is out of range.
        """
        if self.price_bands is None:
            raise InputError("this generator has no price band conditioning", column="price_band")
        key = str(band) if isinstance(band, int) and not isinstance(band, bool) else None
        if key not in self.price_bands:
            raise InputError(
                f"price_band {band!r} is not one of 0..{len(self.price_bands) - 1}",
                column="price_band",
            )
        return self.price_bands[key]

    def category_id(self, category: str) -> int:
        """The token id of product category ``category`` (its name).

        Raises:
            InputError: the vocabulary has no categories, or ``category`` is not one of them
                (the message lists the allowed ones).
        """
        if self.categories is None:
            raise InputError("this generator has no category conditioning", column="category")
        if not isinstance(category, str) or category not in self.categories:
            raise InputError(
                f"category {category!r} is not in the vocabulary; allowed: "
                f"{sorted(self.categories)}",
                column="category",
            )
        return self.categories[category]

    def encode(
        self,
        country: str,
        items: Sequence[str],
        *,
        month: int | None = None,
        price_band: int | None = None,
        category: str | None = None,
    ) -> list[int]:
        """One sequence ``[bos, country, [month], [band], [category], items..., eos]``.

        The sequence holds at most max_length tokens.

        A history longer than :attr:`max_items` keeps its most recent items. Items outside the
        catalogue are dropped rather than mapped to ``<unk>``, so the model never learns to emit
        it. Training always gives every condition the vocabulary has; a condition left as None
        is left out of the record (the export's parity check encodes sequences that way).

        Raises:
            InputError: the country, month, band or category is not in the vocabulary.
        """
        head = [BOS_ID, self.country_id(country)]
        if month is not None:
            head.append(self.month_id(month))
        if price_band is not None:
            head.append(self.band_id(price_band))
        if category is not None:
            head.append(self.category_id(category))
        ids = [i for i in (self.item_id(code) for code in items) if i is not None]
        keep = self.max_length - len(head) - 1
        return [*head, *ids[-keep:], EOS_ID]

    def decode_session(self, token_ids: Iterable[int]) -> Session | None:
        """The conditions and stock codes of a token sequence; None without a country.

        Specials are skipped and eos ends the sequence; the first token of each condition group
        wins.
        """
        country: str | None = None
        month: int | None = None
        band: int | None = None
        category: str | None = None
        items: list[str] = []
        for raw in token_ids:
            idx = int(raw)
            if idx == EOS_ID:
                break
            if idx in self._country_by_id:
                country = self._country_by_id[idx] if country is None else country
            elif idx in self._month_by_id:
                month = self._month_by_id[idx] if month is None else month
            elif idx in self._band_by_id:
                band = self._band_by_id[idx] if band is None else band
            elif idx in self._category_by_id:
                category = self._category_by_id[idx] if category is None else category
            elif self.is_item(idx):
                items.append(self.tokens[idx])
        if country is None:
            return None
        return Session(
            country=country, items=items, month=month, price_band=band, category=category
        )

    def decode(self, token_ids: Iterable[int]) -> tuple[str | None, list[str]]:
        """The country and stock codes of a token sequence; specials are skipped, eos ends it."""
        ids = [int(i) for i in token_ids]
        session = self.decode_session(ids)
        if session is None:
            return None, [self.tokens[i] for i in _until_eos(ids) if self.is_item(i)]
        return session.country, session.items

    def to_dict(self) -> dict:
        payload = {
            "tokens": self.tokens,
            "pad_id": PAD_ID,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "unk_id": UNK_ID,
            "first_item_id": self.first_item_id,
            "countries": self.countries,
            "max_length": self.max_length,
        }
        if self.months is not None:
            payload["months"] = self.months
        if self.price_bands is not None:
            payload["price_bands"] = self.price_bands
        if self.categories is not None:
            payload["categories"] = self.categories
        return payload

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
            vocab = cls(
                payload["tokens"],
                payload["countries"],
                payload["max_length"],
                months=payload.get("months"),
                price_bands=payload.get("price_bands"),
                categories=payload.get("categories"),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed generator vocabulary: {exc!r}", file=str(path)) from exc
        except InputError as exc:
            raise InputError(f"malformed generator vocabulary: {exc}", file=str(path)) from exc
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


def _until_eos(token_ids: Iterable[int]) -> list[int]:
    out = []
    for raw in token_ids:
        if int(raw) == EOS_ID:
            break
        out.append(int(raw))
    return out
