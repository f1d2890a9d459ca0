"""The generator network: a transformers causal LM built from a named size, never from a hub.

Input and output embeddings are untied on purpose: Opacus ghost clipping refuses a parameter used
twice in one forward pass, and untied tables also let the output layer learn item popularity
separately from item similarity.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from components.common.errors import ConfigError, InputError
from components.generate.tokenizer import BOS_ID, EOS_ID, PAD_ID

logger = logging.getLogger(__name__)

# hidden, layers, heads, feed-forward width. small is sized to the CPU budget of the demo
# (~3 minutes of DP-SGD on 2 cores for ~3,200 customers); base wants a GPU.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64},
    "small": {"hidden": 96, "layers": 2, "heads": 4, "ffn": 192},
    "base": {"hidden": 256, "layers": 4, "heads": 8, "ffn": 768},
}


def build_model(architecture: str, size: str, vocab_size: int, max_length: int) -> torch.nn.Module:
    """A freshly initialised causal LM over ``vocab_size`` tokens and ``max_length`` positions.

    Raises:
        ConfigError: an unknown architecture or size.
    """
    if size not in SIZES:
        raise ConfigError(f"generate.size={size!r} is not one of {sorted(SIZES)}")
    shape = SIZES[size]
    common = {
        "vocab_size": vocab_size,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "tie_word_embeddings": False,
    }
    if architecture == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=shape["hidden"],
            intermediate_size=shape["ffn"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            num_key_value_heads=shape["heads"],
            max_position_embeddings=max_length,
            attn_implementation="sdpa",
            **common,
        )
        model = LlamaForCausalLM(config)
    elif architecture == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_embd=shape["hidden"],
            n_inner=shape["ffn"],
            n_layer=shape["layers"],
            n_head=shape["heads"],
            n_positions=max_length,
            attn_implementation="sdpa",
            **common,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ConfigError(f"generate.architecture={architecture!r} is not 'llama' or 'gpt2'")
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "built %s/%s generator: vocab %d, max_length %d, %d parameters",
        architecture,
        size,
        vocab_size,
        max_length,
        n_params,
    )
    return model


def load_model(directory: str | os.PathLike[str]) -> torch.nn.Module:
    """Load a generator saved with ``save_pretrained`` (local files only), in eval mode."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise InputError("generator model config is missing", file=str(directory / "config.json"))
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    model.eval()
    return model


def load_pretrained(
    path: str | os.PathLike[str], vocab_size: int, max_length: int, *, clipping: str
) -> torch.nn.Module:
    """A local checkpoint (``save_pretrained`` folder) to continue training from.

    Its token embeddings are resized to ``vocab_size`` when they differ (new rows are freshly
    initialised), which is what a checkpoint without this data's ``vocab.json`` needs.

    Raises:
        InputError: the folder lacks a model config.
        ConfigError: the checkpoint ties its embeddings while ghost clipping is asked for, or
            has fewer positions than ``max_length``.
    """
    model = load_model(path)
    model.train()
    config = model.config
    if getattr(config, "tie_word_embeddings", False) and clipping == "ghost":
        raise ConfigError(
            f"the checkpoint at {path} ties its input and output embeddings, which Opacus ghost "
            "clipping refuses; use generate.clipping 'hooks' or 'functorch', or untie them"
        )
    positions = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    if positions is not None and positions < max_length:
        raise ConfigError(
            f"generate.max_length={max_length} exceeds the checkpoint's {positions} positions "
            f"({path})"
        )
    if config.vocab_size != vocab_size:
        logger.info(
            "resizing the checkpoint's token embeddings from %d to %d",
            config.vocab_size,
            vocab_size,
        )
        model.resize_token_embeddings(vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "loaded pretrained %s generator from %s: %d parameters", config.model_type, path, n_params
    )
    return model


def position_ids_like(input_ids: torch.Tensor) -> torch.Tensor:
    """Positions ``0..T-1`` for every row, materialised per row.

    Opacus computes per-sample gradients from the batch dimension of every input; a broadcast
    ``[1, T]`` position tensor (or an ``expand``-ed view) makes a learned position table look
    like one sample, so each row gets its own copy.
    """
    batch, length = input_ids.shape
    return torch.arange(length, device=input_ids.device).repeat(batch, 1)
