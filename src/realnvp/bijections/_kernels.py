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

import threading
import warnings
from typing import Any, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from realnvp.bijections._blocks import autocast_enabled
from realnvp.bijections._pieces import lookup

__all__ = ["COUPLING", "PERMUTE", "Kernels", "bound_constants", "chain_backward", "chain_forward",
           "chain_forward_train", "chain_inverse", "coupling_backward", "coupling_forward",
           "coupling_inverse", "hidden_width", "kernels", "merge_columns", "run_chain",
           "take_columns", "training_workspace", "use_onednn", "workspace"]

ONEDNN_MIN_ROWS = 2048
"""Below this many rows the fused oneDNN layer costs more to set up than it saves."""


def use_onednn(x: Tensor) -> bool:
    """Whether the fused oneDNN hidden layers pay off for a batch like ``x``."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and x.shape[0] >= ONEDNN_MIN_ROWS and torch.backends.mkldnn.is_available())


def _layer(a: Tensor, w: Tensor, b: Tensor, relu: bool, onednn: bool,
           out: Optional[Tensor] = None) -> Tensor:  # noqa: UP045 - TorchScript's spelling
    """``act(a @ w.T + b)``: one input as an outer product, fused by oneDNN where asked;
    written into ``out`` (a reused buffer, see :func:`workspace`) when one is given."""
    if out is not None:
        if w.shape[1] == 1:
            torch.addcmul(b, a, w.t(), out=out)
        elif a.shape[0] >= 1024:  # a contiguous right factor: a few % (benchmarks/README)
            torch.addmm(b, a, w.t().contiguous(), out=out)
        else:
            torch.addmm(b, a, w.t(), out=out)
        return torch.relu_(out) if relu else torch.tanh_(out)
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


def _rows(flat: Tensor, rows: int, width: int) -> Tensor:
    """The start of the flat buffer ``flat`` as a ``(rows, width)`` matrix."""
    return flat[: rows * width].view(rows, width)


def _hidden(a: Tensor, params: list[Tensor], relu: bool, onednn: bool,
            work: Optional[list[Tensor]]) -> list[Tensor]:  # noqa: UP045
    """The conditioner's input and hidden activations, ``[a, act_1, ..., act_n-1]``; with
    ``work`` flat buffers the activations are written into them in turn (scoring passes a
    pair, used alternately; the training step one buffer per hidden layer)."""
    acts: list[Tensor] = [a]
    rows = a.shape[0]
    for k in range(len(params) // 2 - 1):
        out: Optional[Tensor] = None  # noqa: UP045
        if work is not None and len(work) > 0:
            out = _rows(work[k % len(work)], rows, params[2 * k].shape[0])
        acts.append(_layer(acts[-1], params[2 * k], params[2 * k + 1], relu, onednn, out))
    return acts


WORKSPACE_BYTES = 8 << 20
"""Largest activation (bytes) that :func:`workspace` keeps a buffer for, per thread."""

WORKSPACE_MIN_ROWS = 256
"""Below this many rows activations are small heap allocations: no buffers."""

_workspaces = threading.local()


def hidden_width(params: list[Tensor]) -> int:
    """The widest hidden layer of a conditioner with weights ``params`` (0: none)."""
    return max([params[2 * k].shape[0] for k in range(len(params) // 2 - 1)] + [0])


def _keeps_buffers(rows: int, width: int, like: Tensor) -> bool:
    """Whether activations of ``rows`` x ``width`` like ``like`` go into reused buffers."""
    need = rows * width
    return not (rows < WORKSPACE_MIN_ROWS or like.device.type != "cpu" or need == 0
                or need * like.element_size() > WORKSPACE_BYTES
                or autocast_enabled())  # (under autocast, buffers would bypass its casts)


def workspace(rows: int, width: int, like: Tensor) -> list[Tensor]:
    """This thread's pair of flat buffers for hidden activations of ``rows`` rows and up to
    ``width`` columns, reused from call to call; ``[]`` where none applies (not the CPU,
    fewer than :data:`WORKSPACE_MIN_ROWS` rows, no hidden layer, activations over
    :data:`WORKSPACE_BYTES`, or CPU autocast on).

    Scoring and sampling allocate the same activations again and again; each allocation
    of a megabyte or so is a fresh mapping from the C allocator, page-faulted in anew.
    Buffers are made outside inference mode, so that they can be written in any mode, and
    only the kernels' intermediate activations live in them (never a returned tensor).
    """
    need = rows * width
    if not _keeps_buffers(rows, width, like):
        return []
    pair = getattr(_workspaces, "pair", None)
    if pair is None or pair[0].numel() < need or pair[0].dtype != like.dtype:
        with torch.inference_mode(False):
            pair = [torch.empty(need, dtype=like.dtype) for _ in range(2)]
        _workspaces.pair = pair
    return pair


def take_columns(h: Tensor, index: Tensor, view: list[int]) -> Tensor:
    """Columns ``index`` of ``h``: a view when ``view`` is ``[start, stop, step]``, else a copy."""
    if len(view) == 3:
        return torch.ops.aten.slice(h, 1, view[0], view[1], view[2])
    return h.index_select(1, index)


def merge_columns(x1: Tensor, x2: Tensor, kept: Tensor, transformed: Tensor,
                  kept_view: list[int], transformed_view: list[int]) -> Tensor:
    """The rows whose columns ``kept`` are ``x1`` and columns ``transformed`` are ``x2``.

    The two index sets partition the columns (they come from one mask). Two contiguous
    blocks are concatenated and two interleaved halves (even and odd columns) stacked: one
    operation instead of a copy and two scatters.
    """
    if len(kept_view) == 3 and len(transformed_view) == 3:
        if kept_view[2] == 1 and transformed_view[2] == 1:
            if kept_view[0] == 0:
                return torch.cat([x1, x2], 1)
            return torch.cat([x2, x1], 1)
        if kept_view[2] == 2 and transformed_view[2] == 2 and x1.shape[1] == x2.shape[1]:
            pair = [x1, x2] if kept_view[0] == 0 else [x2, x1]
            return torch.stack(pair, 2).flatten(1)
    out = x1.new_empty(x1.shape[0], x1.shape[1] + x2.shape[1])
    out.index_copy_(1, kept, x1)
    return out.index_copy_(1, transformed, x2)


TRAINING_WORKSPACE_MIN_BYTES = 256 << 10
"""Activations of a training step's row part from which it keeps them in buffers.

``benchmarks/step_time.py --compare train-buffers`` (buffers on / off, medians of 21
alternated rounds): 8 x 64-64 at batch 4096 on 2 threads 22.65 / 24.13 ms, batch 2048 on 1
thread 20.04 / 22.14; medians of 7: 24 x 32-32 at batch 4096 on 2 threads 35.29 / 37.38, at
256 KiB (8 x 64-64, batch 1024) 12.05 / 12.13; below it no faster: batch 512, 8 x 64-64
9.32 / 9.00 and 24 x 32-32 17.04 / 15.36 (small allocations come from the heap, still warm
in the cache; for scale, one code path timed against itself moved by 7%)."""


def training_workspace(params: list[list[Tensor]], rows: int, like: Tensor
                       ) -> tuple[list[list[Tensor]], list[Tensor]]:
    """Buffers for one training step of ``rows`` rows through layers with conditioner
    weights ``params`` (an empty list for a permutation): per layer, one flat buffer per
    hidden layer (the activations the backward pass reads), and a pair for the backward
    pass's activation gradients. ``([[], ...], [])`` for activations under
    :data:`TRAINING_WORKSPACE_MIN_BYTES` and wherever :func:`workspace` keeps none. The
    buffered hidden layers are ``addmm`` into the buffer and an in-place ReLU, not oneDNN's
    fused layer (which allocates its output): faster in all, as measured below.

    Each step would otherwise allocate every activation afresh, and an allocation of a
    quarter of a megabyte or more is often a new mapping from glibc, page-faulted in again
    on every step (about 900 faults per step at batch 4096, 8 x 64-64): the caller keeps
    these between steps (``realnvp.training.fast``). Smaller activations come from the
    heap, still warm in the cache, and go without buffers (see
    :data:`TRAINING_WORKSPACE_MIN_BYTES`).
    """
    widths = [[p[2 * k].shape[0] for k in range(len(p) // 2 - 1)] for p in params]
    widest = max([hidden_width(p) for p in params] + [0])
    if (rows * widest * like.element_size() < TRAINING_WORKSPACE_MIN_BYTES
            or not _keeps_buffers(rows, widest, like)):
        return [[] for _ in params], []
    # The backward pass writes the gradient of every linear layer's input, the
    # conditioner's own input included (wider than its hidden layers on wide data).
    inputs = max([p[2 * k].shape[1] for p in params for k in range(len(p) // 2)] + [0])
    with torch.inference_mode(False):
        forward = [[like.new_empty(rows * w) for w in layer] for layer in widths]
        backward = [like.new_empty(rows * max(widest, inputs)) for _ in range(2)]
    return forward, backward


def bound_constants(input_bound: float, scale_bound: float, like: Tensor) -> list[Tensor]:
    """``[b, 1/b, c, 1/c, 1, -c]`` as 0-dim tensors like ``like`` (a bound <= 0 gives 1).

    The kernels multiply by these instead of Python numbers: a number becomes a tensor
    (and a dtype conversion) on every scripted operation that takes it.
    """
    values = [input_bound, 1.0 / input_bound if input_bound > 0 else 1.0,
              scale_bound, 1.0 / scale_bound if scale_bound > 0 else 1.0, 1.0,
              -scale_bound if scale_bound > 0 else -1.0]
    return [torch.tensor(v if v != 0 else 1.0, dtype=like.dtype, device=like.device)
            for v in values]


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


def _conditioner(a: Tensor, params: list[Tensor], relu: bool, onednn: bool,
                 work: Optional[list[Tensor]], d2: int,  # noqa: UP045
                 ) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(raw log-scale, shift, activations)`` of the conditioner at ``a``.

    ``params`` are the MLP's weights and biases, or (a 1-D first entry) the two tables of
    its linear pieces (:mod:`realnvp.bijections._pieces`; scoring only, no activations).
    """
    if params[0].dim() == 1:
        out = lookup(a, params[0], params[1])
        return out[:, :d2], out[:, d2:], [a]
    acts = _hidden(a, params, relu, onednn, work)
    n = len(params) // 2
    s, shift = _head(acts[-1], params[2 * n - 2], params[2 * n - 1], d2, onednn)
    return s, shift, acts


def coupling_forward(
    h: Tensor, kept: Tensor, transformed: Tensor, kept_view: list[int],
    transformed_view: list[int], params: list[Tensor], input_bound: float, scale_bound: float,
    consts: list[Tensor], relu: bool, onednn: bool = False,
    work: Optional[list[Tensor]] = None,  # noqa: UP045
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One affine coupling, forward; returns ``(y, sum of s, tape)``. Bounds <= 0: none.

    ``kept``/``transformed`` index the halves; ``*_view`` give them as ``[start, stop,
    step]`` when they are evenly spaced (then no copy is made), or ``[]``. ``consts`` are
    the bounds as tensors (:func:`bound_constants`). With ``work`` (scoring: see
    :func:`workspace`) the hidden activations are written into those buffers, and the
    tape's activations are only valid until their next use.
    """
    x1 = take_columns(h, kept, kept_view)
    x2 = take_columns(h, transformed, transformed_view)
    empty = h.new_empty(0)
    squashed = empty
    a = x1
    if input_bound > 0:
        squashed = torch.tanh(x1 * consts[1])
        a = squashed * consts[0]
    s, shift, acts = _conditioner(a, params, relu, onednn, work, x2.shape[1])
    ts = empty
    if scale_bound > 0:
        ts = torch.tanh(s * consts[3])
        s = ts * consts[2]
    exp_s = torch.exp(s)
    y2 = torch.addcmul(shift, x2, exp_s)
    y = merge_columns(x1, y2, kept, transformed, kept_view, transformed_view)
    return y, s.sum(1), [squashed, ts, exp_s, x2] + acts


def coupling_backward(
    g: Tensor, kept: Tensor, transformed: Tensor, kept_view: list[int],
    transformed_view: list[int], params: list[Tensor], grads: list[Tensor], tape: list[Tensor],
    g_log_det: Tensor, one: Tensor, relu: bool, work: list[Tensor],
) -> Tensor:
    """One affine coupling, backward: writes weight gradients, returns d loss / d input.

    ``g_log_det`` is d loss / d log-det (a 0-dim tensor) and ``one`` a 0-dim 1. ``work``:
    two flat buffers for the gradients of the hidden activations, used alternately (or
    ``[]``: fresh tensors).
    """
    squashed, ts, exp_s, x2 = tape[0], tape[1], tape[2], tape[3]
    acts = tape[4:]
    g1 = take_columns(g, kept, kept_view)
    g_y2 = take_columns(g, transformed, transformed_view)
    g_x2 = g_y2 * exp_s
    g_s = torch.addcmul(g_log_det, g_x2, x2)  # d/ds of y2 = x2 exp(s) + t, and of log-det
    if ts.numel() > 0:
        g_s.mul_(torch.addcmul(one, ts, ts, value=-1.0))
    g_h = torch.cat([g_s, g_y2], dim=1)
    n = len(params) // 2
    for k in range(n - 1, -1, -1):
        torch.mm(g_h.t(), acts[k], out=grads[2 * k])
        torch.sum(g_h, 0, out=grads[2 * k + 1])
        if len(work) == 2:
            out = _rows(work[(n - 1 - k) % 2], g_h.shape[0], params[2 * k].shape[1])
            g_h = torch.mm(g_h, params[2 * k], out=out)
        else:
            g_h = g_h.mm(params[2 * k])
        if k > 0:
            if relu:
                # In place: g_h is this layer's own fresh product.
                g_h = torch.ops.aten.threshold_backward(g_h, acts[k], 0.0, grad_input=g_h)
            else:
                g_h.mul_(torch.addcmul(one, acts[k], acts[k], value=-1.0))
    if squashed.numel() > 0:
        g_h.mul_(torch.addcmul(one, squashed, squashed, value=-1.0))
    return merge_columns(g1 + g_h, g_x2, kept, transformed, kept_view, transformed_view)


def coupling_inverse(
    z: Tensor, kept: Tensor, transformed: Tensor, kept_view: list[int],
    transformed_view: list[int], params: list[Tensor], input_bound: float, scale_bound: float,
    consts: list[Tensor], relu: bool, onednn: bool = False,
    work: Optional[list[Tensor]] = None,  # noqa: UP045
) -> tuple[Tensor, Tensor]:
    """One affine coupling, inverse: ``x2 = (z2 - t) exp(-s)``; returns ``(x, -sum of s)``.

    ``work``: buffers for the hidden activations, as in :func:`coupling_forward`."""
    z1 = take_columns(z, kept, kept_view)
    z2 = take_columns(z, transformed, transformed_view)
    a = z1
    if input_bound > 0:
        a = torch.tanh(z1 * consts[1]) * consts[0]
    s, shift, _ = _conditioner(a, params, relu, onednn, work, z2.shape[1])
    neg_s = torch.tanh(s * consts[3]) * consts[5] if scale_bound > 0 else -s
    x2 = (z2 - shift) * torch.exp(neg_s)
    return merge_columns(z1, x2, kept, transformed, kept_view, transformed_view), neg_s.sum(1)


COUPLING, PERMUTE, SPLINE = 0, 1, 2
"""Layer kinds in the chain kernels: an affine coupling; a permutation (``kept`` holds its
index, ``transformed`` the inverse's); a rational-quadratic spline coupling, which only
the compiled training step (:mod:`realnvp.training.native`) takes (see
:meth:`realnvp.bijections.base.Bijection._training_spec`)."""


def chain_forward_train(
    h: Tensor, kinds: list[int], kept: list[Tensor], transformed: list[Tensor],
    kept_views: list[list[int]], transformed_views: list[list[int]], params: list[list[Tensor]],
    input_bounds: list[float], scale_bounds: list[float], consts: list[list[Tensor]],
    relus: list[bool], onednn: bool, work: list[list[Tensor]],
) -> tuple[Tensor, Tensor, list[list[Tensor]]]:
    """A stack of affine couplings and permutations, forward, for the training step.

    One compiled call for the whole stack (a call into TorchScript costs about as much as a
    few small operations); per layer, the arguments of :func:`coupling_forward`. Returns
    ``(z, log-det, tapes)``. Compiled on its own, so the training batch shape never displaces
    the scoring shapes of the per-layer kernels (TorchScript's GPU specialisation).
    ``work``: per layer, one flat buffer per hidden layer for the activations the backward
    pass needs (see :func:`training_workspace`), or an empty list per layer.
    """
    log_det = h.new_zeros(h.shape[0])
    tapes: list[list[Tensor]] = []
    for i in range(len(kinds)):
        if kinds[i] == 1:  # PERMUTE (TorchScript reads no global constants)
            h = h.index_select(1, kept[i])
            tapes.append(torch.jit.annotate(list[Tensor], []))
        else:
            h, s_sum, tape = coupling_forward(h, kept[i], transformed[i], kept_views[i],
                                              transformed_views[i], params[i], input_bounds[i],
                                              scale_bounds[i], consts[i], relus[i], onednn,
                                              work[i])
            log_det.add_(s_sum)
            tapes.append(tape)
    return h, log_det, tapes


def chain_backward(
    g: Tensor, kinds: list[int], kept: list[Tensor], transformed: list[Tensor],
    kept_views: list[list[int]], transformed_views: list[list[int]], params: list[list[Tensor]],
    grads: list[list[Tensor]], tapes: list[list[Tensor]], g_log_det: Tensor,
    consts: list[list[Tensor]], relus: list[bool], work: list[Tensor],
) -> Tensor:
    """The backward pass of :func:`chain_forward_train`: writes every layer's weight
    gradients and returns d loss / d input. ``work``: two flat buffers for the hidden
    activations' gradients (see :func:`training_workspace`), or ``[]``."""
    for i in range(len(kinds) - 1, -1, -1):
        if kinds[i] == 1:  # PERMUTE (TorchScript reads no global constants)
            g = g.index_select(1, transformed[i])
        else:
            g = coupling_backward(g, kept[i], transformed[i], kept_views[i], transformed_views[i],
                                  params[i], grads[i], tapes[i], g_log_det, consts[i][4],
                                  relus[i], work)
    return g


def chain_forward(
    h: Tensor, kinds: list[int], kept: list[Tensor], transformed: list[Tensor],
    kept_views: list[list[int]], transformed_views: list[list[int]], params: list[list[Tensor]],
    input_bounds: list[float], scale_bounds: list[float], consts: list[list[Tensor]],
    relus: list[bool], onednn: bool, work: Optional[list[Tensor]],  # noqa: UP045
) -> tuple[Tensor, Tensor]:
    """A run of couplings and permutations, forward, for scoring: one compiled call instead
    of one per layer (each call from Python costs about as much as a small layer's
    arithmetic); the arguments of :func:`chain_forward_train`, plus the ``work`` buffers.
    Returns ``(z, log-det)``."""
    log_det = h.new_zeros(h.shape[0])
    for i in range(len(kinds)):
        if kinds[i] == 1:  # PERMUTE
            h = h.index_select(1, kept[i])
        else:
            h, s_sum, _ = coupling_forward(h, kept[i], transformed[i], kept_views[i],
                                           transformed_views[i], params[i], input_bounds[i],
                                           scale_bounds[i], consts[i], relus[i], onednn, work)
            log_det.add_(s_sum)
    return h, log_det


def chain_inverse(
    h: Tensor, kinds: list[int], kept: list[Tensor], transformed: list[Tensor],
    kept_views: list[list[int]], transformed_views: list[list[int]], params: list[list[Tensor]],
    input_bounds: list[float], scale_bounds: list[float], consts: list[list[Tensor]],
    relus: list[bool], onednn: bool, work: Optional[list[Tensor]],  # noqa: UP045
) -> tuple[Tensor, Tensor]:
    """The inverses of a run of layers, applied in the order given (the caller lists the
    layers last to first), for sampling; returns ``(x, log-det of the inverse)``."""
    log_det = h.new_zeros(h.shape[0])
    for i in range(len(kinds)):
        if kinds[i] == 1:  # PERMUTE: ``transformed`` holds the inverse permutation
            h = h.index_select(1, transformed[i])
        else:
            h, s_sum = coupling_inverse(h, kept[i], transformed[i], kept_views[i],
                                        transformed_views[i], params[i], input_bounds[i],
                                        scale_bounds[i], consts[i], relus[i], onednn, work)
            log_det.add_(s_sum)
    return h, log_det


class Kernels(NamedTuple):
    """The compiled (or Python) coupling kernels."""

    forward: Any
    inverse: Any
    train_forward: Any
    train_backward: Any
    chain_forward: Any
    chain_inverse: Any


_PYTHON = Kernels(coupling_forward, coupling_inverse, chain_forward_train, chain_backward,
                  chain_forward, chain_inverse)


def run_chain(specs: list[tuple[Any, ...]], x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """Layers given by their ``_fused_spec()`` (in the order to apply them), in one call.

    Each spec is ``(kind, kept, transformed, kept_view, transformed_view, params,
    input_bound, scale_bound, consts, relu)``; see :func:`chain_forward`.
    """
    columns = [list(c) for c in zip(*specs, strict=True)]
    width = max(hidden_width(p) for p in columns[5])
    k = kernels(x.device)
    run = k.chain_inverse if inverse else k.chain_forward
    return run(x, *columns, use_onednn(x), workspace(x.shape[0], width, x))


_CACHE: list[Kernels] = []
_COMPILING = threading.Lock()  # row blocks may ask for the kernels from several threads

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
        ['chain_forward', 'chain_inverse', 'forward', 'inverse', 'train_backward', 'train_forward']
    """
    if device is not None and device.type != "cpu" and not SCRIPTED_ON_ACCELERATORS:
        return _PYTHON
    if not _CACHE:
        with _COMPILING:
            if not _CACHE:
                _CACHE.append(_compile())
    return _CACHE[0]


def _compile() -> Kernels:
    try:
        with warnings.catch_warnings():  # deprecated in recent torch; we fall back if gone
            warnings.simplefilter("ignore")
            return Kernels(*(torch.jit.script(f) for f in _PYTHON))
    except Exception:  # noqa: BLE001 - any scripting failure: run the same code in Python
        return _PYTHON
