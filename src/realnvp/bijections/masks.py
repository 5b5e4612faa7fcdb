"""Binary masks that choose which features a coupling keeps (True) and which it transforms."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["alternating_mask", "channel_mask", "checkerboard_mask", "half_mask", "random_mask"]


def half_mask(dim: int, first: bool = True) -> Tensor:
    """Keep the first ``ceil(dim / 2)`` features (or, with ``first=False``, the rest).

    Example:
        >>> half_mask(5)
        tensor([ True,  True,  True, False, False])
    """
    mask = torch.arange(dim) < (dim + 1) // 2
    return mask if first else ~mask


def alternating_mask(dim: int, parity: int = 0) -> Tensor:
    """Keep features whose index has the given parity (0, 2, 4, ... for ``parity=0``).

    Example:
        >>> alternating_mask(4, parity=1)
        tensor([False,  True, False,  True])
    """
    return torch.arange(dim) % 2 == parity


def checkerboard_mask(height: int, width: int, parity: int = 0) -> Tensor:
    """A flattened ``height x width`` checkerboard, as used by RealNVP on images.

    Example:
        >>> checkerboard_mask(2, 2)
        tensor([ True, False, False,  True])
    """
    rows = torch.arange(height).unsqueeze(1)
    cols = torch.arange(width).unsqueeze(0)
    return (((rows + cols) % 2) == parity).reshape(-1)


def channel_mask(channels: int, height: int, width: int, first: bool = True) -> Tensor:
    """Keep the first half of the channels of a flattened ``(C, H, W)`` image.

    Example:
        >>> channel_mask(2, 1, 2)
        tensor([ True,  True, False, False])
    """
    keep = torch.arange(channels) < (channels + 1) // 2
    if not first:
        keep = ~keep
    return keep.repeat_interleave(height * width)


def random_mask(dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Keep a random ``ceil(dim / 2)`` features, drawn from ``generator`` (never the global RNG).

    Example:
        >>> random_mask(4, torch.Generator().manual_seed(0)).sum()
        tensor(2)
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    order = torch.randperm(dim, generator=generator)
    mask = torch.zeros(dim, dtype=torch.bool)
    mask[order[: (dim + 1) // 2]] = True
    return mask
