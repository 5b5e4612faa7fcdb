"""TorchScript kernels of the affine coupling: forward, inverse, and backward by hand.

Plain functions of tensors (no modules), so TorchScript can compile them; scripting takes
the Python interpreter out of the per-operation path, which is what limits low-dimensional
flows at small batch sizes. :func:`kernels` compiles them once per process and falls back
to the same functions in Python if scripting is unavailable. A bound <= 0 means "none".
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Kernels", "coupling_backward", "coupling_forward", "coupling_inverse", "kernels"]


def coupling_forward(
    h: Tensor, kept: Tensor, transformed: Tensor, params: list[Tensor], input_bound: float,
    scale_bound: float, relu: bool,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One affine coupling, forward; returns ``(y, sum of s, tape)``. Bounds <= 0: none."""
    x1 = h.index_select(1, kept)
    x2 = h.index_select(1, transformed)
    empty = h.new_empty(0)
    squashed = empty
    a = x1
    if input_bound > 0:
        squashed = torch.tanh(x1 * (1.0 / input_bound))
        a = squashed * input_bound
    acts: list[Tensor] = [a]
    n = len(params) // 2
    for k in range(n - 1):
        pre = F.linear(acts[-1], params[2 * k], params[2 * k + 1])
        acts.append(torch.relu_(pre) if relu else torch.tanh_(pre))
    out = F.linear(acts[-1], params[2 * n - 2], params[2 * n - 1])
    d2 = x2.shape[1]
    s = out[:, :d2]
    ts = empty
    if scale_bound > 0:
        ts = torch.tanh(s * (1.0 / scale_bound))
        s = ts * scale_bound
    exp_s = torch.exp(s)
    scaled = x2 * exp_s
    y = h.index_copy(1, transformed, scaled + out[:, d2:])
    return y, s.sum(1), [squashed, ts, exp_s, scaled] + acts


def coupling_backward(
    g: Tensor, kept: Tensor, transformed: Tensor, params: list[Tensor], grads: list[Tensor],
    tape: list[Tensor], g_log_det: float, relu: bool,
) -> Tensor:
    """One affine coupling, backward: writes weight gradients, returns d loss / d input."""
    squashed, ts, exp_s, scaled = tape[0], tape[1], tape[2], tape[3]
    acts = tape[4:]
    g_y2 = g.index_select(1, transformed)
    g_s = g_y2 * scaled
    g_s.add_(g_log_det)
    if ts.numel() > 0:
        g_s.mul_(1.0 - ts * ts)
    g_h = torch.cat([g_s, g_y2], dim=1)
    n = len(params) // 2
    for k in range(n - 1, -1, -1):
        torch.mm(g_h.t(), acts[k], out=grads[2 * k])
        torch.sum(g_h, 0, out=grads[2 * k + 1])
        g_h = g_h.mm(params[2 * k])
        if k > 0:
            if relu:
                g_h = torch.ops.aten.threshold_backward(g_h, acts[k], 0.0)
            else:
                g_h.mul_(1.0 - acts[k] * acts[k])
    if squashed.numel() > 0:
        g_h.mul_(1.0 - squashed * squashed)
    g_prev = g.index_copy(1, transformed, g_y2 * exp_s)
    return g_prev.index_add_(1, kept, g_h)


def coupling_inverse(
    z: Tensor, kept: Tensor, transformed: Tensor, params: list[Tensor], input_bound: float,
    scale_bound: float, relu: bool,
) -> tuple[Tensor, Tensor]:
    """One affine coupling, inverse: ``x2 = (z2 - t) exp(-s)``; returns ``(x, -sum of s)``."""
    z1 = z.index_select(1, kept)
    z2 = z.index_select(1, transformed)
    a = z1
    if input_bound > 0:
        a = torch.tanh(z1 * (1.0 / input_bound)) * input_bound
    n = len(params) // 2
    for k in range(n - 1):
        pre = F.linear(a, params[2 * k], params[2 * k + 1])
        a = torch.relu_(pre) if relu else torch.tanh_(pre)
    out = F.linear(a, params[2 * n - 2], params[2 * n - 1])
    d2 = z2.shape[1]
    s = out[:, :d2]
    if scale_bound > 0:
        s = torch.tanh(s * (1.0 / scale_bound)) * scale_bound
    x2 = (z2 - out[:, d2:]) * torch.exp(-s)
    return z.index_copy(1, transformed, x2), -s.sum(1)


class Kernels(NamedTuple):
    """The compiled (or Python) coupling kernels."""

    forward: Any
    backward: Any
    inverse: Any


_CACHE: list[Kernels] = []


def kernels() -> Kernels:
    """The coupling kernels compiled with TorchScript, once per process (Python if that fails).

    Example:
        >>> k = kernels()
        >>> sorted(k._fields)
        ['backward', 'forward', 'inverse']
    """
    if not _CACHE:
        python = Kernels(coupling_forward, coupling_backward, coupling_inverse)
        try:
            with warnings.catch_warnings():  # deprecated in recent torch; we fall back if gone
                warnings.simplefilter("ignore")
                compiled = Kernels(*(torch.jit.script(f) for f in python))
        except Exception:  # noqa: BLE001 - any scripting failure: run the same code in Python
            compiled = python
        _CACHE.append(compiled)
    return _CACHE[0]
