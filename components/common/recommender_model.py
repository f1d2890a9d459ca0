"""The sequential recommender that train fits and export turns into ONNX.

A SASRec-style next-item model. Each position of a customer's history is the sum of

- a learned item id embedding,
- a linear projection of the item's MiniLM description embedding (a frozen buffer, so the
  content features travel inside the model and its ONNX graph),
- a price band embedding (also looked up from a buffer of the catalogue's bands),
- a learned position embedding counted from the first real item,
- customer features (when ``n_countries`` > 0): a learned embedding of the customer's country
  (one per sequence, index 0 = unknown or anonymous) and of the customer's activity at that
  position, the number of purchases before it on a log2 bucket scale. The count is
  ``n_before`` (purchases before the window, one int per row) plus the real items earlier in the
  window, so it never uses a later event,

followed by pre-norm causal self-attention blocks. The score of item ``i`` after a position with
state ``h`` has three parts:

- ``head(h)[i]``: a learned per-item output weight (collaborative signal);
- ``content_query(h) . text_basis[i]``: the state projected onto a fixed low-rank basis of the
  MiniLM vectors (their top principal directions, a buffer);
- ``band_query(h)[band[i]]``: a learned score per price band.

An item nobody bought still gets the last two from its description and price alone, so it can
be recommended from content (cold-start items). The content parts are Linear layers applied to
the per-sample state followed by fixed (non-trained) lookups, so per-sample gradients stay exact
under Opacus. Histories are left-padded with index 0.

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
    # Width of the fixed content basis the output layer scores against (principal directions of
    # the catalogue's MiniLM vectors); 0 turns content scoring off.
    content_dim: int = Field(default=32, ge=0)
    # Training only: the share of catalogue items whose learned per-item output weight is hidden
    # in a step, so their score must come from content and price band. Without it the per-item
    # weights explain every purchase and the content part learns nothing an unbought item could
    # use. 0 turns it off.
    id_dropout: float = Field(default=0.0, ge=0, lt=1)
    # Score items against the input item embeddings (SASRec's tying) instead of a separate
    # output matrix: fewer parameters, a strong regulariser on sparse data. Opacus' ghost
    # clipping cannot handle a layer used twice, so DP training keeps it off.
    tie_output: bool = False
    # Size of the country vocabulary (index 0 = unknown); 0 turns the customer features (country
    # and activity) off, which is what a model_config.json written before them describes.
    n_countries: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> RecommenderConfig:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return self


# Activity buckets: 0 purchases before, then 1, 2-3, 4-7, ..., 64-127, and 128 or more.
N_ACTIVITY_BUCKETS = 9


def activity_bucket(count: torch.Tensor) -> torch.Tensor:
    """Log2 bucket (int64, 0..N_ACTIVITY_BUCKETS - 1) of a count of earlier purchases.

    Bucket ``b`` >= 1 holds counts in ``2**(b-1) .. 2**b - 1``; the last bucket is open-ended.
    Written as a sum of comparisons so it stays exact integer work in the ONNX graph.
    """
    bounds = 2 ** torch.arange(N_ACTIVITY_BUCKETS - 1, device=count.device, dtype=torch.long)
    return (count.to(torch.long)[..., None] >= bounds).sum(dim=-1)


def content_basis(text: torch.Tensor, dim: int) -> torch.Tensor:
    """[n_items + 1, dim]: the catalogue's text vectors on their top ``dim`` principal directions.

    Row 0 (padding) stays zero. The sign of each direction is fixed (largest loading positive) so
    the basis is a deterministic function of the catalogue. A catalogue with fewer distinct
    directions than ``dim`` gets zero columns for the rest.
    """
    vocab = text.shape[0]
    out = torch.zeros(vocab, dim, dtype=torch.float32)
    if dim == 0 or vocab < 2:
        return out
    rows = text[1:].to(torch.float64)
    centred = rows - rows.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(dim, vh.shape[0])
    directions = vh[:k]
    signs = torch.sign(directions.gather(1, directions.abs().argmax(dim=1, keepdim=True)))
    directions = directions * torch.where(signs == 0, torch.ones_like(signs), signs)
    out[1:, :k] = (centred @ directions.T).to(torch.float32)
    return out


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
        # No bias: a per-item bias of an item that never appears as a target only ever gets
        # pushed down, which would bury cold items that content alone should surface.
        self.head = None if config.tie_output else nn.Linear(d, vocab, bias=False)
        self.register_buffer("text_basis", content_basis(text, config.content_dim))
        self.content_query = nn.Linear(d, config.content_dim) if config.content_dim else None
        self.band_query = nn.Linear(d, config.n_price_bands + 1)
        # Customer features; absent (not just zero) without them, so an old state dict loads.
        self.country_emb = nn.Embedding(config.n_countries, d) if config.n_countries else None
        self.activity_emb = nn.Embedding(N_ACTIVITY_BUCKETS, d) if config.n_countries else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden(
        self,
        item_ids: torch.Tensor,
        country_ids: torch.Tensor | None = None,
        n_before: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Contextual states [batch, T, d] of a left-padded history ``item_ids`` [batch, T].

        Args:
            item_ids: left-padded item indices.
            country_ids: [batch] country index per row (0 = unknown); None means all 0.
            n_before: [batch] purchases before the first item of the window; None means all 0.
        """
        real = item_ids != 0
        # Real items before each position (0 at the first real item); padding never shifts it.
        earlier = (torch.cumsum(real.to(torch.long), dim=1) - 1).clamp(min=0)
        # Longer histories than max_history share the last position row rather than failing.
        pos = earlier.clamp(max=self.config.max_history - 1)
        x = (
            self.item_emb(item_ids)
            + self.text_proj(F.embedding(item_ids, self.text_table))
            + self.band_emb(self.band_table[item_ids])
            + self.pos_emb(pos)
        )
        if self.country_emb is not None and self.activity_emb is not None:
            b = item_ids.shape[0]
            if country_ids is None:
                country_ids = torch.zeros(b, dtype=torch.long, device=item_ids.device)
            if n_before is None:
                n_before = torch.zeros(b, dtype=torch.long, device=item_ids.device)
            # Purchases strictly before each position: the ones before the window plus the real
            # items earlier in it. Nothing at or after the position is counted.
            count = n_before.to(torch.long)[:, None] + earlier
            x = x + self.country_emb(country_ids.to(torch.long))[:, None, :]
            x = x + self.activity_emb(activity_bucket(count))
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

    def _id_keep(self, h: torch.Tensor) -> torch.Tensor | None:
        """[n_items + 1] 0/1 mask of the per-item output weights used this step (None: all)."""
        if not self.training or self.config.id_dropout == 0:
            return None
        vocab = self.config.n_items + 1
        return (torch.rand(vocab, device=h.device) >= self.config.id_dropout).to(h.dtype)

    def output_table(self, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The three score parts folded into one item matrix [n_items + 1, d] and bias.

        ``h @ table.T + bias`` equals :meth:`score_states` with ``fused=False`` (up to rounding):
        the content and band parts are linear in ``h``, so their weights can be gathered per
        item once and the catalogue scored with a single matrix product.
        """
        weight = self.item_emb.weight if self.head is None else self.head.weight
        head = weight if keep is None else weight * keep[:, None]
        table = head + self.band_query.weight[self.band_table]
        bias = self.band_query.bias[self.band_table]
        if self.content_query is not None:
            table = table + self.text_basis @ self.content_query.weight
            bias = bias + self.text_basis @ self.content_query.bias
        return table, bias

    def score_states(self, h: torch.Tensor, *, fused: bool = True) -> torch.Tensor:
        """Scores [..., n_items + 1] of every item from states ``h`` [..., d].

        Args:
            h: contextual states.
            fused: one matrix product over :meth:`output_table` (fast; training without DP,
                evaluation, export). ``False`` calls each Linear layer on ``h`` itself, which
                Opacus needs to see per-sample activations; DP training uses that path.
        """
        keep = self._id_keep(h)
        if fused:
            table, bias = self.output_table(keep)
            return h @ table.T + bias
        if self.head is None:
            raise ConfigError("tie_output models score through the fused path only (no DP)")
        item_part = self.head(h) if keep is None else self.head(h) * keep
        scores = item_part + self.band_query(h)[..., self.band_table]
        if self.content_query is not None:
            scores = scores + self.content_query(h) @ self.text_basis.T
        return scores

    @property
    def has_customer_features(self) -> bool:
        """Whether country and activity reach the model (``n_countries`` > 0)."""
        return self.country_emb is not None

    def forward(
        self,
        item_ids: torch.Tensor,
        country_ids: torch.Tensor | None = None,
        n_before: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item scores [batch, T, n_items + 1] after every position (per-layer path)."""
        return self.score_states(self.hidden(item_ids, country_ids, n_before), fused=False)

    def score_next(
        self,
        item_ids: torch.Tensor,
        country_ids: torch.Tensor | None = None,
        n_before: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item scores [batch, n_items + 1] after the last position only."""
        return self.score_states(self.hidden(item_ids, country_ids, n_before)[:, -1, :])


class NextItemScorer(nn.Module):
    """The serving view of a recommender: history in, scores for the next item out."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.model.score_next(item_ids)


class CustomerScorer(nn.Module):
    """The serving view with customer features: history, country and activity in, scores out."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, item_ids: torch.Tensor, country_ids: torch.Tensor, n_before: torch.Tensor
    ) -> torch.Tensor:
        return self.model.score_next(item_ids, country_ids, n_before)


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
# The country vocabulary: {"countries": ["<unknown>", "France", ...]}, index = country id. Fuse
# writes it into training_set/, export copies it beside model.onnx, serving maps names with it.
COUNTRIES = "countries.json"
UNKNOWN_COUNTRY = "<unknown>"


def read_countries(path: str | Path) -> list[str]:
    """The country vocabulary of ``countries.json`` (index 0 is the unknown country).

    Raises:
        InputError: the file is missing, or the list is not strings starting with "<unknown>"
            without repeats.
    """
    raw = read_json(Path(path))
    names = raw.get("countries") if isinstance(raw, dict) else None
    if (
        not isinstance(names, list)
        or not names
        or names[0] != UNKNOWN_COUNTRY
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise InputError(
            f'countries must be a list of distinct names starting with "{UNKNOWN_COUNTRY}"',
            file=str(path),
            column="countries",
        )
    return names


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
