"""TorchScript kernels of the affine coupling: forward, inverse, and backward by hand.

Plain functions of tensors (no modules), so TorchScript can compile them; scripting takes
the Python interpreter out of the per-operation path, which is what limits low-dimensional
flows at small batch sizes. :func:`kernels` compiles them once per process and falls back
to the same functions in Python if scripting is unavailable. A bound <= 0 means "none".

``onednn=True`` (float32 on the CPU, large batches: see :func:`use_onednn`) computes each
hidden layer's matrix product, bias and activation as one oneDNN primitive instead of three
passes over the activations; a conditioner with one input computes its first layer as an
outer product (``addcmul``), which is cheaper than a matrix product with one column.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Kernels", "coupling_backward", "coupling_forward", "coupling_forward_train",
           "coupling_inverse", "kernels", "put_columns", "take_columns", "use_onednn"]

ONEDNN_MIN_ROWS = 2048
"""Below this many rows the fused oneDNN layer costs more to set up than it saves."""


def use_onednn(x: Tensor) -> bool:
    """Whether the fused oneDNN hidden layers pay off for a batch like ``x``."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and x.shape[0] >= ONEDNN_MIN_ROWS and torch.backends.mkldnn.is_available())


def _layer(a: Tensor, w: Tensor, b: Tensor, relu: bool, onednn: bool) -> Tensor:
    """``act(a @ w.T + b)``: one input as an outer product, fused by oneDNN where asked."""
    if w.shape[1] == 1:
        pre = torch.addcmul(b, a, w.t())
    elif onednn:
        # TorchScript reads the op's "Scalar?[]" only in typing.Optional/Union spelling.
        no_scalars = torch.jit.annotate(list[Optional[Union[int, float, complex]]], [])  # noqa: UP007, UP045
        return torch.ops.mkldnn._linear_pointwise(a, w, b, "relu" if relu else "tanh",
                                                  no_scalars, "")
    else:
        pre = F.linear(a, w, b)
    return torch.relu_(pre) if relu else torch.tanh_(pre)


def take_columns(h: Tensor, index: Tensor, view: list[int]) -> Tensor:
    """Columns ``index`` of ``h``: a view when ``view`` is ``[start, stop, step]``, else a copy."""
    if len(view) == 3:
        return h[:, view[0]:view[1]:view[2]]
    return h.index_select(1, index)


def put_columns(h: Tensor, index: Tensor, view: list[int], values: Tensor) -> Tensor:
    """A copy of ``h`` with columns ``index`` (see :func:`take_columns`) replaced by ``values``."""
    if len(view) == 3:
        out = h.clone()
        out[:, view[0]:view[1]:view[2]] = values
        return out
    return h.index_copy(1, index, values)


def _head(a: Tensor, w: Tensor, b: Tensor, d2: int, onednn: bool) -> tuple[Tensor, Tensor]:
    """The output layer, split into the raw log-scale and the shift, each ``(batch, d2)``.

    With few outputs a matrix product of ``(batch, hidden) x (hidden, 2 d2)`` runs far below
    the machine's speed; on large batches it is computed transposed, ``w @ a.T``, instead.
    """
    if onednn:
        out = torch.addmm(b.unsqueeze(1), w, a.t())
        return out[:d2].t(), out[d2:].t()
    out = F.linear(a, w, b)
    return out[:, :d2], out[:, d2:]


def coupling_forward(
    h: Tensor, kept: Tensor, transformed: Tensor, kept_view: list[int],
    transformed_view: list[int], params: list[Tensor], input_bound: float, scale_bound: float,
    relu: bool, onednn: bool = False,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One affine coupling, forward; returns ``(y, sum of s, tape)``. Bounds <= 0: none.

    ``kept``/``transformed`` index the halves; ``*_view`` give them as ``[start, stop,
    step]`` when they are evenly spaced (then no copy is made), or ``[]``.
    """
    x1 = take_columns(h, kept, kept_view)
    x2 = take_columns(h, transformed, transformed_view)
    empty = h.new_empty(0)
    squashed = empty
    a = x1
    if input_bound > 0:
        squashed = torch.tanh(x1 * (1.0 / input_bound))
        a = squashed * input_bound
    acts: list[Tensor] = [a]
    n = len(params) // 2
    for k in range(n - 1):
        acts.append(_layer(acts[-1], params[2 * k], params[2 * k + 1], relu, onednn))
    s, shift = _head(acts[-1], params[2 * n - 2], params[2 * n - 1], x2.shape[1], onednn)
    ts = empty
    if scale_bound > 0:
        ts = torch.tanh(s * (1.0 / scale_bound))
        s = ts * scale_bound
    exp_s = torch.exp(s)
    scaled = x2 * exp_s
    y = put_columns(h, transformed, transformed_view, scaled + shift)
    return y, s.sum(1), [squashed, ts, exp_s, scaled] + acts


def coupling_backward(
    g: Tensor, kept: Tensor, transformed: Tensor, kept_view: list[int],
    transformed_view: list[int], params: list[Tensor], grads: list[Tensor], tape: list[Tensor],
    g_log_det: float, relu: bool,
) -> Tensor:
    """One affine coupling, backward: writes weight gradients, returns d loss / d input."""
    squashed, ts, exp_s, scaled = tape[0], tape[1], tape[2], tape[3]
    acts = tape[4:]
    g_y2 = take_columns(g, transformed, transformed_view)
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
    g_prev = put_columns(g, transformed, transformed_view, g_y2 * exp_s)
    if len(kept_view) == 3:
        g_prev[:, kept_view[0]:kept_view[1]:kept_view[2]] += g_h
        return g_prev
    return g_prev.index_add_(1, kept, g_h)


def coupling_inverse(
    z: Tensor, kept: Tensor, transformed: Tensor, kept_view: list[int],
    transformed_view: list[int], params: list[Tensor], input_bound: float, scale_bound: float,
    relu: bool, onednn: bool = False,
) -> tuple[Tensor, Tensor]:
    """One affine coupling, inverse: ``x2 = (z2 - t) exp(-s)``; returns ``(x, -sum of s)``."""
    z1 = take_columns(z, kept, kept_view)
    z2 = take_columns(z, transformed, transformed_view)
    a = z1
    if input_bound > 0:
        a = torch.tanh(z1 * (1.0 / input_bound)) * input_bound
    n = len(params) // 2
    for k in range(n - 1):
        a = _layer(a, params[2 * k], params[2 * k + 1], relu, onednn)
    s, shift = _head(a, params[2 * n - 2], params[2 * n - 1], z2.shape[1], onednn)
    if scale_bound > 0:
        s = torch.tanh(s * (1.0 / scale_bound)) * scale_bound
    x2 = (z2 - shift) * torch.exp(-s)
    return put_columns(z, transformed, transformed_view, x2), -s.sum(1)


def coupling_forward_train(
    h: Tensor, kept: Tensor, transformed: Tensor, kept_view: list[int],
    transformed_view: list[int], params: list[Tensor], input_bound: float, scale_bound: float,
    relu: bool, onednn: bool = False,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """:func:`coupling_forward` for the training step, compiled on its own.

    Each compiled function keeps its own shape specialisations, so the training batch size
    never displaces the scoring batch sizes (which matters for TorchScript's GPU fuser).
    """
    return coupling_forward(h, kept, transformed, kept_view, transformed_view, params,
                            input_bound, scale_bound, relu, onednn)


class Kernels(NamedTuple):
    """The compiled (or Python) coupling kernels."""

    forward: Any
    backward: Any
    inverse: Any
    train_forward: Any


_PYTHON = Kernels(coupling_forward, coupling_backward, coupling_inverse, coupling_forward_train)


_CACHE: list[Kernels] = []

SCRIPTED_ON_ACCELERATORS = True
"""Use the TorchScript kernels for CUDA tensors too (set False to run them eagerly there).

Measured on an H200 (``benchmarks/profile_inference.py``, 8192 points): scripted
``log_prob`` 1.56 ms and ``sample`` 2.59 ms against 3.41 ms and 4.86 ms eagerly. TorchScript
specialises its GPU graphs to the batch shapes it has seen, so a process that trains and then
scores at other sizes can pay for re-specialisation (benchmarks/README.md, "GPU")."""


def kernels(device: torch.device | None = None) -> Kernels:
    """The coupling kernels compiled with TorchScript, once per process (Python if that fails).

    For tensors on an accelerator (``device`` not the CPU) the same functions run eagerly
    unless :data:`SCRIPTED_ON_ACCELERATORS` is set.

    Example:
        >>> k = kernels()
        >>> sorted(k._fields)
        ['backward', 'forward', 'inverse', 'train_forward']
    """
    if device is not None and device.type != "cpu" and not SCRIPTED_ON_ACCELERATORS:
        return _PYTHON
    if not _CACHE:
        try:
            with warnings.catch_warnings():  # deprecated in recent torch; we fall back if gone
                warnings.simplefilter("ignore")
                compiled = Kernels(*(torch.jit.script(f) for f in _PYTHON))
        except Exception:  # noqa: BLE001 - any scripting failure: run the same code in Python
            compiled = _PYTHON
        _CACHE.append(compiled)
    return _CACHE[0]
