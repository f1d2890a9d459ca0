"""DP-SGD training of the generator with Opacus, one row per customer.

The unit of privacy is one customer. A customer gives one or more token sequences (bounded in
number and tokens by the caller, see ``components.generate.logic.customer_records``); they are
packed side by side into one training row, with positions restarting at 0 for each sequence.
transformers reads the restarts as packed sequences and masks attention across them, so each
sequence is modelled exactly as if it were alone (tested). Poisson sampling then decides
independently for each customer (row) whether it joins a step, and each row's gradient, the
gradient of the customer's loss summed over all their sequences, is clipped to
``dp.max_grad_norm`` before Gaussian noise is added. The accountant's epsilon is therefore a
guarantee about any one customer's whole contribution, however many sequences it has.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from components.common.dp import make_private, prepare_noise_only_step
from components.common.errors import ConfigError, PrivacyError
from components.common.privacy import PrivacyRecord, default_delta
from components.generate.config import GenerateConfig
from components.generate.tokenizer import EOS_ID, PAD_ID, SPECIAL_TOKENS

logger = logging.getLogger(__name__)

IGNORE = -100  # target id that cross-entropy skips: padding after eos
FIRST_CONDITION_ID = len(SPECIAL_TOKENS)  # condition tokens follow the specials
LOG_EVERY = 10  # steps between progress lines


@dataclass
class TrainResult:
    """What one training produced besides the weights."""

    privacy: PrivacyRecord
    steps: int
    final_loss: float  # mean per-sequence loss over the last epoch's steps
    epoch_losses: list[float] = field(default_factory=list)
    clipping: str | None = None
    empty_batches: int = 0


class SequenceLoss(nn.Module):
    """Weighted cross-entropy over each row's (customer's) real tokens, then over the batch.

    Each target token weighs 1, except condition targets (country, month, band: ids
    ``FIRST_CONDITION_ID`` up to ``first_item_id - 1``), which weigh ``condition_weight``, and
    eos, which weighs ``eos_weight``. A row's loss is the weighted mean over its targets.

    Why weights: DP-SGD clips each customer's gradient to the same norm, so what a customer
    teaches is the direction of its gradient, in which one country target among ~35 item
    targets is a small share; under the noise the model then learns little beyond "mostly the
    largest country". Weighting the few condition targets up gives them a fixed share of every
    customer's clipped gradient. The same per-customer normalisation makes a short sequence's
    eos weigh more than a long one's items, so an unweighted model ends sessions early;
    ``eos_weight`` below 1 counters that. Neither changes the privacy guarantee: any loss of a
    customer's own data is clipped as one unit.

    With ``reduction="none"`` it returns one loss per row, which is what Opacus' ghost clipping
    needs: the privacy unit is the whole row (one customer), not a token.
    """

    def __init__(
        self,
        *,
        first_item_id: int | None = None,
        condition_weight: float = 1.0,
        eos_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.reduction = "mean"
        self.first_item_id = first_item_id
        self.condition_weight = float(condition_weight)
        self.eos_weight = float(eos_weight)

    def token_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """The weight of each target (0 at padding)."""
        weights = (targets != IGNORE).float()
        if self.first_item_id is not None and self.condition_weight != 1.0:
            is_condition = (targets >= FIRST_CONDITION_ID) & (targets < self.first_item_id)
            weights = torch.where(is_condition, weights * self.condition_weight, weights)
        if self.eos_weight != 1.0:
            weights = torch.where(targets == EOS_ID, weights * self.eos_weight, weights)
        return weights

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch, length, vocab = logits.shape
        per_token = F.cross_entropy(
            logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view(batch, length)
        weights = self.token_weights(targets)
        per_sequence = (per_token * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-12)
        if self.reduction == "none":
            return per_sequence
        if self.reduction == "sum":
            return per_sequence.sum()
        return per_sequence.mean()


# A customer's records: one token sequence, or a list of them.
CustomerRecord = Sequence[int] | Sequence[Sequence[int]]


def customer_sequences(record: CustomerRecord) -> list[list[int]]:
    """The token sequences of one customer's record (a flat sequence is one sequence)."""
    if len(record) and not isinstance(record[0], (list, tuple)):
        return [[int(t) for t in record]]  # type: ignore[union-attr]
    return [[int(t) for t in seq] for seq in record]  # type: ignore[union-attr]


def pack_records(
    records: Sequence[CustomerRecord], max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One right-padded row per customer: inputs, next-token targets and positions.

    Each of a customer's sequences ``s`` adds ``s[:-1]`` to the inputs, ``s[1:]`` to the targets
    and positions ``0..len(s)-2``, so no target crosses from one sequence into the next. Padding
    has input ``pad``, target ``IGNORE`` and position 0.

    Returns:
        Three ``[n_customers, width]`` int64 tensors, ``width`` the longest packed row.

    Raises:
        ConfigError: a sequence longer than ``max_length`` tokens.
    """
    rows = []
    for row, record in enumerate(records):
        inputs, targets, positions = [], [], []
        for seq in customer_sequences(record):
            if len(seq) > max_length:
                raise ConfigError(
                    f"customer record {row} has a sequence of {len(seq)} tokens, above "
                    f"max_length={max_length}"
                )
            inputs.extend(seq[:-1])
            targets.extend(seq[1:])
            positions.extend(range(len(seq) - 1))
        rows.append((inputs, targets, positions))
    width = max((len(r[0]) for r in rows), default=1) or 1
    out_inputs = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    out_targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    out_positions = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (inputs, targets, positions) in enumerate(rows):
        out_inputs[row, : len(inputs)] = torch.as_tensor(inputs, dtype=torch.long)
        out_targets[row, : len(targets)] = torch.as_tensor(targets, dtype=torch.long)
        out_positions[row, : len(positions)] = torch.as_tensor(positions, dtype=torch.long)
    return out_inputs, out_targets, out_positions


def _trim(
    inputs: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch cut to its longest real row (contiguous: Opacus views embedding inputs flat)."""
    longest = max(int((targets != IGNORE).sum(dim=1).max()), 1)
    return (
        inputs[:, :longest].contiguous(),
        targets[:, :longest].contiguous(),
        positions[:, :longest].contiguous(),
    )


@contextlib.contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Silence Opacus warnings that are expected here and say nothing actionable.

    Secure RNG is off (the noise comes from torch's seeded generator, so runs are reproducible);
    the embedding's input ids need no gradient; the PRV accountant's internal RDP bound asks for
    more orders at high noise. Other warnings still surface.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


def train_generator(
    model: nn.Module,
    records: Sequence[CustomerRecord],
    cfg: GenerateConfig,
    *,
    seed: int,
    first_item_id: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on one record (one or more sequences) per customer.

    With ``cfg.dp.enabled`` this is DP-SGD: Opacus picks the noise multiplier that spends
    ``cfg.dp.target_epsilon`` over ``cfg.epochs`` at the expected batch size, and the epsilon
    recorded is the accountant's for the steps actually taken. Without DP the record says so
    (``dp=False``, ``epsilon=None``, noise 0) and the audit fails any deployment of it.

    Raises:
        ConfigError: the batch size exceeds the number of customers.
        PrivacyError: ``cfg.dp.delta`` is not below ``1 / n_customers``.
    """
    n_customers = len(records)
    if n_customers == 0:
        raise ConfigError("the generator has no customers to train on")
    if cfg.batch_size > n_customers:
        raise ConfigError(
            f"generate.batch_size={cfg.batch_size} exceeds the {n_customers} customers; "
            "use a batch size at most the number of customers"
        )
    delta = cfg.dp.delta if cfg.dp.delta is not None else default_delta(n_customers)
    if delta >= 1.0 / n_customers:
        raise PrivacyError(
            f"generate.dp.delta={delta} must be below 1/n_customers={1.0 / n_customers:.3g} "
            f"({n_customers} customers) for a customer-level guarantee"
        )

    torch.manual_seed(seed)
    data = TensorDataset(*pack_records(records, cfg.max_length))
    loader = DataLoader(
        data,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    criterion: nn.Module = SequenceLoss(
        first_item_id=first_item_id,
        condition_weight=cfg.condition_loss_weight,
        eos_weight=cfg.eos_loss_weight,
    )
    model.train()
    engine = None
    noise = 0.0
    steps_per_epoch = len(loader)
    if cfg.dp.enabled:
        with _quiet_opacus():
            engine, model, optimizer, criterion, loader = make_private(
                model=model,
                optimizer=optimizer,
                criterion=criterion,
                loader=loader,
                dp=cfg.dp,
                delta=delta,
                epochs=cfg.epochs,
                grad_sample_mode=cfg.clipping,
            )
        noise = float(optimizer.noise_multiplier)
    sample_rate = 1.0 / steps_per_epoch if cfg.dp.enabled else cfg.batch_size / n_customers
    logger.info(
        "generator training: %d customers, expected batch %.1f (sample rate %.4f), %d epochs x %d "
        "steps = %d steps, dp=%s target epsilon %s delta %.2e noise %.4f clipping %s",
        n_customers,
        n_customers * sample_rate,
        sample_rate,
        cfg.epochs,
        steps_per_epoch,
        cfg.epochs * steps_per_epoch,
        cfg.dp.enabled,
        cfg.dp.target_epsilon if cfg.dp.enabled else None,
        delta,
        noise,
        cfg.clipping if cfg.dp.enabled else None,
    )

    steps = empty = 0
    epoch_losses: list[float] = []
    started = time.perf_counter()
    with _quiet_opacus():
        for epoch in range(cfg.epochs):
            total, count = 0.0, 0
            for batch in loader:
                if batch[0].shape[0] == 0:
                    # Poisson sampling drew nobody. The accountant counts this step, so it must
                    # still add noise; without DP there is nothing to do.
                    empty += 1
                    if engine is None:
                        continue
                    prepare_noise_only_step(optimizer, cfg.clipping)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
                    continue
                inputs, targets, positions = _trim(*batch)
                # No cache: with one, transformers would not read the position restarts as
                # packed sequences and attention would cross a customer's sequences.
                logits = model(input_ids=inputs, position_ids=positions, use_cache=False).logits
                loss = criterion(logits, targets)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                value = float(loss.item())
                total += value
                count += 1
                if steps % LOG_EVERY == 0:
                    logger.info(
                        "step %d epoch %d loss %.4f (%.1f s)",
                        steps,
                        epoch + 1,
                        value,
                        time.perf_counter() - started,
                    )
            epoch_losses.append(total / max(count, 1))
            logger.info("epoch %d done: mean loss %.4f", epoch + 1, epoch_losses[-1])
    if empty:
        logger.info("%d Poisson batches were empty: noise-only steps", empty)

    if engine is not None:
        history = engine.accountant.history
        accounted = sum(h[2] for h in history)
        if accounted != steps or len({(h[0], h[1]) for h in history}) > 1:
            raise PrivacyError(
                f"accountant history {history} disagrees with the {steps} steps taken"
            )
        sample_rate = float(history[0][1]) if history else sample_rate
        epsilon = float(engine.get_epsilon(delta)) if steps else 0.0
    else:
        epsilon = None
    if epsilon is not None and not math.isfinite(epsilon):
        raise PrivacyError(f"the accountant returned a non-finite epsilon {epsilon}")
    record = PrivacyRecord(
        training="generator",
        dp=cfg.dp.enabled,
        noise_multiplier=noise,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        epsilon=epsilon,
        accountant=cfg.dp.accountant,
        max_grad_norm=cfg.dp.max_grad_norm if cfg.dp.enabled else None,
        n_units=n_customers,
        target_epsilon=cfg.dp.target_epsilon if cfg.dp.enabled else None,
    )
    if engine is not None and hasattr(model, "cleanup"):
        # Detach Opacus' hooks and per-parameter attributes from the model trained in place, so
        # later forwards and save_pretrained see a plain transformers model.
        model.cleanup()
    logger.info(
        "generator trained: %d steps in %.1f s, final loss %.4f, epsilon %s",
        steps,
        time.perf_counter() - started,
        epoch_losses[-1],
        None if epsilon is None else round(epsilon, 4),
    )
    return TrainResult(
        privacy=record,
        steps=steps,
        final_loss=epoch_losses[-1],
        epoch_losses=epoch_losses,
        clipping=cfg.clipping if cfg.dp.enabled else None,
        empty_batches=empty,
    )
