"""A training step with a hand-derived backward pass for the standard RealNVP stack.

For a flow of ``Standardize``, affine couplings (ReLU or tanh conditioners, no context) and
fixed permutations on a standard normal base, :class:`FastStep` computes the mean negative
log-likelihood and writes its gradient straight into the parameters' ``.grad`` tensors,
without building an autograd graph. At the sizes of low-dimensional flows (batch 512,
width 64) autograd's per-node bookkeeping costs more than the arithmetic; this step runs
the same ATen kernels, about half as many of them, and no Python-level graph.

With ``L = mean_i [ |z_i|^2 / 2 + d/2 log 2 pi - sum_k log|det J_k|(x_i) ]`` and, for an
affine coupling ``y2 = x2 exp(s) + t``, ``s = c tanh(o_s / c)``, ``[o_s, t] = MLP(a)``,
``a = b tanh(x1 / b)``, the backward pass is, per coupling (``g`` = dL/d output):

    g_s = g_y2 * (x2 exp(s)) - 1/B,   g_os = g_s * (1 - tanh^2),   g_t = g_y2
    g_x2 = g_y2 * exp(s),   g_x1 = g_y1 + MLP^T [g_os, g_t] * (1 - tanh^2(x1 / b))

and the MLP's weight gradients are the usual outer products. Gradients are checked against
autograd in float64 (``tests/test_fast.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from realnvp.bijections import AffineCoupling, Permutation, Standardize
from realnvp.bijections._fused import FUSED_ACTIVATIONS
from realnvp.distributions import DiagonalNormal, StandardNormal
from realnvp.flow import Flow

__all__ = ["FastStep", "fast_step_for"]


def fast_step_for(flow: Flow) -> FastStep | None:
    """A :class:`FastStep` for ``flow``, or None when it has layers the step cannot do."""
    if type(flow.base) is not StandardNormal or isinstance(flow.base, DiagonalNormal):
        return None
    layers = list(flow.bijection)
    for i, layer in enumerate(layers):
        if isinstance(layer, Standardize):
            if i != 0:
                return None
        elif isinstance(layer, AffineCoupling):
            if (layer.activation not in FUSED_ACTIVATIONS or layer.context_features
                    or layer.conditioner._forward_hooks or layer._forward_hooks):
                return None
        elif not isinstance(layer, Permutation):
            return None
    return FastStep(flow)


class FastStep:
    """``step(x) -> loss``: forward, loss and hand-written backward into ``p.grad``.

    The gradients are written (not accumulated) into each parameter's existing ``.grad``.

    Example:
        >>> import realnvp
        >>> flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
        >>> for p in flow.parameters():
        ...     p.grad = torch.zeros_like(p)
        >>> step = fast_step_for(flow)
        >>> round(float(step(torch.zeros(4, 2))), 4)  # log(2 pi) at the origin of N(0, I)
        1.8379
    """

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.layers = list(flow.bijection)
        self.dim = flow.dim

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._step(x)

    def _step(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        h = x
        log_det = x.new_zeros(batch)
        const = 0.5 * self.dim * math.log(2 * math.pi)
        tapes: list[Any] = []
        for layer in self.layers:
            if isinstance(layer, Standardize):
                h = (h - layer.loc) / layer.scale
                const = const + float(layer.scale.log().sum())
                tapes.append(None)
            elif isinstance(layer, Permutation):
                h = h.index_select(1, layer.permutation)
                tapes.append(None)
            else:
                h, tape = _coupling_forward(layer, h, log_det)
                tapes.append(tape)
        loss = 0.5 * h.square().sum(1).mean() - log_det.mean() + const
        g = h * (1.0 / batch)
        g_log_det = -1.0 / batch
        for layer, tape in zip(reversed(self.layers), reversed(tapes), strict=True):
            if isinstance(layer, Standardize):
                break
            if isinstance(layer, Permutation):
                g = g.index_select(1, layer.inverse_permutation)
            else:
                g = _coupling_backward(layer, tape, g, g_log_det)
        return loss


def _coupling_forward(layer: AffineCoupling, h: Tensor, log_det: Tensor) -> tuple[Tensor, Any]:
    x1 = h.index_select(1, layer.kept)
    x2 = h.index_select(1, layer.transformed)
    if layer.input_bound is not None:
        squashed = torch.tanh(x1 * (1.0 / layer.input_bound))
        a = squashed * layer.input_bound
    else:
        squashed, a = None, x1
    linears = layer.conditioner.flat_parameters()
    acts = [a]
    relu = layer.activation == "relu"
    for k in range(0, len(linears) - 2, 2):
        pre = F.linear(acts[-1], linears[k], linears[k + 1])
        acts.append(torch.relu_(pre) if relu else torch.tanh_(pre))
    out = F.linear(acts[-1], linears[-2], linears[-1])
    d2 = x2.shape[1]
    s, t = out[:, :d2], out[:, d2:]
    if layer.scale_bound is not None:
        ts = torch.tanh(s * (1.0 / layer.scale_bound))
        s = ts * layer.scale_bound
    else:
        ts = None
    exp_s = torch.exp(s)
    scaled = x2 * exp_s
    log_det.add_(s.sum(1))
    y = h.index_copy(1, layer.transformed, scaled + t)
    return y, (squashed, acts, ts, exp_s, scaled, linears)


def _coupling_backward(layer: AffineCoupling, tape: Any, g: Tensor, g_log_det: float) -> Tensor:
    squashed, acts, ts, exp_s, scaled, linears = tape
    g_y2 = g.index_select(1, layer.transformed)
    g_s = g_y2 * scaled
    g_s.add_(g_log_det)
    if ts is not None:
        g_s.mul_(1.0 - ts * ts)
    g_h = torch.cat([g_s, g_y2], dim=1)
    relu = layer.activation == "relu"
    n = len(linears) // 2
    for k in range(n - 1, -1, -1):
        weight, bias = linears[2 * k], linears[2 * k + 1]
        torch.mm(g_h.t(), acts[k], out=weight.grad)
        torch.sum(g_h, 0, out=bias.grad)
        g_h = g_h.mm(weight)
        if k > 0:
            if relu:
                g_h = torch.ops.aten.threshold_backward(g_h, acts[k], 0.0)
            else:
                g_h.mul_(1.0 - acts[k] * acts[k])
    if squashed is not None:
        g_h.mul_(1.0 - squashed * squashed)
    g_prev = g.index_copy(1, layer.transformed, g_y2 * exp_s)
    return g_prev.index_add_(1, layer.kept, g_h)
