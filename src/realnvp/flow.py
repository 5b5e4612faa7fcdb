"""Flows: a bijection plus a base distribution, and the RealNVP architecture."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from realnvp._validation import check_features
from realnvp.bijections import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    Bijection,
    Chain,
    LULinear,
    RandomPermutation,
    Reverse,
    Standardize,
    alternating_mask,
    half_mask,
)
from realnvp.bijections.spline import RationalQuadraticCoupling
from realnvp.distributions import DiagonalNormal, StandardNormal

__all__ = ["ARCHITECTURES", "Flow", "RealNVP", "architecture"]


class Flow(nn.Module):
    r"""A normalizing flow: ``z = f(x)`` with ``z`` following ``base``.

    .. math:: \log p(x) = \log p_Z(f(x)) + \log|\det \partial f / \partial x|

    ``bijection`` maps data to latent (its ``forward``), and sampling runs its ``inverse``
    on base samples. Public methods check their input and accept anything
    ``torch.as_tensor`` does, cast to the flow's dtype and device.

    Example:
        >>> flow = RealNVP(dim=2)
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> flow.sample(4).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        bijection: Chain,
        base: StandardNormal,
        spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.bijection = bijection
        self.base = base
        self.spec = spec

    @property
    def dim(self) -> int:
        """Number of features."""
        return self.base.dim

    @property
    def context_features(self) -> int:
        """Number of context features a conditional flow expects (0 if unconditional)."""
        return int((self.spec or {}).get("kwargs", {}).get("context_features", 0))

    @property
    def standardize(self) -> Standardize | None:
        """The data standardisation layer, if the flow starts with one."""
        first = self.bijection[0] if len(self.bijection) else None
        return first if isinstance(first, Standardize) else None

    def _anchor(self) -> Tensor:
        return self.base._anchor

    def _prepare(self, x: Any, what: str = "x") -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(np.ascontiguousarray(x))
        if x.ndim == 1:
            raise ValueError(
                f"Expected {what} to be 2-D (batch, {self.dim}); got a 1-D tensor of "
                f"{x.shape[0]} values. Use x.reshape(-1, {self.dim}) or x.reshape(1, -1)."
            )
        check_features(x, self.dim, what)
        a = self._anchor()
        return x.to(device=a.device, dtype=a.dtype)

    def _prepare_context(self, context: Any, batch: int) -> Tensor | None:
        if context is None:
            if self.context_features:
                raise ValueError(
                    f"Expected a context of {self.context_features} features; got None"
                )
            return None
        context = self._prepare_raw(context)
        if context.ndim != 2 or context.shape != (batch, self.context_features):
            raise ValueError(
                f"Expected context of shape ({batch}, {self.context_features}); "
                f"got {tuple(context.shape)}"
            )
        return context

    def _prepare_raw(self, t: Any) -> Tensor:
        t = t if isinstance(t, Tensor) else torch.as_tensor(np.ascontiguousarray(t))
        a = self._anchor()
        return t.to(device=a.device, dtype=a.dtype)

    def forward(self, x: Any, context: Any = None) -> tuple[Tensor, Tensor]:
        """Map data to latent: ``(z, log|det dz/dx|)``."""
        x = self._prepare(x)
        return self.bijection(x, self._prepare_context(context, x.shape[0]))

    def inverse(self, z: Any, context: Any = None) -> tuple[Tensor, Tensor]:
        """Map latent to data: ``(x, log|det dx/dz|)``."""
        z = self._prepare(z, "z")
        return self.bijection.inverse(z, self._prepare_context(context, z.shape[0]))

    def log_prob(self, x: Any, context: Any = None) -> Tensor:
        """Exact log-density of each row of ``x``, shape ``(batch,)``, in the data's units."""
        z, log_det = self.forward(x, context)
        return self.base.log_prob(z) + log_det

    def sample(
        self, n: int, context: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` samples, shape ``(n, dim)``."""
        n = _check_count(n)
        z = self.base.sample(n, generator)
        return self.bijection.inverse(z, self._prepare_context(context, n))[0]

    def sample_and_log_prob(
        self, n: int, context: Any = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` samples and their log-density in one pass (no second forward)."""
        n = _check_count(n)
        z = self.base.sample(n, generator)
        x, log_det = self.bijection.inverse(z, self._prepare_context(context, n))
        return x, self.base.log_prob(z) - log_det

    @torch.no_grad()
    def trace(self, x: Any, context: Any = None, inverse: bool = False) -> list[Tensor]:
        """Points after every layer: ``[x, f_1(x), ..., z]`` (``inverse=True``: ``[z, ..., x]``)."""
        x = self._prepare(x, "z" if inverse else "x")
        return self.bijection.trace(x, self._prepare_context(context, x.shape[0]), inverse)

    def layer_names(self) -> list[str]:
        """A short readable name for each layer, in data-to-latent order."""
        return [f"{i}: {type(layer).__name__}" for i, layer in enumerate(self.bijection)]


def _check_count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"Expected an integer number of samples; got {n!r}")
    if n < 1:
        raise ValueError(f"Expected n_samples >= 1; got {n}")
    return int(n)


ARCHITECTURES: dict[str, Callable[..., Flow]] = {}


def architecture(name: str) -> Callable[[Callable[..., Flow]], Callable[..., Flow]]:
    """Register a flow builder under ``name`` so saved flows can be rebuilt from JSON.

    The builder's arguments (JSON values only) are recorded in ``flow.spec``;
    :func:`realnvp.load` calls the registered builder with them, and never runs code
    from a file.
    """

    def register(builder: Callable[..., Flow]) -> Callable[..., Flow]:
        signature = inspect.signature(builder)

        @functools.wraps(builder)
        def build(*args: Any, **kwargs: Any) -> Flow:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = {k: _jsonable(v) for k, v in bound.arguments.items()}
            flow = builder(**bound.arguments)
            flow.spec = {"architecture": name, "kwargs": arguments}
            return flow

        ARCHITECTURES[name] = build
        return build

    return register


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


_PERMUTATIONS = ("none", "reverse", "random", "lu")
_COUPLINGS: dict[str, type] = {"affine": AffineCoupling, "additive": AdditiveCoupling,
                               "spline": RationalQuadraticCoupling}


@architecture("realnvp")
def RealNVP(  # noqa: N802 - a builder named like the class of model it makes
    dim: int,
    n_layers: int = 8,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
    coupling: str = "affine",
    mask: str = "alternating",
    scale_bound: float | None = 3.0,
    permutation: str = "none",
    actnorm: bool = False,
    batchnorm: bool = False,
    learn_base: bool = False,
    context_features: int = 0,
    standardize: bool = True,
    seed: int = 0,
    bins: int = 8,
    spline_bound: float = 5.0,
) -> Flow:
    r"""The RealNVP flow (Dinh, Sohl-Dickstein & Bengio 2016, arXiv:1605.08803).

    ``n_layers`` affine couplings whose masks alternate, so every feature is transformed
    given the others, on a standard normal base:
    ``Standardize -> [ActNorm] -> coupling(mask) -> [permutation] -> coupling(~mask) -> ...``

    Args:
        dim: number of features; ``dim=1`` is allowed (each coupling then has nothing to
            condition on and is a learned affine map, so the model is a Gaussian).
        n_layers: number of coupling layers.
        hidden: hidden sizes of each coupling's conditioner network.
        activation: conditioner activation (``relu``, ``gelu``, ``silu``, ``tanh``, ...).
        coupling: ``affine`` (RealNVP), ``additive`` (NICE) or ``spline`` (rational-quadratic,
            Durkan et al. 2019), all on the same coupling skeleton.
        mask: ``alternating`` (even/odd features) or ``half`` (first/second half).
        scale_bound: log-scales are bounded smoothly to ``(-c, c)``; ``None`` for no bound.
        permutation: between couplings: ``none``, ``reverse``, ``random`` or ``lu``
            (Glow's invertible linear map).
        actnorm: put an ActNorm before every coupling.
        batchnorm: put a BatchNorm (the paper's) after every coupling but the last.
        learn_base: learn the base Gaussian's mean and scale.
        context_features: features of a conditioning input (conditional flow), 0 for none.
        standardize: start with a :class:`Standardize` layer (set by :func:`realnvp.fit`).
        seed: seeds the initial weights and random permutations (the global RNG is left
            untouched), so the same arguments always build the same flow.
        bins: number of spline bins (``coupling="spline"`` only).
        spline_bound: splines act on ``[-B, B]`` (standardised units), identity outside.

    Example:
        >>> flow = RealNVP(dim=3, n_layers=4, hidden=(32, 32))
        >>> flow.log_prob(torch.randn(5, 3)).shape
        torch.Size([5])
    """
    dim, n_layers = int(dim), int(n_layers)
    if dim < 1:
        raise ValueError(f"Expected dim >= 1; got {dim}")
    if n_layers < 1:
        raise ValueError(f"Expected n_layers >= 1; got {n_layers}")
    if permutation not in _PERMUTATIONS:
        raise ValueError(f"Expected permutation in {list(_PERMUTATIONS)}; got {permutation!r}")
    if coupling not in _COUPLINGS:
        raise ValueError(f"Expected coupling in {sorted(_COUPLINGS)}; got {coupling!r}")
    if mask not in ("alternating", "half"):
        raise ValueError(f"Expected mask 'alternating' or 'half'; got {mask!r}")
    with torch.random.fork_rng(devices=[]):  # the same seed builds the same flow
        torch.manual_seed(seed)
        return _build_realnvp(dim, n_layers, hidden, activation, coupling, mask, scale_bound,
                              permutation, actnorm, batchnorm, learn_base, context_features,
                              standardize, seed, bins, spline_bound)


def _build_realnvp(
    dim: int, n_layers: int, hidden: Sequence[int], activation: str, coupling: str, mask: str,
    scale_bound: float | None, permutation: str, actnorm: bool, batchnorm: bool,
    learn_base: bool, context_features: int, standardize: bool, seed: int, bins: int,
    spline_bound: float,
) -> Flow:
    layers: list[Bijection] = []
    if standardize:
        layers.append(Standardize.identity(dim))
    for i in range(n_layers):
        if actnorm:
            layers.append(ActNorm(dim))
        extra: dict[str, Any] = {}
        if coupling == "affine":
            extra = {"scale_bound": scale_bound}
        elif coupling == "spline":
            extra = {"bins": bins, "bound": spline_bound}
        layers.append(_coupling(_COUPLINGS[coupling], dim, i, mask, hidden, activation,
                                context_features, extra))
        if i < n_layers - 1:
            if batchnorm:
                layers.append(BatchNorm(dim))
            if permutation != "none" and dim > 1:
                layers.append(_permutation(permutation, dim, seed + i))
    base = DiagonalNormal(dim) if learn_base else StandardNormal(dim)
    return Flow(Chain(layers), base)


def _coupling(
    kind: type, dim: int, i: int, mask: str, hidden: Sequence[int], activation: str,
    context_features: int, extra: dict[str, Any],
) -> Bijection:
    if dim == 1:
        m = torch.zeros(1, dtype=torch.bool)
    elif mask == "alternating":
        m = alternating_mask(dim, parity=i % 2)
    else:
        m = half_mask(dim, first=i % 2 == 0)
    return kind(m, tuple(hidden), activation, context_features, **extra)


def _permutation(kind: str, dim: int, seed: int) -> Bijection:
    if kind == "reverse":
        return Reverse(dim)
    if kind == "random":
        return RandomPermutation(dim, seed=seed)
    return LULinear(dim, seed=seed)
