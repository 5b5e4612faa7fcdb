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

Float32 CPU batches through ReLU conditioners run the same arithmetic compiled from C
(:mod:`realnvp.training.native`; ``benchmarks/step_time.py --compare native``): each
coupling's elementwise work in one pass over its rows instead of dozens of ATen calls.
Everything else (float64, tanh conditioners, accelerators, no C compiler) runs the
TorchScript kernels of :mod:`realnvp.bijections._kernels`. Rational-quadratic spline
couplings take the compiled step too; where it cannot run, the step returns None and the
caller trains them through autograd.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import Tensor

from realnvp.bijections import Standardize
from realnvp.bijections._blocks import flushing_denormals, on_threads
from realnvp.bijections._kernels import PERMUTE, SPLINE, kernels, training_workspace, use_onednn
from realnvp.distributions import DiagonalNormal, StandardNormal
from realnvp.flow import Flow
from realnvp.training import native
from realnvp.training.native import NativeChain

__all__ = ["SPLIT_ROWS", "FastStep", "fast_step_for", "split_rows"]


def fast_step_for(flow: Flow) -> FastStep | None:
    """A :class:`FastStep` for ``flow``, or None when it has layers the step cannot do.

    The step can do a standardisation first, then affine couplings and permutations that
    the compiled chain kernels take as they are (their ``_fused_spec()``: ReLU or tanh
    conditioners, no context, no hooks, no overridden ``forward``/``inverse``), and, where
    the compiled C step is available, rational-quadratic spline couplings with ReLU
    conditioners (their ``_training_spec()``).
    """
    specs = _training_specs(flow)
    if specs is None:
        return None
    if any(spec[0] == SPLINE for spec in specs) and native.library() is None:
        return None  # only the compiled step trains splines
    return FastStep(flow)


def compiled_step_applies(flow: Flow) -> bool:
    """Whether ``flow``'s layers are ones the compiled C step trains (ReLU couplings,
    permutations), whether or not this machine can build it."""
    specs = _training_specs(flow)
    return specs is not None and all(spec[0] == PERMUTE or spec[9] for spec in specs)


def _training_specs(flow: Flow) -> list[tuple[Any, ...]] | None:
    """The ``_training_spec()`` of each layer after a leading standardisation, or None when
    one has none or the base is not a standard normal."""
    if type(flow.base) is not StandardNormal or isinstance(flow.base, DiagonalNormal):
        return None
    specs = []
    with torch.no_grad():
        for i, layer in enumerate(flow.bijection):
            if isinstance(layer, Standardize) and i == 0:
                continue
            spec = layer._training_spec()
            if spec is None:  # a later Standardize has none either
                return None
            specs.append(spec)
    return specs


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
        self._chain: _Chain | None = None

    def _stack(self) -> _Chain | None:
        """The layers after the standardisation, as the chain kernels take them, or None
        when one of them no longer can (a hook added since, say).

        Gathered once (module attribute lookups cost more than a small layer's arithmetic)
        and gathered again when a ``.grad`` tensor has been replaced (as
        ``zero_grad(set_to_none=True)`` does), a bound, dtype or device has changed, or a
        hook has been added.
        """
        chain = self._chain
        if chain is not None and chain.valid():
            return chain
        layers, specs, grads = [], [], []
        for layer in self.layers:
            if isinstance(layer, Standardize):
                continue
            spec = layer._training_spec()
            if spec is None:
                return None
            layer_grads = [p.grad for p in spec[5]]
            if any(g is None for g in layer_grads):
                raise RuntimeError("FastStep writes into existing .grad tensors; give every "
                                   "parameter a .grad first")
            layers.append(layer)
            specs.append(spec)
            grads.append(layer_grads)
        chain = _Chain(layers, specs, grads)
        self._chain = chain
        return chain

    def __call__(self, x: Tensor) -> Tensor | None:
        """The batch's mean NLL, its gradient written into ``.grad``; None (nothing done)
        when a layer can no longer take this step: the caller then uses autograd."""
        with torch.no_grad():
            return self._step(x)

    def _step(self, x: Tensor) -> Tensor | None:
        c = self._stack()
        if c is None:
            return None
        k = kernels(x.device)
        batch = x.shape[0]
        h = x
        const = 0.5 * self.dim * math.log(2 * math.pi)
        first = self.layers[0]
        standardize = first if isinstance(first, Standardize) else None
        if standardize is not None:
            const = const + float(standardize.scale.log().sum())
        compiled = c.native(x, standardize)
        if compiled is not None:
            return self._compiled(compiled, c, x, standardize) / batch + const
        if c.native_only:  # spline couplings, in float64 say: autograd trains them
            return None
        if standardize is not None:
            h = (h - standardize.loc) / standardize.scale
        parts = _parts(x)
        if parts == 1:
            return self._part(k, c, h, c.grads, batch, 0) / batch + const
        xs = h.tensor_split(parts)
        spares = c.spare_grads(parts - 1)
        grads = [c.grads, *spares]

        def part(i: int) -> Tensor:
            with flushing_denormals():  # a worker thread does not share fit's mode
                return self._part(k, c, xs[i], grads[i], batch, i)

        sums = on_threads([lambda i=i: part(i) for i in range(parts)])
        flat = [g for layer in c.grads for g in layer]
        for spare in spares:
            torch._foreach_add_(flat, [g for layer in spare for g in layer])
        return sum(sums) / batch + const

    @staticmethod
    def _compiled(compiled: NativeChain, c: _Chain, x: Tensor, standardize: Standardize | None
                  ) -> Tensor:
        """The step through the compiled C kernel (:mod:`realnvp.training.native`): the
        batch's summed loss less the constant; the gradient written into ``.grad``."""
        x = x.contiguous()
        batch = x.shape[0]
        loc = scale = None
        if standardize is not None:
            loc, scale = standardize.loc, standardize.scale
        parts = _parts(x)
        if parts == 1:
            total = compiled.run(x, loc, scale, c.flat_grads, c.native_work(0, batch), batch)
            return torch.tensor(total, dtype=x.dtype)
        xs = x.tensor_split(parts)
        flats = [c.flat_grads, *c.flat_spare_grads(parts - 1)]
        works = [c.native_work(i, part.shape[0]) for i, part in enumerate(xs)]

        def part(i: int) -> float:
            with flushing_denormals():  # a worker thread does not share fit's mode
                return compiled.run(xs[i], loc, scale, flats[i], works[i], batch)

        total = sum(on_threads([lambda i=i: part(i) for i in range(parts)]))
        for flat in flats[1:]:
            torch._foreach_add_(c.flat_grads, flat)
        return torch.tensor(total, dtype=x.dtype)

    @staticmethod
    def _part(k: Any, c: _Chain, h: Tensor, grads: list[list[Tensor]], batch: int,
              index: int) -> Tensor:
        """Forward and backward of rows ``h`` (part ``index``) of a batch of ``batch``; writes
        their share of the gradient into ``grads`` and returns their summed loss (less the
        constant)."""
        columns = c.columns  # kinds, the halves (4), params, bounds (2), consts, relus
        forward_work, backward_work = c.workspace(index, h)
        with torch.no_grad():
            z, log_det, tapes = k.train_forward(h, *columns, use_onednn(h), forward_work)
            total = 0.5 * z.square().sum() - log_det.sum()
            g_log_det = torch.full((), -1.0 / batch, dtype=z.dtype, device=z.device)
            k.train_backward(z * (1.0 / batch), *columns[:6], grads, tapes, g_log_det,
                             columns[8], columns[9], backward_work)
        return total


TRAIN_WORKSPACE = True
"""Keep each row part's activations in buffers reused from step to step (False: fresh)."""

SPLIT_ROWS = 512
"""Rows per part, at least, when a CPU training batch is split between threads."""


def split_rows(batch_size: int, device: torch.device) -> bool:
    """Whether a training batch of ``batch_size`` rows on ``device`` is split into row parts
    (given more than one thread): on the CPU, from twice :data:`SPLIT_ROWS` rows."""
    return device.type == "cpu" and batch_size >= 2 * SPLIT_ROWS


def _parts(x: Tensor) -> int:
    """How many row parts a training batch is split into: one per CPU thread, each of at
    least :data:`SPLIT_ROWS` rows (1 on accelerators and for smaller batches).

    Each part runs forward and backward on its own single-threaded worker and the weight
    gradients are summed: at these sizes an operation split over threads waits on its
    slowest thread, dozens of times per layer, while whole parts run independently
    (measured: 24 x 32-32 at batch 4096 on 2 threads, 22.7 against 36.3 ms per step; 8 x
    64-64 at batch 1024, 5.7 ms against 8.3 ms on one thread; at batch 512 the gain is
    within the noise, so such batches stay whole, on one thread).
    """
    if not split_rows(x.shape[0], x.device):
        return 1
    return max(1, min(torch.get_num_threads(), x.shape[0] // SPLIT_ROWS))


class _Chain:
    """The layers after the standardisation as the chain kernels take them: their
    ``_fused_spec()`` entries as per-argument lists (:attr:`columns`, in the kernels'
    argument order), and their parameters' gradients."""

    def __init__(self, layers: list[Any], specs: list[tuple[Any, ...]],
                 grads: list[list[Tensor]]) -> None:
        self.layers = layers
        self.columns = ([list(column) for column in zip(*specs, strict=True)] if specs
                        else [[] for _ in range(10)])
        self.grads = grads
        self.native_only = any(spec[0] == SPLINE for spec in specs)  # TorchScript cannot
        self.flat_grads = [g for layer in grads for g in layer]
        self._spares: list[list[list[Tensor]]] = []
        self._flat_spares: list[list[Tensor]] = []
        self._native: NativeChain | bool | None = None  # False: the chain cannot take it
        # part -> (rows, dtype, device), buffers; -1 - part -> rows, the compiled step's
        self._work: dict[int, tuple[Any, Any]] = {}
        # Per coupling: (layer, what its constants depend on, params, grads) when gathered.
        self.checks = [(layer, layer._constants_key(spec[5][-1]), spec[5], g)
                       for layer, spec, g in zip(layers, specs, grads, strict=True)
                       if spec[0] != PERMUTE]
        # Every parameter and the .grad it had when gathered, for valid()'s identity check.
        self._owners = [p for _, _, params, _ in self.checks for p in params]
        self._owner_grads = [g for _, _, _, layer_grads in self.checks for g in layer_grads]
        # The layers and the couplings' conditioners: a hook on any must run, so stops this.
        self._modules = [*layers, *(m.conditioner for m in layers if hasattr(m, "conditioner"))]

    def valid(self) -> bool:
        """Whether the gathered arguments still describe the layers (run every step: the
        loops over parameters are in C, ``map``, rather than Python generators)."""
        if _hooked(self._modules):
            return False
        if not all(layer._constants_key(params[-1]) == key
                   for layer, key, params, _ in self.checks):
            return False
        return all(map(operator.is_, map(_GRAD, self._owners), self._owner_grads))

    def workspace(self, index: int, h: Tensor) -> tuple[list[list[Tensor]], list[Tensor]]:
        """Part ``index``'s activation buffers for rows like ``h``, kept between steps
        (:func:`realnvp.bijections._kernels.training_workspace`)."""
        if not TRAIN_WORKSPACE:
            return [[] for _ in self.columns[5]], []
        key = (h.shape[0], h.dtype, h.device)
        kept = self._work.get(index)
        if kept is None or kept[0] != key:
            kept = (key, training_workspace(self.columns[5], h.shape[0], h))
            self._work[index] = kept
        return kept[1]

    def spare_grads(self, n: int) -> list[list[list[Tensor]]]:
        """``n`` sets of buffers shaped like :attr:`grads`, for the other threads' parts."""
        while len(self._spares) < n:
            spare = [[torch.empty_like(g) for g in layer] for layer in self.grads]
            self._spares.append(spare)
            self._flat_spares.append([g for layer in spare for g in layer])
        return self._spares[:n]

    def flat_spare_grads(self, n: int) -> list[list[Tensor]]:
        """:meth:`spare_grads` as flat lists (the same tensors, kept between steps)."""
        self.spare_grads(n)
        return self._flat_spares[:n]

    def native(self, x: Tensor, standardize: Standardize | None) -> NativeChain | None:
        """The compiled step for this chain and a batch like ``x``, or None where it does
        not apply (:mod:`realnvp.training.native`: float32 on the CPU, ReLU couplings)."""
        if (not native.USE_NATIVE or x.device.type != "cpu" or x.dtype != torch.float32
                or x.dim() != 2):
            return None
        if standardize is not None and not all(
                t.dtype == torch.float32 and t.is_contiguous() and t.shape == (x.shape[1],)
                for t in (standardize.loc, standardize.scale)):
            return None
        if self._native is None:
            lib = native.library()
            try:
                self._native = (NativeChain(lib, self.columns, x.shape[1])
                                if lib is not None and self.columns[0] else False)
            except ValueError:
                self._native = False
        if self._native is False:
            return None
        try:  # weights moved (``p.data = ...``) to a tensor it cannot take: not this step
            self._native.pointers(self._native.params)  # type: ignore[union-attr]
        except ValueError:
            return None
        return self._native  # type: ignore[return-value]

    def native_work(self, index: int, rows: int) -> Tensor:
        """Part ``index``'s workspace for the compiled step on ``rows`` rows, kept between
        steps."""
        kept = self._work.get(-1 - index)
        if kept is None or kept[0] != rows:
            assert isinstance(self._native, NativeChain)
            kept = (rows, torch.empty(self._native.work_floats(rows), dtype=torch.float32))
            self._work[-1 - index] = kept
        return kept[1]


_GRAD = operator.attrgetter("grad")


def _hooked(modules: list[Any]) -> bool:
    """Whether one of ``modules`` has a forward hook (added after gathering)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)

