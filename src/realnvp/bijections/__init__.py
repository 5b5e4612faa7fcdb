"""Bijections: every layer maps data to latent with ``forward`` and back with ``inverse``."""

from realnvp.bijections.base import Bijection, Chain, Inverse
from realnvp.bijections.coupling import AdditiveCoupling, AffineCoupling, Coupling
from realnvp.bijections.masks import (
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
    random_mask,
)
from realnvp.bijections.normalization import ActNorm, BatchNorm
from realnvp.bijections.permutation import LULinear, Permutation, RandomPermutation, Reverse
from realnvp.bijections.spline import RationalQuadraticCoupling
from realnvp.bijections.standardize import Standardize

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "BatchNorm",
    "Bijection",
    "Chain",
    "Coupling",
    "Inverse",
    "LULinear",
    "Permutation",
    "RandomPermutation",
    "RationalQuadraticCoupling",
    "Reverse",
    "Standardize",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "half_mask",
    "random_mask",
]
