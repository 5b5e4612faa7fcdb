"""One registry of every bijection (and its inverse) that the property tests sweep."""

from __future__ import annotations

from collections.abc import Callable

import torch

from realnvp.bijections import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    Bijection,
    Chain,
    Inverse,
    LULinear,
    RandomPermutation,
    RationalQuadraticCoupling,
    Reverse,
    Standardize,
    alternating_mask,
    checkerboard_mask,
    half_mask,
    random_mask,
)

Factory = Callable[[int], Bijection]


@torch.no_grad()
def randomize(module: torch.nn.Module, std: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random non-zero values (never only the identity init)."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    for m in module.modules():
        if isinstance(m, BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return module.eval()


def _standardize(dim: int) -> Bijection:
    g = torch.Generator().manual_seed(3)
    return Standardize(torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5)


def _chain(dim: int) -> Bijection:
    return Chain([
        _standardize(dim),
        ActNorm(dim),
        AffineCoupling(alternating_mask(dim, 0), hidden=(16, 16)),
        LULinear(dim, seed=1),
        AffineCoupling(alternating_mask(dim, 1), hidden=(16, 16)),
        BatchNorm(dim),
        RandomPermutation(dim, seed=2),
    ])


def _checkerboard(dim: int) -> Bijection:
    # A 1 x dim "image": the checkerboard mask on one row alternates features.
    return AffineCoupling(checkerboard_mask(1, dim), hidden=(16,))


BIJECTIONS: dict[str, Factory] = {
    "affine-alternating": lambda d: AffineCoupling(alternating_mask(d), hidden=(16, 16)),
    "affine-half": lambda d: AffineCoupling(half_mask(d, first=False), hidden=(16, 16)),
    "affine-random-mask": lambda d: AffineCoupling(
        random_mask(d, torch.Generator().manual_seed(d)), hidden=(16,), activation="tanh"),
    "affine-checkerboard": _checkerboard,
    "affine-unbounded": lambda d: AffineCoupling(half_mask(d), hidden=(8,), scale_bound=None),
    "affine-gelu": lambda d: AffineCoupling(half_mask(d), hidden=(8, 8), activation="gelu"),
    "additive": lambda d: AdditiveCoupling(alternating_mask(d, 1), hidden=(16, 16)),
    "spline": lambda d: RationalQuadraticCoupling(alternating_mask(d), hidden=(16, 16), bins=6),
    "spline-context-free-tails": lambda d: RationalQuadraticCoupling(
        half_mask(d), hidden=(8,), bins=4, bound=2.0),
    "reverse": Reverse,
    "random-permutation": lambda d: RandomPermutation(d, seed=5),
    "lu-linear": lambda d: LULinear(d, seed=4),
    "actnorm": ActNorm,
    "batchnorm": BatchNorm,
    "standardize": _standardize,
    "chain": _chain,
}


def all_cases() -> dict[str, Factory]:
    """Every bijection and, as ``inverse-<name>``, its inverse."""
    cases = dict(BIJECTIONS)
    for name, factory in BIJECTIONS.items():
        cases[f"inverse-{name}"] = lambda d, f=factory: Inverse(f(d))
    return cases


# Splines with large random raw parameters have slopes near 1e-6: well defined, but so flat
# that no float64 round trip keeps 1e-10. Trained splines are far smoother.
STD = {"spline": 0.25}


def build(name: str, dim: int, dtype: torch.dtype = torch.float64, std: float = 0.5) -> Bijection:
    """Build case ``name`` on ``dim`` features with random weights, in eval mode."""
    b = all_cases()[name](dim).to(dtype)
    base = name.removeprefix("inverse-")
    scale = next((v for k, v in STD.items() if base.startswith(k)), None)
    return randomize(b, std=min(std, scale) if scale is not None else std)
