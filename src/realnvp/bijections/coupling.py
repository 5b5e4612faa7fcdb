"""Coupling layers: keep the masked features, transform the rest given them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from realnvp.bijections import _pieces
from realnvp.bijections._fused import FUSED_ACTIVATIONS, fused_affine
from realnvp.bijections._kernels import (
    COUPLING,
    bound_constants,
    merge_columns,
    run_chain,
    take_columns,
)
from realnvp.bijections.base import Bijection
from realnvp.nn import MLP

__all__ = ["AdditiveCoupling", "AffineCoupling", "Coupling"]


class Coupling(Bijection):
    r"""The coupling skeleton: split by ``mask``, condition on the kept half.

    With ``x1 = x[mask]`` (kept) and ``x2 = x[~mask]`` (transformed),
    ``y1 = x1`` and ``y2 = g(x2; theta(x1, context))`` for an elementwise bijection ``g``
    whose parameters ``theta`` come from one conditioner network. Subclasses say how many
    parameters ``g`` takes per feature (:attr:`params_per_feature`) and implement
    :meth:`_transform` / :meth:`_untransform`. Halves are gathered and scattered by index,
    never by multiplying with the mask, so the kept half passes through bit for bit.

    The conditioner sees ``b * tanh(x1 / b)`` with ``b = input_bound`` (about the identity
    on standardised data, whose values are mostly within a few units): far outliers then
    cannot drive ``theta`` to extreme values, so the layer stays finite and numerically
    invertible for inputs as large as 1e6. ``None`` feeds ``x1`` as it is.
    """

    params_per_feature: int = 2

    def __init__(
        self,
        mask: Tensor,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        context_features: int = 0,
        input_bound: float | None = 10.0,
    ) -> None:
        super().__init__()
        if input_bound is not None and not input_bound > 0:
            raise ValueError(f"Expected a positive input_bound or None; got {input_bound}")
        self.input_bound = input_bound
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if bool(mask.all()):
            raise ValueError("Expected a mask that leaves at least one feature to transform")
        self.register_buffer("mask", mask)
        self.register_buffer("kept", mask.nonzero().reshape(-1))
        self.register_buffer("transformed", (~mask).nonzero().reshape(-1))
        self.context_features = int(context_features)
        n_in = int(mask.sum()) + self.context_features
        n_out = int((~mask).sum()) * self.params_per_feature
        self.conditioner = MLP(n_in, n_out, hidden, activation)
        self.activation = activation
        self._refresh_views()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _refresh_views(self) -> None:
        """Views instead of gathers when kept/transformed indices are evenly spaced."""
        self._kept_view = _as_view(self.kept)
        self._transformed_view = _as_view(self.transformed)

    def _halves(self) -> tuple[Tensor, Tensor, list[int], list[int]]:
        """The kernels' description of the halves: indices, and views where they exist."""
        return self.kept, self.transformed, self._kept_view, self._transformed_view

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (take_columns(x, self.kept, self._kept_view),
                take_columns(x, self.transformed, self._transformed_view))

    def _merge(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Full rows from the kept half ``x1`` and the transformed half ``x2``."""
        return merge_columns(x1, x2, self.kept, self.transformed, self._kept_view,
                             self._transformed_view)

    def _conditioner_input(self, x1: Tensor, context: Tensor | None) -> Tensor:
        """``b tanh(x1 / b)``, then the context appended (the context is never bounded)."""
        if self.input_bound is not None:
            x1 = torch.tanh(x1 * (1.0 / self.input_bound)) * self.input_bound
        if self.context_features:
            if context is None:
                raise ValueError(
                    f"Expected a context of {self.context_features} features; got None"
                )
            x1 = torch.cat([x1, context], dim=-1)
        return x1

    def _params(self, x1: Tensor, context: Tensor | None) -> Tensor:
        return self.conditioner(self._conditioner_input(x1, context))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = self._split(x)
        y2, log_det = self._forward_transformed(x1, x2, context)
        return self._merge(x1, y2), log_det

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z1, z2 = self._split(z)
        x2, log_det = self._untransform(z2, self._params(z1, context))
        return self._merge(z1, x2), log_det

    def _forward_transformed(
        self, x1: Tensor, x2: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return self._transform(x2, self._params(x1, context))

    def _transform(self, x2: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _untransform(self, z2: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class AffineCoupling(Coupling):
    r"""RealNVP's affine coupling (Dinh et al. 2016, arXiv:1605.08803).

    .. math::
        y_1 = x_1,\qquad y_2 = x_2 \odot \exp(s(x_1)) + t(x_1),\qquad
        \log|\det J| = \textstyle\sum_j s_j(x_1)

    and the inverse :math:`x_2 = (y_2 - t(y_1)) \odot \exp(-s(y_1))`. ``s`` and ``t`` are
    the two halves of one conditioner's output; the log-scale is bounded smoothly as
    ``s = c * tanh(s_raw / c)`` with ``c = scale_bound`` (``None`` for no bound).

    Example:
        >>> from realnvp.bijections.masks import half_mask
        >>> layer = AffineCoupling(half_mask(2))
        >>> z, log_det = layer(torch.randn(5, 2))
        >>> z.shape, log_det.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(
        self,
        mask: Tensor,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        context_features: int = 0,
        scale_bound: float | None = 3.0,
        input_bound: float | None = 10.0,
    ) -> None:
        super().__init__(mask, hidden, activation, context_features, input_bound)
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"Expected a positive scale_bound or None; got {scale_bound}")
        self.scale_bound = scale_bound
        self._consts: tuple[Any, list[Tensor]] = (None, [])
        self._pieces = _pieces.PieceTables()

    def _constants_key(self, like: Tensor) -> tuple[Any, ...]:
        """What :meth:`_constants` depend on: the bounds, and the parameters' dtype and device."""
        return (self.input_bound, self.scale_bound, like.dtype, like.device)

    def _constants(self, like: Tensor) -> list[Tensor]:
        """The bounds as 0-dim tensors like the parameters, for the kernels; made again
        whenever a bound, the dtype or the device has changed since."""
        key = self._constants_key(like)
        if self._consts[0] != key:
            self._consts = (key, bound_constants(_or_zero(self.input_bound),
                                                 _or_zero(self.scale_bound), like))
        return self._consts[1]

    def _scripted(self) -> bool:
        """Plain conditioner, no context, no autograd: the TorchScript kernels apply."""
        return (not torch.is_grad_enabled() and not self.context_features
                and self.activation in FUSED_ACTIVATIONS
                and not self.conditioner._forward_hooks
                and not self.conditioner._forward_pre_hooks)

    def _kernel_args(self) -> tuple[list[Tensor], float, float, list[Tensor], bool]:
        params = self.conditioner.flat_parameters()
        return (params, _or_zero(self.input_bound), _or_zero(self.scale_bound),
                self._constants(params[-1]), self.activation == "relu")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self._scripted():  # scoring and sampling: the compiled kernels
            return run_chain([self._scoring_kernel_spec(x.shape[0])], x, inverse=False)
        return super().forward(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self._scripted():
            return run_chain([self._scoring_kernel_spec(z.shape[0])], z, inverse=True)
        return super().inverse(z, context)

    def _kernel_spec(self) -> tuple[Any, ...]:
        """This coupling as an entry of the chain kernels (see :func:`run_chain`)."""
        return (COUPLING, *self._halves(), *self._kernel_args())

    def _scoring_kernel_spec(self, rows: int) -> tuple[Any, ...]:
        """:meth:`_kernel_spec` for scoring or sampling ``rows`` rows (see :meth:`_tabled`)."""
        return self._tabled(self._kernel_spec(), rows)

    def _tabled(self, spec: tuple[Any, ...], rows: int) -> tuple[Any, ...]:
        """``spec`` with the tables of the conditioner's linear pieces in place of its
        weights where they pay (:mod:`realnvp.bijections._pieces`): a one-input ReLU
        conditioner of 64-64 or wider, on the CPU, a call of 256 rows or more, after enough
        rows scored with the same weights."""
        params = spec[5]
        if (not _pieces.USE_TABLES or rows < _pieces.LOOKUP_MIN_ROWS
                or self.activation != "relu" or params[0].shape[1] != 1
                or params[0].device.type != "cpu"
                or params[0].dtype not in (torch.float32, torch.float64)
                or not _pieces.worth_tables(params)):
            return spec
        tables = self._pieces.get(params, self.input_bound, rows)
        return spec if tables is None else (*spec[:5], tables, *spec[6:])

    def _scoring_spec(self, rows: int) -> tuple[Any, ...] | None:
        spec = self._fused_spec()
        return None if spec is None else self._tabled(spec, rows)

    def _fused_spec(self) -> tuple[Any, ...] | None:
        if (not self._scripted() or self._forward_hooks or self._forward_pre_hooks
                or type(self).forward is not AffineCoupling.forward
                or type(self).inverse is not AffineCoupling.inverse):
            return None  # a subclass's own forward/inverse must run
        return self._kernel_spec()

    def _forward_transformed(
        self, x1: Tensor, x2: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if self.activation not in FUSED_ACTIVATIONS or self.conditioner._forward_hooks:
            return super()._forward_transformed(x1, x2, context)
        if self.context_features:  # prepared by autograd; the fused step takes it as is
            x1, bound = self._conditioner_input(x1, context), None
        else:  # the fused step bounds x1 itself, with a hand-written derivative
            bound = self.input_bound
        params = self.conditioner.flat_parameters()
        return fused_affine(x1, x2, params, bound, self.scale_bound, self.activation)

    def _scale_shift(self, params: Tensor) -> tuple[Tensor, Tensor]:
        s, t = params.chunk(2, dim=-1)
        if self.scale_bound is not None:
            s = torch.tanh(s / self.scale_bound) * self.scale_bound
        return s, t

    def _transform(self, x2: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(params)
        return x2 * torch.exp(s) + t, s.sum(dim=-1)

    def _untransform(self, z2: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(params)
        return (z2 - t) * torch.exp(-s), -s.sum(dim=-1)


class AdditiveCoupling(Coupling):
    r"""NICE's additive coupling (Dinh et al. 2014): ``y2 = x2 + t(x1)``, volume preserving.

    Example:
        >>> from realnvp.bijections.masks import half_mask
        >>> AdditiveCoupling(half_mask(3))(torch.randn(4, 3))[1]
        tensor([0., 0., 0., 0.])
    """

    params_per_feature = 1

    def _transform(self, x2: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x2 + params, x2.new_zeros(x2.shape[0])

    def _untransform(self, z2: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return z2 - params, z2.new_zeros(z2.shape[0])




def _or_zero(bound: float | None) -> float:
    return float(bound) if bound is not None else 0.0


def _refresh_after_load(module: Coupling, _: object) -> None:
    module._refresh_views()


def _as_view(index: Tensor) -> list[int]:
    """``[start, stop, step]`` equal to a non-empty, evenly spaced index, else ``[]``."""
    values = index.tolist()
    if not values:
        return []
    if len(values) == 1:
        return [values[0], values[0] + 1, 1]
    step = values[1] - values[0]
    if step < 1 or any(b - a != step for a, b in zip(values[:-1], values[1:], strict=True)):
        return []
    return [values[0], values[-1] + 1, step]
