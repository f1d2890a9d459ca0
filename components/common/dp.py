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
