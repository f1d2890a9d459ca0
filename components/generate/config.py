"""Settings of the generate step (DP causal LM over customer item sequences)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.common.canaries import CanaryConfig
from components.common.privacy import DPConfig
from components.common.strict import StrictModel

ClippingMode = Literal["ghost", "hooks", "functorch"]


class GenerateConfig(StrictModel):
    """How the synthetic-session generator is built, trained with DP-SGD and sampled.

    The defaults fit the bundled Online Retail sample (~3,200 customers, ~3,400 items) into about
    three minutes of training on 2 CPU cores. ``size`` picks a named model shape
    (``components.generate.model.SIZES``): ``tiny`` for tests, ``small`` for CPU runs, ``base``
    for a GPU. More ``epochs`` at the same ``target_epsilon`` mean more noise per step, not a
    weaker guarantee.
    """

    # llama (default) or gpt2, both with untied input and output embeddings; gpt2's Conv1D layers
    # have no Opacus grad sampler and fall back to functorch per-sample gradients (slower).
    architecture: Literal["llama", "gpt2"] = "llama"
    size: Literal["tiny", "small", "base"] = "small"
    # Tokens per sequence including bos, the condition tokens and eos (64 holds 59 items);
    # longer sequences keep their most recent items.
    max_length: int = Field(default=64, ge=8, le=1024)
    epochs: int = Field(default=3, ge=1)
    # Expected batch size: with Poisson sampling each customer joins a step with probability
    # batch_size / n_customers, so the actual batch varies around this. On the demo data, 256
    # (39 steps, noise 0.91 at epsilon 4) reached a lower loss than 64 or 128 in the same time:
    # per-sample cost is the same, and larger batches drown the noise better.
    batch_size: int = Field(default=256, ge=1)
    learning_rate: float = Field(default=1e-2, gt=0)
    # A user-level (customer) guarantee; delta defaults to 1 / (10 * customers trained on).
    dp: DPConfig = DPConfig(target_epsilon=8.0)
    # Contribution bounding. "history": a customer is one sequence, their whole training history
    # (most recent items kept). "invoice": a customer gives one sequence per invoice (items first
    # bought together), at most max_sequences_per_customer of them, the most recent. Either way
    # a customer is one row of DP-SGD: their sequences are packed into that row (attention never
    # crosses sequences) and the row's gradient, the sum over their sequences, is clipped once,
    # so the accountant's unit stays the customer whatever the number of sequences.
    session_split: Literal["history", "invoice"] = "history"
    max_sequences_per_customer: int = Field(default=1, ge=1, le=1000)
    # Most tokens one customer's packed row may hold (None: max_sequences * max_length). Older
    # sequences go first when a customer has more.
    max_tokens_per_customer: int | None = Field(default=None, ge=8)
    # Conditioning tokens after the country: month of the sequence's first purchase and the
    # median price band of its items (needs items.parquet's price_band).
    condition_month: bool = True
    condition_price_band: bool = True
    # A category token after the band where items.parquet has a category column with values
    # (Amazon Beauty); a no-op for data without categories (Online Retail, Diginetica).
    condition_category: bool = True
    # Loss weights of condition targets (country, month, band) and of eos against an item's 1
    # (train.SequenceLoss says why DP-SGD needs them). They shape what each customer's clipped
    # gradient teaches, not how much it may change the model, so the guarantee is unchanged.
    # On the demo data at epsilon 4 (one run each): the previous generator (no month or band,
    # weights 1/1) gave sessions of 18.7 items against 33.7 real; 5/0.6 gave 34.8 against 31.7
    # held out (length JSD 0.06); 20/0.8 learnt the country no better and the items worse
    # (item-popularity JSD 0.29 against 0.19). 0.6 is near what per-customer normalisation
    # predicts: eos weighs E[1/L] instead of 1/E[L].
    condition_loss_weight: float = Field(default=5.0, gt=0, le=100)
    eos_loss_weight: float = Field(default=0.6, gt=0, le=100)
    # A local folder written by save_pretrained (e.g. an earlier generate run's generator_model/)
    # to start from instead of a fresh model of `architecture`/`size`. With a vocab.json there,
    # its vocabulary is reused (data outside it is dropped); without one, the model's token
    # embeddings are resized to this data's vocabulary.
    pretrained_path: str | None = Field(default=None, min_length=1)
    # Ghost clipping computes per-sample gradient norms without materialising per-sample
    # gradients (it needs untied embeddings); hooks and functorch are slower fallbacks that give
    # the same clipping.
    clipping: ClippingMode = "ghost"
    n_synthetic: int = Field(default=2000, ge=0)
    temperature: float = Field(default=1.0, gt=0)
    # Temperature of the sampled conditions (country, month, band, category). DP-SGD leaves the
    # model over-sure of the largest country (demo, epsilon 4: 99.5 % United Kingdom against
    # 90 % real) while it ranks the others right, so a softer draw restores the mix. Chosen by
    # `make bench-generator` on a validation half of the held-out customers (mean condition JSD
    # over the epsilon 1/4/8 models; bench/results/generator.json, condition_temperature):
    # 1.0: 0.0211, 1.25: 0.0178, 1.5: 0.0193, 2.0: 0.0359; on the test half 1.25 and 1.5 tie
    # (0.0219 each). The non-private model wants 1.0 (it is not over-sure). Post-processing of
    # the DP model (no privacy cost), fixed here rather than fitted per run, which would need
    # its own accounting.
    condition_temperature: float = Field(default=1.25, gt=0, le=10)
    # Sampling filters for the synthetic set: None leaves them off (see sample.sample_sessions).
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    # Write synthetic/quality.html and quality.json (fidelity, utility, privacy against the
    # customers held out of training by `canaries.holdout_fraction`).
    quality_report: bool = True
    # Epochs of the report's train-on-synthetic check with the pipeline's recommender (trained on
    # the synthetic sessions, and once on the real training sessions for reference, both without
    # DP; see components.generate.utility). About 5 CPU s an epoch per source on the demo data;
    # 0 leaves it out (the first-order utility figures stay).
    quality_recommender_epochs: int = Field(default=5, ge=0, le=100)
    # Rows decoded together when sampling; memory grows with it, speed saturates early on CPU.
    sample_batch_size: int = Field(default=500, ge=1)
    # Synthetic sequences never repeat an item, like the real ones (distinct items in order of
    # first purchase).
    no_repeat_items: bool = True
    # torch intra-op threads for training and sampling (None: torch's default, all cores, for
    # training; 1 for sampling). On the 2-core demo machine under load, one thread trained the
    # demo config in 210 s against 370 s for two, with identical results, so 1 is the default.
    num_threads: int | None = Field(default=1, ge=1)
    # Audit data for dp_audit: canary customers and the held-out share of real customers
    # (components.common.canaries).
    canaries: CanaryConfig = CanaryConfig()
