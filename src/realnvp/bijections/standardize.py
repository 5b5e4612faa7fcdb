"""A fixed affine standardisation, so a flow trained on standardised data scores raw data."""

from __future__ import annotations

import torch
from torch import Tensor

from realnvp.bijections.base import Bijection

__all__ = ["Standardize"]


class Standardize(Bijection):
    r"""``z = (x - loc) / scale`` with fixed buffers; :math:`\log|\det J| = -\sum\log scale`.

    Put first in a flow, it makes ``log_prob`` be in the user's units while the rest of the
    flow sees standardised data. :meth:`fit` sets ``loc`` and ``scale`` from data.

    Example:
        >>> layer = Standardize(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
        >>> layer(torch.tensor([[3.0, 6.0]]))
        (tensor([[1., 1.]]), tensor([-2.0794]))
    """

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        loc = torch.as_tensor(loc, dtype=torch.get_default_dtype()).reshape(-1)
        scale = torch.as_tensor(scale, dtype=loc.dtype).reshape(-1)
        if loc.shape != scale.shape:
            raise ValueError(
                f"Expected loc and scale of equal length; got {loc.shape} and {scale.shape}"
            )
        if not bool((scale > 0).all()):
            raise ValueError("Expected a positive scale for every feature")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)
        self.register_buffer("initialized", torch.tensor(True))

    @classmethod
    def identity(cls, dim: int) -> Standardize:
        """The identity map on ``dim`` features, marked not initialised (see :meth:`fit`)."""
        layer = cls(torch.zeros(dim), torch.ones(dim))
        layer.initialized.fill_(False)
        return layer

    @torch.no_grad()
    def fit(self, x: Tensor) -> Standardize:
        """Set ``loc``/``scale`` to the mean and standard deviation of ``x`` (rows)."""
        x = x.to(self.loc.dtype)
        scale = x.std(0) if x.shape[0] > 1 else torch.ones_like(self.scale)
        self.loc.copy_(x.mean(0))
        self.scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))
        self.initialized.fill_(True)
        return self

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = (x - self.loc) / self.scale
        return z, (-self.scale.log().sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * self.scale + self.loc
        return x, self.scale.log().sum().expand(z.shape[0])
