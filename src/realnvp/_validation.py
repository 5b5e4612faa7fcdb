"""Input checks shared by the public entry points (errors read "Expected X; got Y")."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_float_tensor", "check_features", "check_finite"]


def check_features(x: Tensor, dim: int, what: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a floating (batch, dim) tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected {what} to be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(
            f"Expected {what} to be a 2-D tensor of shape (batch, {dim}); "
            f"got {x.ndim}-D with shape {tuple(x.shape)}"
        )
    if x.shape[1] != dim:
        raise ValueError(f"Expected {dim} features; got {x.shape[1]}")
    if not torch.is_floating_point(x):
        raise ValueError(
            f"Expected a floating-point tensor (float32 or float64); got {x.dtype}. "
            "Convert with x.float() or x.double()."
        )


def check_finite(x: Tensor, what: str = "x") -> None:
    """Raise ``ValueError`` naming the first row holding a NaN or infinite value."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row = int(bad.any(dim=-1).nonzero()[0, 0]) if x.ndim > 1 else int(bad.nonzero()[0, 0])
        kind = "NaN" if bool(torch.isnan(x).any()) else "infinite"
        raise ValueError(
            f"Expected finite values in {what}; got {kind} values (first at row {row})"
        )


def as_float_tensor(data: object, dim: int | None = None, what: str = "data") -> Tensor:
    """Turn an array-like into a finite 2-D floating tensor (float64 stays float64)."""
    if isinstance(data, Tensor):
        x = data
    else:
        arr = np.asarray(data)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise ValueError(f"Expected numeric {what}; got values of type {arr.dtype}")
        x = torch.as_tensor(np.ascontiguousarray(arr))
    if not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    if x.ndim != 2:
        raise ValueError(
            f"Expected {what} to be 2-D (rows, features); got {x.ndim}-D with shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"Expected at least one row in {what}; got 0")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"Expected {dim} features; got {x.shape[1]}")
    check_finite(x, what)
    return x
