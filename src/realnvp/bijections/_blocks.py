"""Large CPU batches without gradients, evaluated as row blocks on parallel threads.

Scoring and sampling through a chain of small layers is limited by memory traffic and by
the serial parts of each operation, not by arithmetic: split over the CPU threads *within*
each operation, 8192 rows ran only 1.2-1.4x faster on two threads than on one here. Whole
row blocks, each carried through every layer by one worker thread that runs one operation
at a time (the kernels release the GIL), keep their working set in cache and every core
busy (``benchmarks/README.md``).

Only without autograd or autocast, only on the CPU, only for chains whose layers all treat
rows independently at the moment (:meth:`Bijection.rowwise`), and never nested. The
workers are threads of this module's own pool, each set to one intra-op thread when the
pool starts; the calling thread runs at one thread while it takes its share, and torch's
thread setting is restored before the call returns. Forward hooks of the layers run once
per block, on several threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["BLOCK_ROWS", "autocast_enabled", "by_row_blocks", "flushing_denormals", "on_threads",
           "use_row_blocks"]

T = TypeVar("T")

BLOCK_ROWS = 4096
"""Rows per block, about: a block's activations (64 wide) stay in the core's cache."""

_local = threading.local()
_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()
_callers = [0, 1]  # on_threads calls running now; torch's thread setting they found
_callers_lock = threading.Lock()


def _reset_after_fork() -> None:  # the parent's threads, and any lock they held, are gone
    global _pool, _pool_lock, _callers, _callers_lock
    _pool, _pool_lock = None, threading.Lock()
    _callers, _callers_lock = [0, 1], threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def autocast_enabled() -> bool:
    """Whether CPU autocast is on in this thread."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def use_row_blocks(x: Tensor, rowwise: Callable[[], bool]) -> bool:
    """Whether to evaluate ``x`` in row blocks (at least two blocks' worth of rows).

    ``rowwise`` is asked last: the cheap conditions decide most calls.
    """
    return (x.device.type == "cpu" and x.shape[0] >= 2 * BLOCK_ROWS
            and not torch.is_grad_enabled() and not getattr(_local, "inside", False)
            and not autocast_enabled() and rowwise())


def flushing_denormals_now() -> bool:
    """Whether this thread's CPU treats subnormal floats as zero (flush-to-zero mode)."""
    probe = torch.tensor([1e-39], dtype=torch.float32, device="cpu")
    return bool(probe.mul(1.0).item() == 0.0)


@contextmanager
def flushing_denormals() -> Iterator[None]:
    """Within ``with``, this thread's CPU flushes subnormal floats (below 1.2e-38 in float32)
    to zero; the thread's previous mode is restored afterwards.

    Training with weight decay shrinks the weights of inactive units geometrically, and
    with them Adam's moments, until they are subnormal: each operation on such a number
    then takes a slow microcode path. Measured here (``benchmarks/README.md``), a 3000-step
    fit with weight decay ran at a third of its speed from about step 1500 on, and at full
    speed with flushing. Values that small carry nothing a density fit can use. The mode is
    per thread (the CPU's control register): the row-part workers of a training step set it
    too, and ``TrainStep.flush_subnormals`` (:mod:`realnvp.training.fit`) clears what
    torch's own intra-op threads may leave.

    Example:
        >>> with flushing_denormals():
        ...     torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item()
        0.0
    """
    before = flushing_denormals_now()
    if not before:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not before:
            torch.set_flush_denormal(False)


def _one_thread() -> None:
    torch.set_num_threads(1)


def _executor(workers: int) -> ThreadPoolExecutor:
    """This process's pool of at least ``workers`` single-threaded workers.

    Setting a worker to one thread also sets torch's default for threads started later, so
    the default is put back once every worker has started.
    """
    global _pool
    with _pool_lock:
        old = _pool
        if old is not None and old[0] >= workers:
            return old[1]
        default = torch.get_num_threads()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="realnvp-rows",
                                  initializer=_one_thread)
        barrier = threading.Barrier(workers)
        for future in [pool.submit(barrier.wait) for _ in range(workers)]:
            future.result()  # every worker has started and set itself to one thread
        torch.set_num_threads(default)
        _pool = (workers, pool)
        if old is not None:
            old[1].shutdown(wait=False)  # work already queued there still runs
        return pool


def by_row_blocks(
    fn: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]], x: Tensor,
    context: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``fn(x, context)`` computed on blocks of about :data:`BLOCK_ROWS` rows, concatenated.

    With ``torch.get_num_threads()`` at 1 the blocks run in turn on the calling thread;
    otherwise the calling thread and single-threaded workers, that many in all, share them,
    under the caller's grad mode (inference or no-grad); the first error is raised once
    every block has finished.
    """
    n_blocks = max(2, round(x.shape[0] / BLOCK_ROWS))
    xs = x.tensor_split(n_blocks)
    contexts = context.tensor_split(n_blocks) if context is not None else [None] * n_blocks
    threads = torch.get_num_threads()
    workers = min(threads, n_blocks)
    inference = torch.is_inference_mode_enabled()
    results: list[tuple[Tensor, Tensor]] = [None] * n_blocks  # type: ignore[list-item]

    def work(first: int) -> None:
        outer = getattr(_local, "inside", False)
        _local.inside = True
        try:
            with torch.inference_mode() if inference else torch.no_grad():
                for i in range(first, n_blocks, workers):
                    results[i] = fn(xs[i], contexts[i])
        finally:
            _local.inside = outer

    if workers == 1:
        work(0)
    else:
        on_threads([lambda w=w: work(w) for w in range(workers)])
    return _concatenated(results)


def on_threads(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``tasks`` at once: the first on the calling thread, the others on this module's
    single-threaded workers; returns their results in order.

    The calling thread runs its task at one intra-op thread (measured: 20% faster scoring
    than leaving it idle, its heap being the warm one) and puts torch's setting back once
    every task has finished, error or not; the first error is raised after that. The
    setting is read by the first of any concurrent callers and restored by each of them
    (torch keeps it per thread, but a thread started meanwhile inherits the 1, and so would
    a second caller's reading of it).
    """
    pool = _executor(len(tasks) - 1) if len(tasks) > 1 else None
    futures = [pool.submit(task) for task in tasks[1:]] if pool is not None else []
    with _callers_lock:
        if _callers[0] == 0:  # later concurrent callers could read the 1 set below
            _callers[1] = torch.get_num_threads()
        _callers[0] += 1
        restore = _callers[1]
        torch.set_num_threads(1)
    try:
        first = tasks[0]()
    finally:
        wait(futures)
        with _callers_lock:
            _callers[0] -= 1
            torch.set_num_threads(restore)
    return [first, *(future.result() for future in futures)]


def _concatenated(results: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])
