"""The bijection contract every layer obeys, plus composition and inversion."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from realnvp.bijections._blocks import autocast_enabled, by_row_blocks, use_row_blocks
from realnvp.bijections._kernels import run_chain

__all__ = ["Bijection", "Chain", "Inverse"]


class Bijection(nn.Module):
    r"""An invertible map between data space and latent space.

    Subclasses implement exactly two methods:

    * ``forward(x, context=None) -> (z, log_det)`` maps data to latent, with
      :math:`\log|\det \partial z / \partial x|` of shape ``(batch,)``;
    * ``inverse(z, context=None) -> (x, log_det)`` maps latent to data, with
      :math:`\log|\det \partial x / \partial z|`, which equals minus the forward one.

    Everything else (flows, traces, inverses) is derived from these two. The simplest
    concrete example is :class:`realnvp.bijections.Standardize`.

    A layer whose output rows depend on other rows of the batch (batch statistics) must
    say so through :meth:`rowwise`: large batches may be evaluated in row blocks.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def rowwise(self) -> bool:
        """Whether each output row depends only on the same input row, in the current mode."""
        return True

    def _fused_spec(self) -> tuple[Any, ...] | None:
        """This layer as an entry of the compiled chain kernels
        (:func:`realnvp.bijections._kernels.run_chain`) in the current mode, or None (the
        default): then :class:`Chain` calls it as a module."""
        return None

    def _training_spec(self) -> tuple[Any, ...] | None:
        """This layer as the training steps of :mod:`realnvp.training.fast` take it: its
        :meth:`_fused_spec` (the default), or, for a layer only the compiled C step can
        train (kind ``SPLINE`` of :mod:`realnvp.bijections._kernels`), an entry in the same
        layout that the TorchScript kernels never see."""
        return self._fused_spec()

    def _scoring_spec(self, rows: int) -> tuple[Any, ...] | None:
        """:meth:`_fused_spec` for scoring or sampling ``rows`` rows now; a layer may swap in
        cheaper exact parameters there (tables of a conditioner's linear pieces)."""
        return self._fused_spec()


class Inverse(Bijection):
    """The inverse of a bijection: ``forward`` runs ``bijection.inverse`` and vice versa.

    Example:
        >>> from realnvp.bijections import Standardize
        >>> b = Inverse(Standardize(torch.tensor([1.0]), torch.tensor([2.0])))
        >>> b(torch.tensor([[0.5]]))[0]
        tensor([[2.]])
    """

    def __init__(self, bijection: Bijection) -> None:
        super().__init__()
        self.bijection = bijection

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.forward(z, context)

    def rowwise(self) -> bool:
        return self.bijection.rowwise()


class Chain(Bijection):
    r"""Composition :math:`f_K \circ \dots \circ f_1`; log-determinants add up.

    ``forward`` applies the layers in order (data to latent), ``inverse`` in reverse.
    :meth:`trace` returns every intermediate point, for per-layer pictures.

    Example:
        >>> from realnvp.bijections import Reverse
        >>> chain = Chain([Reverse(2), Reverse(2)])
        >>> chain(torch.tensor([[1.0, 2.0]]))[0]
        tensor([[1., 2.]])
    """

    def __init__(self, layers: Iterable[Bijection]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Bijection:
        return self.layers[i]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if use_row_blocks(x, self.rowwise):  # large CPU batch, no autograd: parallel blocks
            return by_row_blocks(self.forward, x, context)
        return self._through(self.layers, x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if use_row_blocks(z, self.rowwise):
            return by_row_blocks(self.inverse, z, context)
        return self._through(reversed(self.layers), z, context, inverse=True)

    @staticmethod
    def _through(layers: Iterable[Bijection], x: Tensor, context: Tensor | None,
                 inverse: bool) -> tuple[Tensor, Tensor]:
        """Apply ``layers`` in turn (their inverses if ``inverse``), adding the log-dets.

        Consecutive layers that have a :meth:`Bijection._fused_spec` now (affine couplings
        and permutations, without autograd or hooks) run as one compiled call.
        """
        total = x.new_zeros(x.shape[0])
        fusing = not torch.is_grad_enabled() and not _global_hooks() and not autocast_enabled()
        run: list[tuple[Any, ...]] = []
        for layer in layers:
            spec = layer._scoring_spec(x.shape[0]) if fusing else None
            if spec is not None:
                run.append(spec)
                continue
            if run:
                x, log_det = run_chain(run, x, inverse)
                total, run = total + log_det, []
            x, log_det = layer.inverse(x, context) if inverse else layer(x, context)
            total = total + log_det
        if run:
            x, log_det = run_chain(run, x, inverse)
            total = total + log_det
        return x, total

    def rowwise(self) -> bool:
        return all(layer.rowwise() for layer in self.layers)

    @torch.no_grad()
    def trace(
        self, x: Tensor, context: Tensor | None = None, inverse: bool = False
    ) -> list[Tensor]:
        """Every intermediate point: ``[x, f_1(x), f_2(f_1(x)), ...]`` (or the inverse path)."""
        points = [x]
        layers = reversed(self.layers) if inverse else self.layers
        for layer in layers:
            x, _ = layer.inverse(x, context) if inverse else layer(x, context)
            points.append(x)
        return points


def _global_hooks() -> bool:
    """Whether hooks registered for every module are active (then every layer is called)."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)
