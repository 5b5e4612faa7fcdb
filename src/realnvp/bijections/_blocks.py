"""Large CPU batches without gradients, evaluated as row blocks on parallel threads.

Scoring and sampling through a chain of small layers is limited by memory traffic and by
the serial parts of each operation, not by arithmetic: split over the CPU threads *within*
each operation, 8192 rows ran only 1.2-1.4x faster on two threads than on one here. Whole
row blocks, each carried through every layer on its own thread (the kernels release the
GIL), keep their working set in cache and both cores busy (``benchmarks/README.md``).

Only without autograd, only on the CPU, only for chains whose layers all treat rows
independently at the moment (:meth:`Bijection.rowwise`), and never nested.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = ["BLOCK_ROWS", "by_row_blocks", "use_row_blocks"]

BLOCK_ROWS = 4096
"""Rows per block, about: a block's activations (64 wide) stay in the core's cache."""

_local = threading.local()
_pool: list[tuple[int, ThreadPoolExecutor]] = []
_pool_lock = threading.Lock()


def use_row_blocks(x: Tensor, rowwise: bool) -> bool:
    """Whether to evaluate ``x`` in row blocks (at least two blocks' worth of rows)."""
    return (rowwise and x.device.type == "cpu" and x.shape[0] >= 2 * BLOCK_ROWS
            and not torch.is_grad_enabled() and not getattr(_local, "inside", False))


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of at least ``workers`` threads (a fresh one after a fork)."""
    with _pool_lock:
        pid = os.getpid()
        if _pool and (_pool[0][0] != pid or _pool[0][1]._max_workers < workers):
            stale = _pool.pop()
            if stale[0] == pid:
                stale[1].shutdown(wait=False)
        if not _pool:
            _pool.append((pid, ThreadPoolExecutor(workers, thread_name_prefix="realnvp-rows")))
        return _pool[0][1]


def by_row_blocks(
    fn: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]], x: Tensor,
    context: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``fn(x, context)`` computed on blocks of about :data:`BLOCK_ROWS` rows, concatenated.

    The blocks are shared round-robin among ``torch.get_num_threads()`` threads (the
    calling one included), each running one operation at a time on one core, under the
    caller's grad mode (inference or no-grad).
    """
    n_blocks = max(2, round(x.shape[0] / BLOCK_ROWS))
    xs = x.tensor_split(n_blocks)
    contexts = context.tensor_split(n_blocks) if context is not None else [None] * n_blocks
    threads = torch.get_num_threads()
    workers = min(threads, n_blocks)
    inference = torch.is_inference_mode_enabled()
    results: list[tuple[Tensor, Tensor]] = [None] * n_blocks  # type: ignore[list-item]

    def work(first: int) -> None:
        _local.inside = True
        torch.set_num_threads(1)  # this thread's operations; the caller's is restored below
        try:
            with torch.inference_mode() if inference else torch.no_grad():
                for i in range(first, n_blocks, workers):
                    results[i] = fn(xs[i], contexts[i])
        finally:
            _local.inside = False

    try:
        pending = [_executor(workers - 1).submit(work, w) for w in range(1, workers)]
        work(0)
        for future in pending:
            future.result()
    finally:
        torch.set_num_threads(threads)
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])
