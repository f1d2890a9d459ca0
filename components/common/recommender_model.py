"""The sequential recommender that train fits and export turns into ONNX.

A SASRec-style next-item model. Each position of a customer's history is the sum of

- a learned item id embedding,
- a linear projection of the item's MiniLM description embedding (a frozen buffer, so the
  content features travel inside the model and its ONNX graph),
- a price band embedding (also looked up from a buffer of the catalogue's bands),
- a learned position embedding counted from the first real item,

followed by pre-norm causal self-attention blocks and an untied output layer that scores every
item of the catalogue. Histories are left-padded with index 0.

Every trainable layer is an ``nn.Linear``, ``nn.Embedding`` or ``nn.LayerNorm`` that runs once
per forward pass, so Opacus can compute per-sample gradient norms for all of them (ghost
clipping included). Attention is written out with plain tensor ops for the same reason and so the
ONNX export needs no special operators.

Padding never reaches a real position: positions count real items only, and attention masks
padding keys (each position may always attend to itself, so a padding row never sees an
all-masked row and never produces NaN).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError, model_validator
from torch import nn
from torch.nn import functional as F  # noqa: N812

from components.common.artifacts import read_json
from components.common.errors import ConfigError, InputError
from components.common.strict import StrictModel

TEXT_DIM = 384  # all-MiniLM-L6-v2 output width


class RecommenderConfig(StrictModel):
    """Shape of one recommender; saved as ``model_config.json`` beside the weights."""

    n_items: int = Field(ge=1)
    n_price_bands: int = Field(ge=1)
    d_model: int = Field(default=64, ge=8)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=2, ge=1)
    max_history: int = Field(default=50, ge=2)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    text_dim: int = Field(default=TEXT_DIM, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> RecommenderConfig:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return self


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention over a left-padded history, built from two Linear layers."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Attend where ``allowed`` [batch, 1, T, T] is True; x is [batch, T, d]."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # [batch, heads, T, head_dim]
        q = q.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        att = att.masked_fill(~allowed, float("-inf"))
        att = self.dropout(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm transformer block: attention then a two-layer MLP, each with a residual."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.fc_in = nn.Linear(d_model, 4 * d_model)
        self.fc_out = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_attn(x), allowed))
        return x + self.dropout(self.fc_out(F.gelu(self.fc_in(self.ln_mlp(x)))))


class SequentialRecommender(nn.Module):
    """Scores the next item after every position of a left-padded history.

    Args:
        config: the model's shape.
        text_embeddings: [n_items + 1, text_dim] MiniLM vectors by item index (row 0 padding).
        price_bands: [n_items + 1] price band of each item index (row 0 ignored).
    """

    def __init__(
        self, config: RecommenderConfig, text_embeddings: torch.Tensor, price_bands: torch.Tensor
    ) -> None:
        super().__init__()
        vocab = config.n_items + 1
        if tuple(text_embeddings.shape) != (vocab, config.text_dim):
            raise ConfigError(
                f"text_embeddings has shape {tuple(text_embeddings.shape)}; "
                f"expected ({vocab}, {config.text_dim})"
            )
        if tuple(price_bands.shape) != (vocab,):
            raise ConfigError(
                f"price_bands has shape {tuple(price_bands.shape)}; expected ({vocab},)"
            )
        bands = price_bands.to(torch.long).clone()
        if bands[1:].numel() and (bands[1:].min() < 0 or bands[1:].max() >= config.n_price_bands):
            raise ConfigError(f"price bands must lie in 0..{config.n_price_bands - 1}")
        self.config = config
        # Frozen catalogue features: buffers, so they are saved with the weights and baked into
        # the ONNX graph, but never trained (and never clipped or noised by DP-SGD).
        text = text_embeddings.to(torch.float32).clone()
        text[0] = 0.0
        self.register_buffer("text_table", text)
        bands = bands + 1  # 0 is kept for padding
        bands[0] = 0
        self.register_buffer("band_table", bands)

        d = config.d_model
        self.item_emb = nn.Embedding(vocab, d)
        self.text_proj = nn.Linear(config.text_dim, d)
        self.band_emb = nn.Embedding(config.n_price_bands + 1, d)
        self.pos_emb = nn.Embedding(config.max_history, d)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.ln_final = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Contextual states [batch, T, d] of a left-padded history ``item_ids`` [batch, T]."""
        real = item_ids != 0
        # Positions count real items from the first one, so padding never shifts them; longer
        # histories than max_history share the last position row rather than failing.
        pos = (torch.cumsum(real.to(torch.long), dim=1) - 1).clamp(0, self.config.max_history - 1)
        x = (
            self.item_emb(item_ids)
            + self.text_proj(F.embedding(item_ids, self.text_table))
            + self.band_emb(self.band_table[item_ids])
            + self.pos_emb(pos)
        )
        x = self.emb_dropout(x)
        t = item_ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=item_ids.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=item_ids.device)
        # [batch, 1, T(query), T(key)]: earlier-or-same real keys, and always the position itself.
        allowed = (causal[None, :, :] & real[:, None, :]) | eye[None, :, :]
        allowed = allowed[:, None, :, :]
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_final(x)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Next-item scores [batch, T, n_items + 1] after every position."""
        return self.head(self.hidden(item_ids))

    def score_next(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Next-item scores [batch, n_items + 1] after the last position only."""
        return self.head(self.hidden(item_ids)[:, -1, :])


class NextItemScorer(nn.Module):
    """The serving view of a recommender: history in, scores for the next item out."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.model.score_next(item_ids)


def build_model(
    config: RecommenderConfig,
    text_embeddings: torch.Tensor,
    price_bands: torch.Tensor,
    state_dict: dict[str, Any] | None = None,
) -> SequentialRecommender:
    """Build a recommender, optionally loading trained weights (strictly: every key must match)."""
    model = SequentialRecommender(config, text_embeddings, price_bands)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model


MODEL_WEIGHTS = "model.pt"
MODEL_CONFIG = "model_config.json"


def load_recommender(model_dir: str | Path) -> SequentialRecommender:
    """Load a trained recommender (``model_config.json`` + ``model.pt``) in eval mode.

    The catalogue features are buffers of the state dict, so the weights file alone restores them.

    Raises:
        InputError: when either file is missing or the weights do not fit the config.
    """
    model_dir = Path(model_dir)
    raw = read_json(model_dir / MODEL_CONFIG)
    try:
        config = RecommenderConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(
            f"invalid recommender config: {exc}", file=str(model_dir / MODEL_CONFIG)
        ) from exc
    weights = model_dir / MODEL_WEIGHTS
    if not weights.is_file():
        raise InputError("expected artifact file is missing", file=str(weights))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    vocab = config.n_items + 1
    model = SequentialRecommender(
        config, torch.zeros(vocab, config.text_dim), torch.zeros(vocab, dtype=torch.long)
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"weights do not fit model_config.json: {exc}", file=str(weights)) from exc
    return model.eval()
