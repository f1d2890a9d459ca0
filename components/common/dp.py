"""DP-SGD pieces both trainings share."""

from __future__ import annotations

from typing import Any


def prepare_noise_only_step(optimizer: Any, grad_sample_mode: str) -> None:
    """Give an Opacus DP optimizer the gradients of an empty Poisson batch.

    Poisson sampling can draw nobody. The accountant assumes every step adds noise, so skipping an
    empty batch would release a noiseless "no update" whose probability depends on the data and
    would break the guarantee. After this call ``optimizer.step()`` adds pure noise and the step
    counts. Ghost clipping reads ``.grad``; hooks and functorch read ``.grad_sample``.
    """
    import torch

    for param in optimizer.params:
        if grad_sample_mode == "ghost":
            param.grad = torch.zeros_like(param)
        else:
            param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype)


def make_private(
    *,
    model: Any,
    optimizer: Any,
    criterion: Any,
    loader: Any,
    dp: Any,
    delta: float,
    epochs: int,
    grad_sample_mode: str,
) -> tuple[Any, Any, Any, Any, Any]:
    """Wrap a training for DP-SGD at ``dp.target_epsilon``; the one place both trainings do it.

    Poisson sampling is always on: the accountants' guarantee assumes it. Ghost clipping also
    wraps the criterion (it computes per-sample norms in a second backward pass); the other modes
    leave it as it is.

    Returns:
        ``(engine, model, optimizer, criterion, loader)``, all wrapped by Opacus.
    """
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant=dp.accountant)
    wrapped = engine.make_private_with_epsilon(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        target_epsilon=dp.target_epsilon,
        target_delta=delta,
        epochs=epochs,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=grad_sample_mode,
    )
    if grad_sample_mode == "ghost":
        model, optimizer, criterion, loader = wrapped
    else:
        model, optimizer, loader = wrapped
    return engine, model, optimizer, criterion, loader
