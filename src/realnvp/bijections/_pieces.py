r"""Exact piecewise-linear tables of one-input ReLU conditioners, for scoring and sampling.

A ReLU network of one input ``a`` is continuous and piecewise linear in ``a``. Each unit of
the first hidden layer switches on or off at one point, ``a = -b_i / w_i``; between two such
points every pre-activation of the next layer is affine in ``a``, so each of its units
switches at most once more there; and so on up the layers. The whole conditioner is then

    out(a) = v_j + p_j (a - m_j)        for a in [e_{j-1}, e_j],

with finitely many intervals ``j`` (``m_j`` a point inside, ``v_j = out(m_j)``). Every
coupling of a 2-D flow has a one-input conditioner, and so has every other coupling of a
3-D flow with alternating masks. There a binary search and a gather per row replace the
``1 x H``, ``H x H`` and ``H x out`` matrix products (an affine coupling's scoring cost),
with no approximation: the tables are the network, computed in float64 and rounded once
to the parameters' dtype, closer to the float64 network than the float32 matrix products
are (``tests/test_pieces.py``).

The tables are made from the parameters' values and kept with them (:class:`PieceTables`).
They are made only after :data:`TABLE_MIN_ROWS` rows were scored with the same values, so a
training loop that scores a validation set between steps never pays for them; scoring a
file, sampling again and again, or drawing pictures of a trained model does. They are used
only for conditioners wide enough that a lookup beats the products (:data:`TABLE_MIN_MACS`:
64-64 and wider) and for calls of :data:`LOOKUP_MIN_ROWS` rows or more.

Example:
    >>> import torch
    >>> from realnvp.nn import MLP
    >>> net = MLP(1, 2, hidden=(16, 16), zero_last=False).double()
    >>> edges, table = relu_pieces(net.flat_parameters(), -10.0, 10.0, 10_000)
    >>> a = torch.linspace(-10, 10, 101, dtype=torch.float64)[:, None]
    >>> out = lookup(a, torch.from_numpy(edges), torch.from_numpy(table))
    >>> bool(torch.allclose(out, net(a), atol=1e-12))
    True
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

__all__ = ["LOOKUP_MIN_ROWS", "MAX_PIECES", "TABLE_MIN_MACS", "TABLE_MIN_ROWS", "USE_TABLES",
           "PieceTables", "lookup", "relu_pieces", "worth_tables"]

USE_TABLES = True
"""Set False to score and sample with the conditioners' matrix products everywhere."""

TABLE_MIN_ROWS = 16384
"""Rows scored with unchanged parameters before their tables are made (a few ms each)."""

LOOKUP_MIN_ROWS = 256
"""Calls with fewer rows keep the products (checking the tables' key costs about as much)."""

TABLE_MIN_MACS = 3000
"""Hidden-to-hidden multiply-adds per row from which the tables beat the matrix products.

A lookup costs about as much as a few elementwise passes over the batch, whatever the
width: ``benchmarks/step_time.py --compare tables`` (8 couplings, 8192 points) measured
tables on / off at 5.9 / 4.8 ms for 32-32 conditioners, 6.0 / 6.0 for 48-48, 6.4 / 9.4
for 64-64 and 8.7 / 24.2 for 128-128."""

MAX_PIECES = 16384
"""Above this many linear pieces a conditioner keeps its matrix products."""

_BUILDING = threading.Lock()  # row blocks score on several threads; one of them builds


def worth_tables(params: list[Tensor]) -> bool:
    """Whether a one-input conditioner with these weights is wide enough for the tables."""
    hidden = params[2:-2:2]  # weights between hidden layers
    return sum(w.numel() for w in hidden) >= TABLE_MIN_MACS


def relu_pieces(params: list[Tensor], lo: float, hi: float, max_pieces: int
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """The linear pieces of a one-input ReLU MLP on ``[lo, hi]`` (infinite ends allowed).

    ``params`` are ``[W_1, b_1, ..., W_n, b_n]`` with ``W_1`` of one column. Returns
    ``(edges, table)`` in float64: the ``P - 1`` inner interval ends, increasing, and a
    ``(P, 2 out + 1)`` table whose row ``j`` is ``[v_j, p_j, m_j]``; or None when there are
    more than ``max_pieces`` pieces.
    """
    p = [q.detach().to("cpu", torch.float64).numpy() for q in params]
    ends = np.array([lo, hi], dtype=np.float64)
    slope = np.ones((1, 1))  # the current layer's input on each interval: slope * a + icpt
    icpt = np.zeros((1, 1))
    for k in range(len(p) // 2 - 1):
        pre_slope = slope @ p[2 * k].T
        pre_icpt = icpt @ p[2 * k].T + p[2 * k + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            roots = -pre_icpt / pre_slope
        inside = (roots > ends[:-1, None]) & (roots < ends[1:, None])
        old, ends = ends, np.unique(np.concatenate([ends, roots[inside]]))
        if len(ends) - 1 > max_pieces:
            return None
        mid = _midpoints(ends)
        parent = np.searchsorted(old[1:-1], mid)
        pre_slope, pre_icpt = pre_slope[parent], pre_icpt[parent]
        on = pre_slope * mid[:, None] + pre_icpt > 0
        slope, icpt = pre_slope * on, pre_icpt * on
    mid = _midpoints(ends)
    out_slope = slope @ p[-2].T
    value = (slope * mid[:, None] + icpt) @ p[-2].T + p[-1]
    return ends[1:-1].copy(), np.concatenate([value, out_slope, mid[:, None]], axis=1)


def _midpoints(ends: np.ndarray) -> np.ndarray:
    """A point inside each interval ``[ends[j], ends[j + 1]]``; next to an infinite end, as
    far out again as the finite end (at least 1), so that a kink far out (a nearly dead unit,
    at 1e17 say) still has its piece's point strictly beyond it."""
    with np.errstate(invalid="ignore"):  # -inf + inf, rewritten below
        mid = (ends[:-1] + ends[1:]) / 2
    if np.isinf(ends[0]):
        mid[0] = ends[1] - max(1.0, abs(ends[1])) if np.isfinite(ends[1]) else 0.0
    if np.isinf(ends[-1]) and len(ends) > 2:
        mid[-1] = ends[-2] + max(1.0, abs(ends[-2]))
    return mid


def lookup(a: Tensor, edges: Tensor, table: Tensor) -> Tensor:
    """The conditioner's output at ``a`` (``(batch, 1)``) from :func:`relu_pieces`' tables."""
    rows = table.index_select(0, torch.searchsorted(edges, a.reshape(-1).contiguous()))
    n = (table.shape[1] - 1) // 2
    return torch.addcmul(rows[:, :n], rows[:, n : 2 * n], a - rows[:, 2 * n :])


class PieceTables:
    """The tables of one conditioner, kept for the parameter values they were made from.

    :meth:`get` returns ``[edges, table]`` for the current values and input bound once
    :data:`TABLE_MIN_ROWS` rows have been scored with them, else None. The values are
    compared, not version counters: an in-place edit through ``.data`` does not count as a
    change to autograd, and must here. Copies of a module (``deepcopy``, pickling) carry the
    tables with the values they were made from.

    Example:
        >>> from realnvp.nn import MLP
        >>> params = MLP(1, 2, hidden=(8,)).flat_parameters()
        >>> tables = PieceTables()
        >>> tables.get(params, 10.0, 100) is None, tables.get(params, 10.0, 20_000) is None
        (True, False)
    """

    def __init__(self) -> None:
        self._values: Tensor | None = None
        self._rows = 0
        self._tables: list[Tensor] | None = None
        self._failed = False
        self._bound: float | None = None

    def get(self, params: list[Tensor], input_bound: float | None, rows: int
            ) -> list[Tensor] | None:
        """The tables for ``params`` (scoring ``rows`` rows now), or None for the products."""
        with torch.no_grad():
            values = torch.cat([q.reshape(-1) for q in params])
        seen = self._values
        if (seen is None or seen.dtype != values.dtype or input_bound != self._bound
                or not torch.equal(seen, values)):
            with _BUILDING:  # the tables cover [-input_bound, input_bound]: a key too
                self._values, self._rows, self._tables, self._failed = values, rows, None, False
                self._bound = input_bound
            return None
        if self._tables is not None or self._failed:
            return self._tables
        self._rows += rows
        if self._rows < TABLE_MIN_ROWS:
            return None
        with _BUILDING:
            if self._tables is None and not self._failed and self._values is seen:
                bound = float("inf") if input_bound is None else float(input_bound)
                # From the values compared above, not the live parameters (which another
                # thread could be changing).
                pieces = seen.split([q.numel() for q in params])
                shaped = [t.view(q.shape) for t, q in zip(pieces, params, strict=True)]
                built = relu_pieces(shaped, -bound, bound, MAX_PIECES)
                if built is None:
                    self._failed = True
                else:
                    with torch.inference_mode(False):  # usable outside inference mode too
                        self._tables = [torch.from_numpy(t).to(values.dtype) for t in built]
            return self._tables
