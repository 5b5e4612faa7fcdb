"""Normalisation layers counted in the Jacobian: ActNorm (Glow) and BatchNorm (RealNVP)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from realnvp.bijections.base import Bijection

__all__ = ["ActNorm", "BatchNorm"]


class ActNorm(Bijection):
    r"""Per-feature affine ``z = (x - loc) * exp(-log_scale)`` (Kingma & Dhariwal 2018).

    On the first forward pass in training mode, ``loc`` and ``log_scale`` are set from the
    batch so that its output has zero mean and unit variance. The ``initialized`` flag is a
    buffer, so a saved and reloaded model never re-initialises.
    :math:`\log|\det J| = -\sum_j \mathrm{log\_scale}_j`.

    Example:
        >>> layer = ActNorm(2)
        >>> z, _ = layer(torch.randn(100, 2) * 5 + 3)
        >>> bool(z.mean(0).abs().max() < 1e-5)
        True
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        self.loc.copy_(x.mean(0))
        std = x.std(0) if x.shape[0] > 1 else torch.ones_like(self.log_scale)
        self.log_scale.copy_(std.clamp_min(1e-6).log())
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self._initialize(x)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(x.shape[0])

    def rowwise(self) -> bool:
        return not self.training or bool(self.initialized)  # else the batch initialises it

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * torch.exp(self.log_scale) + self.loc
        return x, self.log_scale.sum().expand(z.shape[0])


class BatchNorm(Bijection):
    r"""Batch normalisation as a bijection (Dinh et al. 2016, section 3.7).

    ``z = (x - mu) / sqrt(var + eps) * exp(log_gamma) + beta`` with the batch statistics in
    training mode (running averages are updated) and the running ones in eval mode and in
    the inverse. :math:`\log|\det J| = \sum_j \log\gamma_j - \tfrac12\log(\sigma^2_j+\epsilon)`.

    Example:
        >>> layer = BatchNorm(2).eval()
        >>> z, log_det = layer(torch.zeros(3, 2))
        >>> z.shape, log_det.shape
        (torch.Size([3, 2]), torch.Size([3]))
    """

    def __init__(self, dim: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training or x.shape[0] < 2:
            return self.running_mean, self.running_var
        mean, var = x.mean(0), x.var(0, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach(), self.momentum)
        return mean, var

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self._stats(x)
        log_scale = self.log_gamma - 0.5 * torch.log(var + self.eps)
        z = (x - mean) * torch.exp(log_scale) + self.beta
        return z, log_scale.sum().expand(x.shape[0])

    def rowwise(self) -> bool:
        return not self.training  # training mode normalises by the batch's statistics

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale = self.log_gamma - 0.5 * torch.log(self.running_var + self.eps)
        x = (z - self.beta) * torch.exp(-log_scale) + self.running_mean
        return x, (-log_scale.sum()).expand(z.shape[0])
