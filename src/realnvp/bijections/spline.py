"""Rational-quadratic spline coupling (Durkan et al. 2019): monotone splines with linear tails."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from realnvp.bijections._kernels import SPLINE
from realnvp.bijections.coupling import Coupling

__all__ = ["RationalQuadraticCoupling", "rq_derivatives", "rq_knots", "rq_spline"]

_MIN_BIN_SIZE = 1e-3
"""Smallest bin width or height, as a fraction of the interval ``[-B, B]``."""

_MIN_DERIVATIVE = 1e-3
"""Smallest derivative at an interior knot."""

_SOFTPLUS_OF_ONE = math.log(math.expm1(1.0))
"""The ``c`` with ``softplus(c) = 1``: a zero raw derivative then means derivative 1."""


def rq_knots(unnormalized: Tensor, bound: float, min_size: float = _MIN_BIN_SIZE) -> Tensor:
    """Knots ``-B = k_0 < k_1 < ... < k_K = B`` from ``K`` unnormalised bin sizes.

    Bin sizes are ``min_size + (1 - K * min_size) * softmax(unnormalized)`` as fractions of
    ``[-B, B]``, so equal raw sizes (all zero, say) give equal bins. Shape ``(..., K + 1)``.

    Example:
        >>> rq_knots(torch.zeros(4), bound=2.0)
        tensor([-2., -1.,  0.,  1.,  2.])
    """
    bins = unnormalized.shape[-1]
    sizes = min_size + (1 - bins * min_size) * torch.softmax(unnormalized, dim=-1)
    inner = 2 * bound * torch.cumsum(sizes[..., :-1], dim=-1) - bound
    end = inner.new_full((*inner.shape[:-1], 1), bound)
    return torch.cat([-end, inner, end], dim=-1)


def rq_derivatives(unnormalized: Tensor, min_derivative: float = _MIN_DERIVATIVE) -> Tensor:
    """Derivatives at all ``K + 1`` knots from ``K - 1`` unnormalised interior ones.

    Interior: ``d_min + (1 - d_min) * softplus(u + c) / softplus(c)`` with
    ``softplus(c) = 1``, so ``u = 0`` gives exactly 1. The two boundary derivatives are 1,
    which joins the spline to its identity tails without a kink.

    Example:
        >>> rq_derivatives(torch.zeros(2))
        tensor([1., 1., 1., 1.])
    """
    shifted = unnormalized + _SOFTPLUS_OF_ONE
    # softplus(c) is 1 up to rounding; dividing by it makes u = 0 give 1 on every device.
    unit = F.softplus(shifted) / F.softplus(torch.full_like(shifted, _SOFTPLUS_OF_ONE))
    floor = torch.full_like(unit, min_derivative)
    interior = floor + (1 - floor) * unit
    one = interior.new_ones((*interior.shape[:-1], 1))
    return torch.cat([one, interior, one], dim=-1)


def rq_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""A monotone rational-quadratic spline on ``[-B, B]``, the identity outside.

    ``widths`` and ``heights`` hold ``K`` unnormalised bin sizes (see :func:`rq_knots`),
    ``derivatives`` the ``K - 1`` unnormalised interior derivatives (see
    :func:`rq_derivatives`); their leading dimensions broadcast with ``x``. Returns the
    image of ``x`` (its preimage when ``inverse``) and the elementwise
    :math:`\log|dy/dx|` (:math:`\log|dx/dy|` when ``inverse``). Bins hold at least 1e-3
    of the interval and interior derivatives are at least 1e-3. Each bin is evaluated as
    ``x`` plus a correction that vanishes exactly when ``s = d_k = d_{k+1} = 1``, so
    all-zero parameters give the identity map bit for bit, in float32 and float64.

    Example:
        >>> x = torch.tensor([-7.0, -5.0, 0.3, 5.0])
        >>> w, h, d = torch.zeros(3), torch.tensor([1.0, 0.0, -1.0]), torch.zeros(2)
        >>> y, log_det = rq_spline(x, w, h, d, bound=5.0)
        >>> y
        tensor([-7.0000, -5.0000,  3.0552,  5.0000])
        >>> torch.allclose(rq_spline(y, w, h, d, bound=5.0, inverse=True)[0], x)
        True
    """
    _check_spline(widths, heights, derivatives, bound)
    shape = torch.broadcast_shapes(
        x.shape, widths.shape[:-1], heights.shape[:-1], derivatives.shape[:-1]
    )
    x = x.expand(shape)
    x_knots = _expand(rq_knots(widths, bound), shape)
    y_knots = _expand(rq_knots(heights, bound), shape)
    slopes = _expand(rq_derivatives(derivatives), shape)
    inside = (x >= -bound) & (x <= bound)
    x_in = x.clamp(-bound, bound)  # keeps the unused branch finite, so gradients stay finite
    if inverse:
        y, log_det = _rq_inverse(x_in, x_knots, y_knots, slopes)
    else:
        y, log_det = _rq_forward(x_in, x_knots, y_knots, slopes)
    return torch.where(inside, y, x), torch.where(inside, log_det, 0.0)


def _check_spline(widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float) -> None:
    bins = widths.shape[-1] if widths.dim() else 0
    if bins < 1 or heights.shape[-1:] != (bins,) or derivatives.shape[-1:] != (bins - 1,):
        raise ValueError(
            "Expected widths and heights of K >= 1 entries and derivatives of K - 1 in the "
            f"last dimension; got shapes {tuple(widths.shape)}, {tuple(heights.shape)} and "
            f"{tuple(derivatives.shape)}"
        )
    if bins * _MIN_BIN_SIZE >= 1:
        raise ValueError(f"Expected fewer than {round(1 / _MIN_BIN_SIZE)} bins; got {bins}")
    if not bound > 0:
        raise ValueError(f"Expected a positive bound; got {bound}")


def _expand(knots: Tensor, shape: torch.Size) -> Tensor:
    return knots.expand(*shape, knots.shape[-1])


def _locate(knots: Tensor, values: Tensor) -> Tensor:
    """Index ``k`` of the bin ``[knots[k], knots[k + 1]]`` holding each value, as ``(..., 1)``."""
    index = torch.searchsorted(knots.contiguous(), values.unsqueeze(-1).contiguous(), right=True)
    return (index - 1).clamp(0, knots.shape[-1] - 2)


def _ends(knots: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The left and right end of bin ``index`` of ``knots``."""
    pair = knots.gather(-1, torch.cat([index, index + 1], dim=-1))
    return pair[..., 0], pair[..., 1]


def _log_slope(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
    """``log dy/dx`` at bin fraction ``xi`` of a bin with mean slope ``s``, end slopes d0, d1."""
    u = 1 - xi
    denominator = s + (d0 + d1 - 2 * s) * xi * u
    # d1 xi^2 + 2 s xi u + d0 u^2, grouped so that s = d0 = d1 = 1 gives exactly 1.
    numerator = xi * (d1 * xi + s * u) + u * (s * xi + d0 * u)
    return 2 * torch.log(s) + torch.log(numerator) - 2 * torch.log(denominator)


def _rq_forward(
    x: Tensor, x_knots: Tensor, y_knots: Tensor, slopes: Tensor
) -> tuple[Tensor, Tensor]:
    index = _locate(x_knots, x)
    (x0, x1), (y0, y1), (d0, d1) = (_ends(t, index) for t in (x_knots, y_knots, slopes))
    s = (y1 - y0) / (x1 - x0)
    dx = x - x0
    xi = dx / (x1 - x0)
    u = 1 - xi
    ratio = s * (s * xi + d0 * u) / (s + (d0 + d1 - 2 * s) * xi * u)  # (y - y0) / (x - x0)
    # x plus a correction that vanishes exactly at the identity parameters.
    y = x + ((y0 - x0) + dx * (ratio - 1))
    return y, _log_slope(xi, s, d0, d1)


def _rq_inverse(
    y: Tensor, x_knots: Tensor, y_knots: Tensor, slopes: Tensor
) -> tuple[Tensor, Tensor]:
    index = _locate(y_knots, y)
    (x0, x1), (y0, y1), (d0, d1) = (_ends(t, index) for t in (x_knots, y_knots, slopes))
    w, h = x1 - x0, y1 - y0
    s = h / w
    dy = y - y0
    # a xi^2 + b xi + c = 0; the root 2c / (-b - sqrt(b^2 - 4ac)) avoids cancellation.
    a = h * (s - d0) + dy * (d0 + d1 - 2 * s)
    b = h * d0 - dy * (d0 + d1 - 2 * s)
    c = -s * dy
    root = torch.sqrt((b * b - 4 * a * c).clamp_min(0))
    ratio = 2 * h / (b + root)  # (x - x0) / (y - y0), so xi = dy * ratio / w
    x = y + ((x0 - y0) + dy * (ratio - 1))
    xi = (dy * ratio / w).clamp(0, 1)
    return x, -_log_slope(xi, s, d0, d1)


class RationalQuadraticCoupling(Coupling):
    r"""Neural spline coupling: a monotone rational-quadratic spline per feature.

    Within bin :math:`k` of width :math:`w_k`, height :math:`h_k`, mean slope
    :math:`s_k = h_k / w_k` and knot derivatives :math:`d_k, d_{k+1}`, with
    :math:`\xi = (x - x_k) / w_k \in [0, 1]`,

    .. math::
        y = y_k + \frac{h_k \left[s_k \xi^2 + d_k \xi (1 - \xi)\right]}
                       {s_k + (d_{k+1} + d_k - 2 s_k)\, \xi (1 - \xi)},
        \qquad
        \frac{dy}{dx} = \frac{s_k^2 \left[d_{k+1} \xi^2 + 2 s_k \xi (1 - \xi)
                              + d_k (1 - \xi)^2\right]}
                             {\left[s_k + (d_{k+1} + d_k - 2 s_k)\, \xi (1 - \xi)\right]^2},

    and the inverse solves a quadratic in :math:`\xi` (Gregory & Delbourgo 1982; Durkan et
    al. 2019, "Neural Spline Flows", arXiv:1906.04032). The spline maps ``[-B, B]`` onto
    itself in ``bins`` bins; outside it the map is the identity, and the boundary
    derivatives are fixed at 1, so the map is C1 everywhere. The conditioner gives each
    transformed feature ``3 * bins - 1`` numbers: ``bins`` widths, ``bins`` heights and
    ``bins - 1`` interior derivatives, all unnormalised (see :func:`rq_spline`). As the
    conditioner's last layer starts at zero, the layer starts as the identity, exactly.

    The flow's first layer standardises the data (mean 0, sd 1), so the default
    ``bound=5.0`` covers nearly all of it (a Gaussian puts about 6e-7 of its mass beyond
    5 sd); points outside pass through the identity tails, still exactly invertible.
    ``input_bound`` squashes what the conditioner sees, as in :class:`Coupling`.

    Example:
        >>> from realnvp.bijections.masks import half_mask
        >>> layer = RationalQuadraticCoupling(half_mask(3), bins=4)
        >>> x = torch.randn(5, 3)
        >>> z, log_det = layer(x)
        >>> torch.equal(z, x), torch.equal(log_det, torch.zeros(5))
        (True, True)
        >>> torch.equal(layer.inverse(z)[0], x)
        True
    """

    def __init__(
        self,
        mask: Tensor,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        context_features: int = 0,
        bins: int = 8,
        bound: float = 5.0,
        input_bound: float | None = 10.0,
    ) -> None:
        if int(bins) < 2:
            raise ValueError(f"Expected bins >= 2 (one bin is the identity); got {bins}")
        if not bound > 0:
            raise ValueError(f"Expected a positive bound; got {bound}")
        # Set before Coupling.__init__, which sizes the conditioner from it.
        self.bins = int(bins)
        self.bound = float(bound)
        self.params_per_feature = 3 * self.bins - 1
        super().__init__(mask, hidden, activation, context_features, input_bound)

    def _constants_key(self, like: Tensor) -> tuple[Any, ...]:
        """What the compiled training step's description of this layer depends on besides
        the parameters themselves."""
        return (self.input_bound, self.bound, self.bins, like.dtype, like.device)

    def _training_spec(self) -> tuple[Any, ...] | None:
        """This layer for the compiled training step (:mod:`realnvp.training.native`):
        ``(SPLINE, kept, transformed, kept view, transformed view, conditioner params,
        input bound (0: none), B, bins, True)``; None with context, a tanh conditioner,
        hooks, or a subclass that changes the map."""
        cls = type(self)
        if (self.context_features or self.activation != "relu" or self._forward_hooks
                or self._forward_pre_hooks or self.conditioner._forward_hooks
                or self.conditioner._forward_pre_hooks
                or cls.forward is not Coupling.forward
                or cls._transform is not RationalQuadraticCoupling._transform
                or cls._params is not Coupling._params
                or cls._conditioner_input is not Coupling._conditioner_input):
            return None
        bound = 0.0 if self.input_bound is None else float(self.input_bound)
        return (SPLINE, *self._halves(), self.conditioner.flat_parameters(), bound, self.bound,
                self.bins, True)

    def _spline_params(self, params: Tensor, features: Tensor) -> list[Tensor]:
        """Split ``(batch, n * (3K - 1))`` into widths, heights and derivatives per feature."""
        per_feature = params.reshape(*features.shape, self.params_per_feature)
        return list(per_feature.split([self.bins, self.bins, self.bins - 1], dim=-1))

    def _transform(self, x2: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        widths, heights, derivatives = self._spline_params(params, x2)
        y2, log_det = rq_spline(x2, widths, heights, derivatives, self.bound)
        return y2, log_det.sum(dim=-1)

    def _untransform(self, z2: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        widths, heights, derivatives = self._spline_params(params, z2)
        x2, log_det = rq_spline(z2, widths, heights, derivatives, self.bound, inverse=True)
        return x2, log_det.sum(dim=-1)
