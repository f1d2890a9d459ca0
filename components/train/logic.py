"""The train step: DP-SGD sequential recommenders on real and real + synthetic sequences.

Two recommenders are trained with the same shape, schedule and privacy target:

- ``real_only``: real customers' training sequences only;
- ``real_plus_synthetic``: the fused set (real + synthetic, synthetic down-weighted). This is the
  one written as ``model.pt`` and deployed.

Each real customer is exactly one training record, so Opacus' per-record guarantee is a
per-customer one. Synthetic sequences come from the DP generator (post-processing of a DP
output), so they join the records without adding a privacy unit. Both models are compared with
a popularity baseline on the held-out test items of the leave-last-out split.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from components.common import artifacts as art
from components.common import canaries
from components.common.dp import make_private, prepare_noise_only_step
from components.common.errors import ConfigError, InputError, PrivacyError
from components.common.privacy import PrivacyRecord, compute_epsilon, default_delta
from components.common.recommender_model import (
    COUNTRIES,
    MODEL_CONFIG,
    MODEL_WEIGHTS,
    N_ACTIVITY_BUCKETS,
    RecommenderConfig,
    SequentialRecommender,
    build_model,
)
from components.train.config import TrainConfig
from components.train.data import TrainingSet, load_training_set, next_item_records
from components.train.evaluate import (
    evaluate_scorer,
    full_metrics,
    model_scores,
    popularity_scores,
)

logger = logging.getLogger(__name__)

METRICS = "metrics.json"
REAL_ONLY_PRIVACY = "real_only_privacy.json"
REAL_ONLY, FUSED, POPULARITY = "real_only", "real_plus_synthetic", "popularity"


class SequenceLoss(nn.Module):
    """Weighted next-item cross-entropy, one value per sequence.

    Each sequence's loss is the mean full-softmax cross-entropy over its positions that have a
    target (target 0 = nothing to predict), times the sequence's weight. ``reduction`` follows
    the torch convention ("none" gives [batch]); Opacus' ghost clipping switches it to "none" to
    get per-record losses.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        b, t, v = logits.shape
        ce = F.cross_entropy(
            logits.reshape(b * t, v), targets.reshape(b * t), reduction="none", ignore_index=0
        ).view(b, t)
        n_targets = (targets != 0).sum(dim=1).clamp(min=1)
        per_sequence = weights * ce.sum(dim=1) / n_targets
        if self.reduction == "none":
            return per_sequence
        if self.reduction == "sum":
            return per_sequence.sum()
        return per_sequence.mean()


def gathered_loss(
    model: SequentialRecommender,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    candidates: torch.Tensor | None = None,
    country_ids: torch.Tensor | None = None,
    n_before: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same value as ``SequenceLoss()(model(inputs), targets, weights)``, computed cheaply.

    Only positions with a target are scored, so a batch of short sequences in a long window does
    not pay for a [batch, T, catalogue] logit tensor. Used without DP only: gathering rows mixes
    the batch dimension, which Opacus' per-sample gradient hooks rely on.

    Args:
        model: the recommender.
        inputs: [batch, T] left-padded histories.
        targets: [batch, T] next items (0: nothing to predict).
        weights: [batch] sequence weights.
        candidates: optional [n_items + 1] bool; the softmax runs over these items only. Items
            outside it get no gradient, so an item nobody bought keeps an untrained per-item
            weight instead of one trained to say "never bought", and content decides its score.
        country_ids: [batch] country indices (None: unknown).
        n_before: [batch] purchases before each window (None: 0).
    """
    h = model.hidden(inputs, country_ids, n_before)
    mask = targets != 0
    n_targets = mask.sum(dim=1).clamp(min=1)
    row_weight = (weights / n_targets)[:, None].expand_as(targets)[mask]
    logits = model.score_states(h[mask])
    if candidates is not None:
        logits = logits.masked_fill(~candidates, float("-inf"))
    ce = F.cross_entropy(logits, targets[mask], reduction="none")
    return (row_weight * ce).sum() / inputs.shape[0]


def trim_padding(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row of a left-padded batch.

    Exact: positions count real items only and attention ignores padding keys, so the states of
    real positions do not change; it only saves the work on all-padding columns.
    """
    if inputs.shape[0] == 0:
        return inputs, targets
    used = (inputs != 0).any(dim=0) | (targets != 0).any(dim=0)
    nonzero = torch.nonzero(used)
    first = int(nonzero[0]) if nonzero.numel() else inputs.shape[1] - 1
    return inputs[:, first:].contiguous(), targets[:, first:].contiguous()


class LengthBucketSampler(torch.utils.data.Sampler):
    """Shuffled batches of sequences of similar length (training without DP only).

    Each epoch shuffles the records, sorts each run of 50 batches' worth by length, cuts it into
    batches and shuffles the batch order, so a batch wastes little work on padding. DP training
    does not use it: its guarantee assumes Poisson sampling.
    """

    def __init__(self, targets: torch.Tensor, batch_size: int, *, seed: int) -> None:
        self.lengths = (targets != 0).sum(dim=1).numpy()
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):  # noqa: ANN204 - a generator of index lists
        order = self.rng.permutation(len(self.lengths))
        chunk = 50 * self.batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [
                part[i : i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size)
            ]
        for b in self.rng.permutation(len(batches)):
            yield batches[b]


@dataclass
class FitResult:
    """A trained recommender with what it cost."""

    model: SequentialRecommender
    record: PrivacyRecord
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    # Process CPU seconds per epoch (all threads): comparable across runs on a shared machine.
    epoch_cpu_seconds: list[float] = field(default_factory=list)
    # With early stopping: validation NDCG@k after each epoch and the epoch (1-based) kept.
    valid_ndcg: list[float] = field(default_factory=list)
    best_epoch: int | None = None


def model_config_for(cfg: TrainConfig, ts: TrainingSet) -> RecommenderConfig:
    """The recommender's shape for this catalogue."""
    return RecommenderConfig(
        n_items=len(ts.item_map),
        n_price_bands=ts.n_price_bands,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        max_history=cfg.max_history,
        dropout=cfg.dropout,
        content_dim=cfg.content_dim,
        id_dropout=cfg.id_dropout,
        tie_output=cfg.tie_output,
        n_countries=len(ts.countries) if cfg.customer_features else 0,
    )


def _privacy_record(
    engine: Any, *, training: str, cfg: TrainConfig, delta: float, n_units: int
) -> PrivacyRecord:
    """Summarise the accountant's history (one noise level and sample rate) into a record."""
    history = list(engine.accountant.history)
    settings = {(float(noise), float(rate)) for noise, rate, _ in history}
    if len(settings) != 1:
        raise PrivacyError(f"expected one (noise, sample rate) over the training, got {settings}")
    (noise, rate), steps = settings.pop(), int(sum(s for _, _, s in history))
    return PrivacyRecord(
        training=training,
        dp=True,
        noise_multiplier=noise,
        sample_rate=rate,
        steps=steps,
        delta=delta,
        epsilon=float(engine.get_epsilon(delta)),
        accountant=cfg.dp.accountant,
        max_grad_norm=cfg.dp.max_grad_norm,
        n_units=n_units,
        target_epsilon=cfg.dp.target_epsilon,
    )


def fit(
    name: str,
    dataset: torch.utils.data.TensorDataset,
    ts: TrainingSet,
    cfg: TrainConfig,
    *,
    seed: int,
    n_units: int,
    delta: float,
    training: str,
    validate: Callable[[SequentialRecommender], float] | None = None,
) -> FitResult:
    """Train one recommender on ``dataset`` (one record per sequence), DP unless disabled.

    Args:
        name: a label for logs.
        dataset: inputs, targets and weights, one record per sequence.
        ts: the training set (catalogue features).
        cfg: the train settings.
        seed: seeds the initial weights, the batch sampling and the DP noise.
        n_units: real customers among the records (the privacy unit count).
        delta: the DP delta.
        training: the name written into the privacy record.
        validate: scores an eval-mode model on validation cases (higher is better); with
            ``cfg.early_stopping_patience`` it is called after every epoch and decides when to
            stop and which epoch's weights to keep. Needed exactly when patience is set.

    Returns:
        The trained model (a plain module, without Opacus hooks) and its privacy record.

    Raises:
        ConfigError: early stopping is configured without ``validate``, or with DP.
    """
    patience = cfg.early_stopping_patience
    if patience is not None and (validate is None or cfg.dp.enabled):
        raise ConfigError(
            f"train.early_stopping_patience={patience} needs a validation scorer and DP off "
            f"(dp.enabled={cfg.dp.enabled}, scorer given: {validate is not None})"
        )
    torch.manual_seed(seed)
    mcfg = model_config_for(cfg, ts)
    model = build_model(mcfg, ts.text_embeddings, ts.price_bands)
    model.train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    n_records = len(dataset)
    batch_size = min(cfg.batch_size, n_records)
    if cfg.dp.enabled:
        # Opacus replaces this with Poisson sampling (what the accountant assumes).
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
    else:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=LengthBucketSampler(dataset.tensors[1], batch_size, seed=seed),
        )
    # Without DP the softmax runs over the items that occur in the training records; with DP that
    # set is itself a function of private data, so every item stays in (see gathered_loss).
    candidates = None
    if not cfg.dp.enabled and cfg.mask_unseen_items:
        inputs_all, targets_all = dataset.tensors[:2]
        candidates = torch.zeros(mcfg.n_items + 1, dtype=torch.bool)
        candidates[inputs_all.reshape(-1)] = True
        candidates[targets_all.reshape(-1)] = True
        candidates[0] = False
    criterion: Any = SequenceLoss()
    train_model: nn.Module = model
    engine = None
    if cfg.dp.enabled:
        engine, train_model, optimizer, criterion, loader = make_private(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            loader=loader,
            dp=cfg.dp,
            delta=delta,
            epochs=cfg.epochs,
            grad_sample_mode=cfg.grad_sample_mode,
        )

    steps = cfg.epochs * len(loader)
    logger.info(
        "training %s: %d sequences (%d real customers), expected batch %d, %d steps/epoch, "
        "%d epochs, %d steps, %s",
        name,
        n_records,
        n_units,
        batch_size,
        len(loader),
        cfg.epochs,
        steps,
        (
            f"DP target epsilon {cfg.dp.target_epsilon} delta {delta:.3g} "
            f"noise {optimizer.noise_multiplier:.3f} clip {cfg.dp.max_grad_norm} "
            f"({cfg.grad_sample_mode})"
            if engine is not None
            else "no DP (no privacy guarantee)"
        ),
    )

    result_times, result_losses, result_cpu = [], [], []
    valid_ndcg: list[float] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int | None = None
    epochs_run = 0
    for epoch in range(cfg.epochs):
        started, cpu_started = time.perf_counter(), time.process_time()
        total, count = 0.0, 0
        for batch in loader:
            inputs, targets, weights = batch[:3]
            # Older 3-tensor datasets: every customer unknown, nothing before the window.
            country_ids = batch[3] if len(batch) > 3 else None
            n_before = batch[4] if len(batch) > 4 else None
            inputs, targets = trim_padding(inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            if inputs.shape[0] == 0:
                # An empty Poisson batch still takes its noise-only step, as the accountant
                # assumes: hand Opacus an empty per-sample gradient (hooks) or a zero sum (ghost).
                prepare_noise_only_step(optimizer, cfg.grad_sample_mode)
                optimizer.step()
                continue
            if engine is None:
                loss = gathered_loss(
                    model, inputs, targets, weights, candidates, country_ids, n_before
                )
            else:
                loss = criterion(train_model(inputs, country_ids, n_before), targets, weights)
            loss.backward()
            optimizer.step()
            total += float(loss.item()) * inputs.shape[0]
            count += inputs.shape[0]
        result_times.append(time.perf_counter() - started)
        result_cpu.append(time.process_time() - cpu_started)
        result_losses.append(total / max(count, 1))
        logger.info(
            "%s epoch %d/%d: loss %.4f, %.1f s (%.1f CPU s)",
            name,
            epoch + 1,
            cfg.epochs,
            result_losses[-1],
            result_times[-1],
            result_cpu[-1],
        )
        epochs_run = epoch + 1
        if patience is None or validate is None:
            continue

        # Early stopping (no DP): score this epoch's weights on the validation items, keep the
        # best, stop after `patience` epochs in a row without a gain.
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        valid_ndcg.append(
            float(validate(build_model(mcfg, ts.text_embeddings, ts.price_bands, state).eval()))
        )
        if best_epoch is None or valid_ndcg[-1] > valid_ndcg[best_epoch - 1]:
            best_state, best_epoch = state, epochs_run
        logger.info(
            "%s epoch %d: validation NDCG@%d %.4f (best %.4f at epoch %d)",
            name,
            epochs_run,
            cfg.k,
            valid_ndcg[-1],
            valid_ndcg[best_epoch - 1],
            best_epoch,
        )
        if epochs_run - best_epoch >= patience:
            logger.info(
                "%s: early stop after epoch %d, keeping epoch %d", name, epochs_run, best_epoch
            )
            break
    steps = epochs_run * len(loader)

    # A fresh module with the trained weights: no Opacus hooks or per-sample buffers left over.
    weights = best_state if best_state is not None else model.state_dict()
    trained = build_model(mcfg, ts.text_embeddings, ts.price_bands, weights).eval()
    if engine is not None:
        record = _privacy_record(engine, training=training, cfg=cfg, delta=delta, n_units=n_units)
    else:
        record = PrivacyRecord(
            training=training,
            dp=False,
            noise_multiplier=0.0,
            sample_rate=batch_size / n_records,
            steps=steps,
            delta=delta,
            epsilon=None,
            accountant=cfg.dp.accountant,
            max_grad_norm=None,
            n_units=n_units,
            target_epsilon=None,
        )
    return FitResult(
        trained, record, result_times, result_losses, result_cpu, valid_ndcg, best_epoch
    )


def validation_scorer(
    ts: TrainingSet, cfg: TrainConfig
) -> Callable[[SequentialRecommender], float]:
    """NDCG@k of a model on the validation items (each evaluated customer's second-to-last)."""
    ev = ts.eval_cases
    histories = [list(h) for h in ev["history"]]
    targets = ev["valid_item"].tolist()
    countries = ev["country_id"].tolist() if "country_id" in ev else None

    def score(model: SequentialRecommender) -> float:
        scores = model_scores(
            model,
            histories,
            country_ids=countries,
            max_history=cfg.max_history,
            batch_size=cfg.eval_batch_size,
        )
        return evaluate_scorer(scores, histories, targets, cfg.k)[f"ndcg@{cfg.k}"]

    return score


def _check_record(record: PrivacyRecord) -> None:
    """The recorded epsilon must be what the shared accountant function recomputes."""
    if not record.dp:
        return
    recomputed = compute_epsilon(
        noise_multiplier=record.noise_multiplier,
        sample_rate=record.sample_rate,
        steps=record.steps,
        delta=record.delta,
        accountant=record.accountant,
        n_units=record.n_units,
    )
    if record.epsilon is None or not math.isclose(recomputed, record.epsilon, rel_tol=0.02):
        raise PrivacyError(
            f"{record.training}: Opacus reported epsilon {record.epsilon} but the record "
            f"recomputes to {recomputed}"
        )


def run(cfg: TrainConfig, training_dir: Path, model_dir: Path, *, seed: int) -> dict[str, Any]:
    """Train the recommenders on ``training_set/`` and write ``recommender_model/``.

    Args:
        cfg: the train settings.
        training_dir: fuse's output.
        model_dir: where recommender_model/ is written (atomically).
        seed: seeds weights, sampling and DP noise.

    Returns:
        A summary: metrics, privacy figures of both trainings, sizes and timings.

    Raises:
        InputError: fuse's output is missing, malformed or has no real sequence.
        PrivacyError: the DP settings are invalid for this data (e.g. delta >= 1/customers).
    """
    timer = art.StepTimer("train")
    training_dir = Path(training_dir)
    ts = load_training_set(training_dir)
    # Audit: hold out a seeded share of real customers and add the included canary customers.
    ts, canary_set = canaries.prepare_recommender(
        ts, cfg.canaries, seed=seed, max_history=cfg.max_history
    )
    # Canary customers have no country: unknown (0), like an anonymous customer.
    ts = replace(
        ts,
        sequences=ts.sequences.assign(
            country_id=ts.sequences["country_id"].fillna(0).astype("int64")
        ),
    )
    real = ts.real
    n_real = len(real)
    if n_real == 0:
        raise InputError(
            "no real sequences to train on", file=str(training_dir / art.TRAIN_SEQUENCES)
        )
    delta = cfg.dp.delta if cfg.dp.delta is not None else default_delta(n_real)
    if cfg.dp.enabled and delta >= 1.0 / n_real:
        raise PrivacyError(
            f"train.dp.delta={delta} must be below 1/customers={1.0 / n_real:.3g} ({n_real} "
            "real customers) for a user-level guarantee"
        )
    if cfg.max_history < 2:
        raise ConfigError(f"train.max_history={cfg.max_history} must be >= 2")

    real_data = next_item_records(
        real["items"].tolist(),
        real["weight"].tolist(),
        cfg.max_history,
        country_ids=real["country_id"].tolist(),
    )
    fused_data = next_item_records(
        ts.sequences["items"].tolist(),
        ts.sequences["weight"].tolist(),
        cfg.max_history,
        country_ids=ts.sequences["country_id"].tolist(),
    )
    common: dict[str, Any] = {"seed": seed, "n_units": n_real, "delta": delta}
    if cfg.early_stopping_patience is not None:
        common["validate"] = validation_scorer(ts, cfg)
    real_fit = fit(REAL_ONLY, real_data, ts, cfg, training="recommender_real_only", **common)
    fused_fit = fit(FUSED, fused_data, ts, cfg, training="recommender", **common)
    for fitted in (real_fit, fused_fit):
        _check_record(fitted.record)

    # Evaluation: test = history (train items + valid item) -> test item; valid is reported for
    # information only (no model selection, which would spend privacy outside the accountant).
    ev = ts.eval_cases
    test_hist = [list(h) + [int(v)] for h, v in zip(ev["history"], ev["valid_item"], strict=True)]
    valid_hist = [list(h) for h in ev["history"]]
    test_target, valid_target = ev["test_item"].tolist(), ev["valid_item"].tolist()
    metrics: dict[str, Any] = {"n_eval": len(ev)}
    pop = popularity_scores(ts.popularity, len(ev))
    metrics[POPULARITY] = {
        **full_metrics(pop, test_hist, test_target, cfg.k),
        **_prefixed(evaluate_scorer(pop, valid_hist, valid_target, cfg.k)),
    }
    for label, fitted in ((REAL_ONLY, real_fit), (FUSED, fused_fit)):
        kwargs = {
            "max_history": cfg.max_history,
            "batch_size": cfg.eval_batch_size,
            "country_ids": ev["country_id"].tolist(),
        }
        test_scores = model_scores(fitted.model, test_hist, **kwargs)
        valid_scores = model_scores(fitted.model, valid_hist, **kwargs)
        metrics[label] = {
            **full_metrics(test_scores, test_hist, test_target, cfg.k),
            **_prefixed(evaluate_scorer(valid_scores, valid_hist, valid_target, cfg.k)),
        }
    logger.info(
        "test HR@%d / NDCG@%d: %s",
        cfg.k,
        cfg.k,
        ", ".join(
            f"{m} {metrics[m][f'hr@{cfg.k}']:.4f}/{metrics[m][f'ndcg@{cfg.k}']:.4f}"
            for m in (POPULARITY, REAL_ONLY, FUSED)
        ),
    )

    mcfg = model_config_for(cfg, ts)
    summary: dict[str, Any] = {
        "seed": seed,
        "metrics": metrics,
        "n_real_sequences": n_real,
        "n_synthetic_sequences": len(ts.sequences) - n_real,
        "n_items": len(ts.item_map),
        "dp": cfg.dp.enabled,
        "grad_sample_mode": cfg.grad_sample_mode if cfg.dp.enabled else None,
        "privacy": fused_fit.record.model_dump(),
        "real_only_privacy": real_fit.record.model_dump(),
        "epoch_seconds": {REAL_ONLY: real_fit.epoch_seconds, FUSED: fused_fit.epoch_seconds},
        "epoch_cpu_seconds": {
            REAL_ONLY: real_fit.epoch_cpu_seconds,
            FUSED: fused_fit.epoch_cpu_seconds,
        },
        "epoch_losses": {REAL_ONLY: real_fit.epoch_losses, FUSED: fused_fit.epoch_losses},
        "n_parameters": sum(p.numel() for p in fused_fit.model.parameters()),
        "customer_features": (
            {"country": len(ts.countries), "activity_buckets": N_ACTIVITY_BUCKETS}
            if mcfg.n_countries
            else None
        ),
    }
    with art.atomic_dir(model_dir) as tmp:
        torch.save(fused_fit.model.state_dict(), tmp / MODEL_WEIGHTS)
        art.write_json(tmp / MODEL_CONFIG, mcfg.model_dump())
        shutil.copyfile(training_dir / art.ITEM_MAP, tmp / art.ITEM_MAP)
        # The vocabulary the country ids index, for export and serving.
        art.write_json(tmp / COUNTRIES, {"countries": list(ts.countries)})
        art.write_json(tmp / art.PRIVACY, fused_fit.record.model_dump())
        art.write_json(tmp / REAL_ONLY_PRIVACY, real_fit.record.model_dump())
        canaries.save(tmp, canary_set)
        art.write_json(tmp / METRICS, metrics)
        timer.write(tmp, summary)
    return summary


def _prefixed(values: dict[str, float]) -> dict[str, float]:
    return {f"valid_{k}": v for k, v in values.items()}
