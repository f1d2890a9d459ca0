"""Sampling synthetic customer sessions from the trained generator (torch).

A sequence is decoded token by token from ``[bos]`` with the model's key/value cache:

1. the conditions, in vocabulary order: country, then month, price band and category where the
   vocabulary has them. A condition the caller gives is forced as that position's token; one
   not given is drawn from the model, restricted to that condition's token group (so the
   country mix, for instance, is the DP model's, never copied from a real customer);
2. the prefix items, if any, forced in order;
3. items until eos or ``max_items``. Only item tokens (and eos, once the sequence holds an item)
   can be drawn: padding, unknown, bos and condition tokens are masked out at every item
   position, so they never reach the output.

With ``no_repeat_items`` (real sequences never repeat an item) an item already in the sequence
cannot be drawn again. The probability the model gives eos is kept as it is, and only the item
probabilities are renormalised over the unused items: renormalising everything would hand the
mass of the masked items partly to eos and end sessions early.

Degenerate parameters have one meaning each (checked by :func:`check_sampling_params`, which
reports every problem at once):

=============  ==============================================================================
parameter      meaning
=============  ==============================================================================
n              0 gives no sessions; negative or not an integer is an error
temperature    0 is greedy decoding (the most likely allowed token, lowest id on ties); any
               finite value above 0 divides the logits (large values approach uniform over the
               allowed tokens); negative, NaN or infinite is an error
condition_     the temperature of the sampled conditions (country, month, band, category); None is
temperature    ``temperature``; same meanings and errors
top_k          None or 0 is off; k >= 1 keeps the k most likely allowed tokens (k above their
               number keeps them all); negative is an error
top_p          None or 1 is off; p in (0, 1) keeps the smallest set of most likely tokens whose
               probability reaches p (always at least one); 0, negative, above 1 or NaN is an
               error
max_items      None is the most the model was trained for (``vocab.max_items``); 1 up to that
               limit caps the items of each session; 0, negative or above the limit is an error
prefix         stock codes that open every session (counted in max_items); a code outside the
               catalogue, a repeat under no_repeat_items, or more codes than max_items is an error
conditions     None is sampled; an unknown country, month, band or category is an error listing the
               allowed values; a condition the vocabulary lacks (an older model) is an error
=============  ==============================================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from components.common.errors import ConfigError, InputError
from components.generate.tokenizer import BOS_ID, EOS_ID, ItemVocab, Session

logger = logging.getLogger(__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sampling_params(
    vocab: ItemVocab,
    *,
    n: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    max_items: int | None,
    batch_size: int,
    condition_temperature: float | None = None,
) -> int:
    """Check the numeric sampling parameters; return the effective ``max_items``.

    Raises:
        ConfigError: naming every invalid parameter, its value and what is allowed.
    """
    problems = []
    if not _is_int(n) or n < 0:
        problems.append(f"n={n!r} must be an integer >= 0")
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
        problems.append(f"temperature={temperature!r} must be a finite number >= 0 (0 is greedy)")
    if condition_temperature is not None and (
        not _is_real(condition_temperature)
        or not math.isfinite(condition_temperature)
        or condition_temperature < 0
    ):
        problems.append(
            f"condition_temperature={condition_temperature!r} must be a finite number >= 0 "
            "(None: the same as temperature)"
        )
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        problems.append(f"top_k={top_k!r} must be an integer >= 0 (0 or None is off)")
    if top_p is not None and (not _is_real(top_p) or not 0 < top_p <= 1):
        problems.append(f"top_p={top_p!r} must be in (0, 1] (1 or None is off)")
    limit = vocab.max_items
    if max_items is not None and (not _is_int(max_items) or not 1 <= max_items <= limit):
        problems.append(f"max_items={max_items!r} must be an integer in 1..{limit}")
    if not _is_int(batch_size) or batch_size < 1:
        problems.append(f"batch_size={batch_size!r} must be an integer >= 1")
    if problems:
        raise ConfigError("invalid sampling parameters: " + "; ".join(problems))
    return limit if max_items is None else max_items


def _mask(vocab: ItemVocab, ids: Sequence[int] | range) -> torch.Tensor:
    """A boolean mask over the vocabulary that is True at ``ids``."""
    mask = torch.zeros(len(vocab), dtype=torch.bool)
    mask[list(ids)] = True
    return mask


def _filter(probs: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Zero all but the top-k / nucleus tokens of each row of ``probs`` (rows sum to 1)."""
    if top_k:
        k = min(top_k, probs.shape[-1])
        kth = torch.topk(probs, k, dim=-1).values[:, -1:]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if top_p is not None and top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        # A token stays when the tokens above it hold less than top_p: at least the first.
        keep_sorted = before < top_p * probs.sum(dim=-1, keepdim=True)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs


def _choose(
    probs: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    top_k: int | None,
    top_p: float | None,
) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else a draw from the filtered ``probs``."""
    if temperature == 0:
        return torch.argmax(probs, dim=-1)
    probs = _filter(probs, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _tempered(logits: torch.Tensor, allowed: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` over ``allowed`` (temperature 0: the same ordering)."""
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if temperature == 0:
        # Greedy only needs the order; softmax at T=1 keeps it and stays finite.
        return torch.softmax(logits, dim=-1)
    top = logits.max(dim=-1, keepdim=True).values
    # Subtract the maximum first, so a tiny temperature gives 0 and -inf, never inf - inf.
    return torch.softmax((logits - top) / temperature, dim=-1)


def _item_probs(
    logits: torch.Tensor,
    item_ok: torch.Tensor,
    used: torch.Tensor,
    eos_ok: torch.Tensor,
    temperature: float,
    no_repeat_items: bool,
) -> torch.Tensor:
    """Next-token probabilities at an item position (see the module docstring on eos)."""
    allowed = item_ok.expand_as(used).clone()
    allowed[:, EOS_ID] = eos_ok
    probs = _tempered(logits, allowed, temperature)
    if not no_repeat_items:
        return probs
    p_eos = probs[:, EOS_ID].clone()
    items = probs.masked_fill(used | ~item_ok, 0.0)
    items[:, EOS_ID] = 0.0
    mass = items.sum(dim=-1, keepdim=True)
    # A row whose unused items all have zero probability can only end (or, before its first
    # item, spreads over the unused items uniformly, which the caller never needs in practice).
    fallback = (~used & item_ok).float()
    fallback = fallback / fallback.sum(dim=-1, keepdim=True).clamp(min=1)
    items = torch.where(mass > 0, items / mass.clamp(min=1e-30), fallback)
    out = items * (1 - p_eos[:, None])
    out[:, EOS_ID] = p_eos
    # Before the first item eos is not allowed: all mass goes to the items.
    out = torch.where(eos_ok[:, None], out, items)
    return out


@torch.inference_mode()
def sample_sessions(
    model: torch.nn.Module,
    vocab: ItemVocab,
    n: int,
    *,
    seed: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_items: int | None = None,
    condition_temperature: float | None = None,
    country: str | None = None,
    month: int | None = None,
    price_band: int | None = None,
    category: str | None = None,
    prefix: Sequence[str] | None = None,
    batch_size: int = 500,
    no_repeat_items: bool = True,
) -> list[Session]:
    """Draw ``n`` sessions; the same seed and parameters give the same sessions.

    See the module docstring for the meaning of every parameter, degenerate values included.

    Raises:
        ConfigError: an invalid numeric parameter.
        InputError: an unknown condition value or prefix code.
    """
    limit = check_sampling_params(
        vocab,
        n=n,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_items=max_items,
        batch_size=batch_size,
        condition_temperature=condition_temperature,
    )
    # The condition groups in sequence order, each with its forced id or None (sampled).
    groups: list[tuple[str, list[int], int | None]] = [
        ("country", vocab.country_ids, None if country is None else vocab.country_id(country))
    ]
    if vocab.months is not None:
        groups.append(("month", vocab.month_ids, None if month is None else vocab.month_id(month)))
    elif month is not None:
        vocab.month_id(month)  # raises: this vocabulary has no months
    if vocab.price_bands is not None:
        forced_band = None if price_band is None else vocab.band_id(price_band)
        groups.append(("price_band", vocab.band_ids, forced_band))
    elif price_band is not None:
        vocab.band_id(price_band)  # raises: this vocabulary has no bands
    if vocab.categories is not None:
        forced_category = None if category is None else vocab.category_id(category)
        groups.append(("category", vocab.category_ids, forced_category))
    elif category is not None:
        vocab.category_id(category)  # raises: this vocabulary has no categories
    prefix_ids = _prefix_ids(vocab, prefix or [], limit, no_repeat_items)
    if n == 0:
        return []

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    item_ok = _mask(vocab, range(vocab.first_item_id, len(vocab)))
    results: list[Session] = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        results.extend(
            _sample_batch(
                model,
                vocab,
                rows,
                groups=groups,
                prefix_ids=prefix_ids,
                max_items=limit,
                item_ok=item_ok,
                temperature=temperature,
                condition_temperature=(
                    temperature if condition_temperature is None else condition_temperature
                ),
                top_k=top_k,
                top_p=top_p,
                no_repeat_items=no_repeat_items,
                generator=generator,
            )
        )
        logger.info("sampled %d of %d synthetic sequences", len(results), n)
    return results


def _prefix_ids(
    vocab: ItemVocab, prefix: Sequence[str], limit: int, no_repeat_items: bool
) -> list[int]:
    if isinstance(prefix, str):
        raise InputError("prefix must be a list of stock codes, not one string", column="prefix")
    ids = [vocab.item_id(code) for code in prefix]
    unknown = [str(code) for code, idx in zip(prefix, ids, strict=True) if idx is None]
    if unknown:
        raise InputError(f"prefix codes not in the catalogue: {unknown[:10]}", column="prefix")
    if len(ids) > limit:
        raise InputError(f"prefix has {len(ids)} items, above max_items={limit}", column="prefix")
    if no_repeat_items and len(set(ids)) != len(ids):
        raise InputError("prefix repeats an item while no_repeat_items is on", column="prefix")
    return [int(i) for i in ids if i is not None]


def _sample_batch(
    model: torch.nn.Module,
    vocab: ItemVocab,
    rows: int,
    *,
    groups: list[tuple[str, list[int], int | None]],
    prefix_ids: list[int],
    max_items: int,
    item_ok: torch.Tensor,
    temperature: float,
    condition_temperature: float,
    top_k: int | None,
    top_p: float | None,
    no_repeat_items: bool,
    generator: torch.Generator,
) -> list[Session]:
    """Decode ``rows`` sequences together (the batch stays rectangular until all have ended)."""
    position = 0
    cache = None

    def step(token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; the logits of the next position."""
        nonlocal position, cache
        out = model(
            input_ids=token[:, None],
            position_ids=torch.full((rows, 1), position, dtype=torch.long),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        position += 1
        cache = out.cache
        return out.logits[:, -1]

    logits = step(torch.full((rows,), BOS_ID, dtype=torch.long))
    drawn: list[torch.Tensor] = []
    for _, ids, forced in groups:
        if forced is None:
            allowed = _mask(vocab, ids).expand(rows, -1)
            probs = _tempered(logits, allowed, condition_temperature)
            token = _choose(probs, condition_temperature, generator, top_k, top_p)
        else:
            token = torch.full((rows,), forced, dtype=torch.long)
        drawn.append(token)
        logits = step(token)

    used = torch.zeros((rows, len(vocab)), dtype=torch.bool)
    n_items = 0
    for idx in prefix_ids:
        token = torch.full((rows,), idx, dtype=torch.long)
        used[:, idx] = True
        drawn.append(token)
        n_items += 1
        if n_items < max_items:
            logits = step(token)

    done = torch.zeros(rows, dtype=torch.bool)
    eos_ok = torch.full((rows,), n_items > 0, dtype=torch.bool)
    while n_items < max_items:
        probs = _item_probs(logits, item_ok, used, eos_ok, temperature, no_repeat_items)
        token = _choose(probs, temperature, generator, top_k, top_p)
        # Finished rows keep decoding (the batch stays rectangular) but their draws are void.
        token = torch.where(done, torch.full_like(token, EOS_ID), token)
        used[torch.arange(rows), token] = True
        drawn.append(token)
        done |= token == EOS_ID
        n_items += 1
        eos_ok = torch.ones_like(eos_ok)
        if bool(done.all()) or n_items >= max_items:
            break
        logits = step(token)

    sessions = []
    for row in torch.stack(drawn, dim=1).tolist():
        session = vocab.decode_session([BOS_ID, *row])
        # The masks make both impossible; checked so a bug cannot emit a malformed session.
        if session is None or not session.items:
            raise RuntimeError(f"sampler produced a malformed sequence {row[:5]}...")
        sessions.append(session)
    return sessions


def sample_sequences(
    model: torch.nn.Module,
    vocab: ItemVocab,
    n: int,
    *,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 500,
    no_repeat_items: bool = True,
    **kwargs: object,
) -> list[tuple[str, list[str]]]:
    """:func:`sample_sessions` as ``(country, stock codes)`` pairs (the older interface)."""
    sessions = sample_sessions(
        model,
        vocab,
        n,
        seed=seed,
        temperature=temperature,
        batch_size=batch_size,
        no_repeat_items=no_repeat_items,
        **kwargs,  # type: ignore[arg-type]
    )
    return [(s.country, s.items) for s in sessions]
