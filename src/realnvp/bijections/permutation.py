"""Feature permutations and Glow's invertible linear layer (LU parametrised)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from realnvp.bijections._kernels import PERMUTE
from realnvp.bijections.base import Bijection

__all__ = ["LULinear", "Permutation", "RandomPermutation", "Reverse"]


class Permutation(Bijection):
    """Reorder features by a fixed permutation (kept as a buffer); volume preserving.

    Example:
        >>> Permutation(torch.tensor([1, 0]))(torch.tensor([[1.0, 2.0]]))[0]
        tensor([[2., 1.]])
    """

    def __init__(self, permutation: Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(permutation, dtype=torch.long).reshape(-1)
        if not torch.equal(perm.sort().values, torch.arange(perm.numel())):
            raise ValueError(
                f"Expected a permutation of 0..{perm.numel() - 1}; got {perm.tolist()}"
            )
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", perm.argsort())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.permutation), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.index_select(1, self.inverse_permutation), z.new_zeros(z.shape[0])

    def _fused_spec(self) -> tuple[Any, ...] | None:
        if (self._forward_hooks or self._forward_pre_hooks
                or type(self).forward is not Permutation.forward
                or type(self).inverse is not Permutation.inverse):
            return None  # a subclass's own forward/inverse must run
        return (PERMUTE, self.permutation, self.inverse_permutation, [], [], [], 0.0, 0.0, [],
                False)


class Reverse(Permutation):
    """Reverse the order of the features.

    Example:
        >>> Reverse(3)(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def __init__(self, dim: int) -> None:
        super().__init__(torch.arange(dim - 1, -1, -1))


class RandomPermutation(Permutation):
    """A fixed random permutation drawn from a seeded generator (never the global RNG).

    Example:
        >>> RandomPermutation(4, seed=0).permutation.sort().values
        tensor([0, 1, 2, 3])
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__(torch.randperm(dim, generator=torch.Generator().manual_seed(seed)))


class LULinear(Bijection):
    r"""Invertible linear map ``z = W x + b`` with ``W = P L (U + diag(sign * exp(log_s)))``.

    Glow's 1x1 convolution (Kingma & Dhariwal 2018) in LU form: ``P`` is a fixed
    permutation (buffer), ``L`` unit lower triangular, ``U`` strictly upper triangular, so
    :math:`\log|\det W| = \sum \log|s|` is exact and cheap, and the inverse is two
    triangular solves. Starts at the identity.

    Example:
        >>> layer = LULinear(3)
        >>> layer(torch.ones(2, 3))[0]
        tensor([[1., 1., 1.],
                [1., 1., 1.]], grad_fn=<AddBackward0>)
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", perm.argsort())
        self.register_buffer("sign", torch.ones(dim))
        self.register_buffer("lower_mask", torch.tril(torch.ones(dim, dim), -1))
        self.lower = nn.Parameter(torch.zeros(dim, dim))
        self.upper = nn.Parameter(torch.zeros(dim, dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.dim, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_scale.exp())
        return lower, upper

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lower, upper = self._factors()
        # W x = P L U x; rows of a batch: x @ U^T @ L^T, then permute features.
        z = (x @ upper.T @ lower.T).index_select(1, self.inverse_permutation) + self.bias
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lower, upper = self._factors()
        y = (z - self.bias).index_select(1, self.permutation).T
        y = torch.linalg.solve_triangular(lower, y, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, y, upper=True).T
        return x, -self.log_scale.sum().expand(z.shape[0])
