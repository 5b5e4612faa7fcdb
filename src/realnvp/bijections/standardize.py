"""A fixed affine standardisation, so a flow trained on standardised data scores raw data."""

from __future__ import annotations

import torch
from torch import Tensor

from realnvp.bijections.base import Bijection

__all__ = ["OUTLIER_RATIO", "Standardize"]

OUTLIER_RATIO = 10.0
"""A column whose standard deviation exceeds this many robust scales (IQR / 1.349) is
standardised by its median and robust scale instead (Gaussian data: a ratio near 1;
lognormal with sigma 1: about 2)."""


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
        """Set ``loc``/``scale`` from the rows of ``x``: per column the mean and standard
        deviation, or the median and ``IQR / 1.349`` (the standard deviation of a normal
        with that interquartile range) where the standard deviation is more than
        :data:`OUTLIER_RATIO` times that robust scale.

        A few extreme values (a 1e12 typed for a 1.2) inflate the standard deviation so
        much that the bulk of the column collapses to one float32 number: the flow then
        cannot tell the ordinary values apart, nor the outliers from them. Computed in
        float64.

        Example:
            >>> x = torch.cat([torch.randn(999, 1), torch.tensor([[1e12]])])
            >>> layer = Standardize.identity(1).fit(x)
            >>> bool(layer.scale < 2), bool(Standardize.identity(1).fit(x[:999]).scale < 2)
            (True, True)
        """
        x = x.detach().to(torch.float64)
        if x.shape[0] < 2:
            self.loc.copy_(x.mean(0))
            self.scale.fill_(1.0)
            self.initialized.fill_(True)
            return self
        mean, std = x.mean(0), x.std(0)
        ordered = x.sort(0).values
        n = x.shape[0]
        median = ordered[(n - 1) // 2]
        robust = (ordered[(3 * (n - 1)) // 4] - ordered[(n - 1) // 4]) / 1.349
        use = (robust > 0) & (std > OUTLIER_RATIO * robust)
        loc, scale = torch.where(use, median, mean), torch.where(use, robust, std)
        self.loc.copy_(loc)
        self.scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))
        self.initialized.fill_(True)
        return self

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = (x - self.loc) / self.scale
        return z, (-self.scale.log().sum()).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * self.scale + self.loc
        return x, self.scale.log().sum().expand(z.shape[0])
