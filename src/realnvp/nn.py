"""Conditioner networks: the s and t of a coupling come from one MLP."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Sequential):
    """A fully connected network ``in -> hidden... -> out`` whose last layer starts at zero.

    The zero last layer makes a coupling built on it start as the identity map, so a deep
    flow begins training from a well-conditioned point. A zero-width input (a coupling with
    nothing to condition on, e.g. 1-D data) yields learned constants.

    Example:
        >>> net = MLP(2, 4, hidden=(8, 8))
        >>> net(torch.randn(3, 2)).abs().max()
        tensor(0., grad_fn=<MaxBackward1>)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        zero_last: bool = True,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Expected activation in {sorted(ACTIVATIONS)}; got {activation!r}"
            )
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"Expected positive hidden sizes; got {tuple(hidden)}")
        sizes = [in_features, *map(int, hidden), out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(_linear(a, b))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        # Plain list (not registered again): flat_parameters runs once per layer per call.
        self._linears = [m for m in layers if isinstance(m, nn.Linear)]
        if zero_last:
            last = self[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def flat_parameters(self) -> list[Tensor]:
        """``[W_1, b_1, W_2, b_2, ...]`` of the linear layers, input to output."""
        params = []
        for m in self._linears:
            params += (m._parameters["weight"], m._parameters["bias"])
        return params


def _linear(a: int, b: int) -> nn.Linear:
    """``nn.Linear`` that also accepts zero input features (then it is a learned constant)."""
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = a, b
    layer.weight = nn.Parameter(torch.empty(b, a))
    layer.bias = nn.Parameter(torch.empty(b))
    if a > 0:
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(a)
        nn.init.uniform_(layer.bias, -bound, bound)
    else:
        nn.init.zeros_(layer.bias)
    return layer


def zero_input(x: Tensor) -> bool:
    """True when ``x`` has no features (a coupling with an empty conditioning set)."""
    return x.shape[-1] == 0
