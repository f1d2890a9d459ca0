"""Sampling synthetic customer sessions from the trained generator.

Every sequence starts from ``[bos]`` alone, so its country is drawn from the DP model too, never
copied from a real customer. After the country token only item tokens (and, once one item has
been drawn, eos) can be drawn: padding, unknown, bos and country tokens are masked out, so they
never reach the output.
"""

from __future__ import annotations

import logging

import torch

from components.generate.tokenizer import BOS_ID, EOS_ID, FRAME_TOKENS, ItemVocab

logger = logging.getLogger(__name__)


def _allowed(vocab: ItemVocab, ids: list[int] | range) -> torch.Tensor:
    """A boolean mask over the vocabulary that is True at ``ids``."""
    mask = torch.zeros(len(vocab), dtype=torch.bool)
    mask[list(ids)] = True
    return mask


def _draw(
    logits: torch.Tensor, allowed: torch.Tensor, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to ``allowed``."""
    logits = logits.float().masked_fill(~allowed, float("-inf")) / temperature
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def sample_sequences(
    model: torch.nn.Module,
    vocab: ItemVocab,
    n: int,
    *,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 500,
    no_repeat_items: bool = True,
) -> list[tuple[str, list[str]]]:
    """Draw ``n`` (country, stock codes) sequences; the same seed gives the same sequences.

    Decoding is incremental with the model's key/value cache. Each sequence holds between one and
    ``max_length - 3`` items; one that reaches the limit ends there as if eos had been drawn.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    country_ok = _allowed(vocab, vocab.country_ids)
    item_ok = _allowed(vocab, range(vocab.first_item_id, len(vocab)))
    item_or_eos_ok = item_ok.clone()
    item_or_eos_ok[EOS_ID] = True
    max_items = vocab.max_length - FRAME_TOKENS

    results: list[tuple[str, list[str]]] = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        tokens = torch.full((rows, 1), BOS_ID, dtype=torch.long)
        out = model(
            input_ids=tokens,
            position_ids=torch.zeros_like(tokens),
            use_cache=True,
            logits_to_keep=1,
        )
        country = _draw(out.logits[:, -1], country_ok.expand(rows, -1), temperature, generator)
        drawn = [country]
        used = torch.zeros((rows, len(vocab)), dtype=torch.bool)
        done = torch.zeros(rows, dtype=torch.bool)
        cache, last = out.cache, country
        for step in range(max_items):
            position = torch.full((rows, 1), 1 + step, dtype=torch.long)
            out = model(
                input_ids=last[:, None],
                position_ids=position,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.cache
            allowed = (item_ok if step == 0 else item_or_eos_ok).expand(rows, -1)
            if no_repeat_items:
                allowed = allowed & ~used
            token = _draw(out.logits[:, -1], allowed, temperature, generator)
            # Finished rows keep decoding (the batch stays rectangular) but their draws are void.
            token = torch.where(done, torch.full_like(token, EOS_ID), token)
            used[torch.arange(rows), token] = True
            drawn.append(token)
            done |= token == EOS_ID
            last = token
            if bool(done.all()):
                break
        matrix = torch.stack(drawn, dim=1).tolist()
        for row in matrix:
            name, items = vocab.decode(row)
            # The masks make both impossible; checked so a bug cannot emit a malformed session.
            if name is None or not items:
                raise RuntimeError(f"sampler produced a malformed sequence {row[:5]}...")
            results.append((name, items))
        logger.info("sampled %d of %d synthetic sequences", len(results), n)
    return results
