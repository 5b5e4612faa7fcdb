"""Base distributions of the latent space."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["DiagonalNormal", "StandardNormal"]

_LOG_2PI = math.log(2 * math.pi)


class StandardNormal(nn.Module):
    r"""The standard normal :math:`\mathcal N(0, I_d)`; ``log_prob`` sums over features.

    Example:
        >>> StandardNormal(2).log_prob(torch.zeros(1, 2))
        tensor([-1.8379])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # Tracks the module's device and dtype so samples are created there.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.square().sum(-1) + self.dim * _LOG_2PI)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        a = self._anchor
        if generator is None or generator.device == a.device:
            return torch.randn(n, self.dim, generator=generator, device=a.device, dtype=a.dtype)
        z = torch.randn(n, self.dim, generator=generator, device=generator.device, dtype=a.dtype)
        return z.to(a.device)


class DiagonalNormal(StandardNormal):
    r"""A diagonal Gaussian with learned ``loc`` and ``log_scale``.

    Example:
        >>> DiagonalNormal(2).log_prob(torch.zeros(1, 2))
        tensor([-1.8379], grad_fn=<SubBackward0>)
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def log_prob(self, z: Tensor) -> Tensor:
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return super().log_prob(u) - self.log_scale.sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return super().sample(n, generator) * torch.exp(self.log_scale) + self.loc
