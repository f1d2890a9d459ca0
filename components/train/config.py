"""Settings of the train step (sequential recommender)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.common.canaries import CanaryConfig
from components.common.errors import ConfigError
from components.common.privacy import DPConfig
from components.common.strict import StrictModel

# How Opacus gets per-sample gradient norms. "ghost" computes the norms without materialising
# per-sample gradients (hooks mode keeps a batch x catalogue x width gradient per item table);
# for this model it gives the same clipped gradient as "hooks" (tested) and is faster.
GradSampleMode = Literal["ghost", "hooks"]


class TrainConfig(StrictModel):
    """The recommender's shape and its (DP-)SGD schedule.

    The defaults are sized so both DP trainings of the demo (about 3,000 customers, 3,500 items,
    2,000 synthetic sequences) finish in a few minutes on 2 CPU cores.
    """

    d_model: int = Field(default=64, ge=8)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=2, ge=1)
    # Items of history the model sees; a longer sequence trains on its last max_history + 1.
    max_history: int = Field(default=20, ge=2)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    # Width of the fixed MiniLM content basis the output layer scores against; 0 turns it off
    # (then an item with no purchases has no useful score). Under DP-SGD the content part is
    # scored per position: on the demo data a DP epoch took 19.4 CPU s at width 32 against 15.0
    # at 0, so the default is 16.
    content_dim: int = Field(default=16, ge=0)
    # Share of items whose per-item output weight is hidden in each training step, so the
    # content part learns to score items on its own (what an item nobody bought relies on).
    id_dropout: float = Field(default=0.1, ge=0, lt=1)
    # Without DP: the training softmax runs over items that occur in the training sequences only,
    # so an item nobody bought is never trained towards "not bought" and content scores it (a
    # new item). Ignored with DP, where that item set is itself private.
    mask_unseen_items: bool = True
    # Output scores use the input item embeddings (SASRec's weight tying). Without DP only:
    # Opacus' ghost clipping refuses a layer used twice.
    tie_output: bool = False
    # Customer features: the customer's country (countries.json of the training set) and
    # activity (log2 bucket of earlier purchases) as embeddings added to every position.
    customer_features: bool = True
    # With early stopping, the most epochs; otherwise the epochs trained.
    epochs: int = Field(default=5, ge=1)
    # Without DP only: after each epoch the model is scored on the validation items (each
    # customer's second-to-last item), training stops once this many epochs in a row have not
    # raised validation NDCG@k, and the best epoch's weights are kept. None trains all ``epochs``.
    # With DP it is refused: the stopping epoch would be chosen on real customers' items outside
    # the accountant, and the noise is calibrated to the planned number of steps anyway.
    early_stopping_patience: int | None = Field(default=None, ge=1)
    # Expected batch size: with Poisson sampling each sequence joins a step with probability
    # batch_size / n_sequences, so actual batches vary around this.
    batch_size: int = Field(default=256, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    dp: DPConfig = DPConfig(target_epsilon=4.0)
    grad_sample_mode: GradSampleMode = "ghost"
    # Audit data for dp_audit: canary customers and the held-out share of real customers
    # (components.common.canaries).
    canaries: CanaryConfig = CanaryConfig()
    k: int = Field(default=10, ge=1)
    eval_batch_size: int = Field(default=512, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"train.d_model={self.d_model} must be divisible by train.n_heads={self.n_heads}"
            )
        if self.tie_output and self.dp.enabled:
            raise ConfigError(
                "train.tie_output=true needs train.dp.enabled=false: ghost clipping cannot "
                "clip a layer used twice"
            )
        if self.early_stopping_patience is not None and self.dp.enabled:
            raise ConfigError(
                f"train.early_stopping_patience={self.early_stopping_patience} needs "
                "train.dp.enabled=false: choosing the stopping epoch on real validation items "
                "would release information outside the DP accountant; set it to null under DP"
            )
        return self
