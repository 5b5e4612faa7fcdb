"""Large CPU batches without autograd run as row blocks on parallel threads: same results."""

from __future__ import annotations

import os
import threading

import pytest
import torch

import realnvp
from realnvp.bijections import _blocks
from realnvp.bijections.base import Bijection

from registry import randomize

ROWS = 3 * _blocks.BLOCK_ROWS + 123  # several blocks, the last one uneven


def _flow(**kwargs: object) -> realnvp.Flow:
    return randomize(realnvp.RealNVP(dim=3, n_layers=4, hidden=(16, 16), **kwargs), std=0.2)


def _serial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_blocks, "BLOCK_ROWS", 10**12)


@pytest.fixture
def blocks_used(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that went through the row blocks (rows per call)."""
    from realnvp.bijections import base

    calls: list[int] = []
    real = base.by_row_blocks

    def spy(fn, x, context):  # type: ignore[no-untyped-def]
        calls.append(x.shape[0])
        return real(fn, x, context)

    monkeypatch.setattr(base, "by_row_blocks", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_give_the_whole_batch_result(dtype: torch.dtype, blocks_used: list[int],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    flow = _flow().to(dtype)
    x = torch.randn(ROWS, 3, dtype=dtype)
    z = torch.randn(ROWS, 3, dtype=dtype)
    with torch.inference_mode():
        blocked = flow.log_prob(x), *flow.inverse(z)
    assert blocks_used == [ROWS, ROWS]
    _serial(monkeypatch)
    with torch.inference_mode():
        whole = flow.log_prob(x), *flow.inverse(z)
    assert len(blocks_used) == 2
    for got, expected in zip(blocked, whole, strict=True):
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_blocks_change_no_thread_settings(blocks_used: list[int]) -> None:
    flow = _flow()
    threads = torch.get_num_threads()
    with torch.no_grad():
        flow.log_prob(torch.randn(ROWS, 3))
    assert blocks_used and torch.get_num_threads() == threads
    seen: list[int] = []  # a thread started afterwards gets torch's default, not 1
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start(), later.join()
    assert seen == [threads]


def test_blocks_are_skipped_under_autocast(blocks_used: list[int]) -> None:
    flow = _flow().float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        flow.log_prob(torch.randn(ROWS, 3))
    assert not blocks_used


def test_batch_statistics_are_never_split(blocks_used: list[int]) -> None:
    flow = _flow(batchnorm=True).train()
    assert not flow.bijection.rowwise()
    with torch.no_grad():
        flow.log_prob(torch.randn(ROWS, 3))
    assert not blocks_used
    flow.eval()
    assert flow.bijection.rowwise()
    with torch.no_grad():
        flow.log_prob(torch.randn(ROWS, 3))
    assert blocks_used == [ROWS]


def test_an_error_in_one_block_reaches_the_caller(blocks_used: list[int]) -> None:
    class FailsOnMarker(Bijection):
        def forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
            if bool((x[:, 0] == 1e6).any()):
                raise RuntimeError("block failed")
            return x, x.new_zeros(x.shape[0])

    chain = realnvp.bijections.Chain([FailsOnMarker()])
    x = torch.randn(ROWS, 2)
    x[-1, 0] = 1e6  # only the last block fails
    threads = torch.get_num_threads()
    with torch.no_grad(), pytest.raises(RuntimeError, match="block failed"):
        chain(x)
    assert blocks_used and torch.get_num_threads() == threads
    with torch.no_grad():  # and the pool still works
        assert torch.equal(chain(x[:-1])[0], x[:-1])


@pytest.mark.usefixtures("forkable")
def test_a_forked_child_gets_its_own_pool_of_threads() -> None:
    # (Only the pool: torch's OpenMP threads themselves cannot be used after a fork.)
    parent = _blocks._executor(2)
    assert parent.submit(os.getpid).result() == os.getpid()
    pid = os.fork()
    if pid == 0:  # the parent's worker threads do not exist here: a new pool must serve
        code = 1
        try:
            pool = _blocks._executor(2)
            code = 0 if pool is not parent and pool.submit(os.getpid).result(10) == (
                os.getpid()) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_concurrent_callers_put_the_thread_setting_back() -> None:
    """A second caller starts while the first holds the setting at 1, and ends last."""
    import time

    from realnvp.bijections._blocks import on_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    inside = threading.Event()

    def second_first_task() -> None:
        inside.set()
        time.sleep(0.2)

    second = threading.Thread(target=lambda: on_threads([second_first_task, lambda: None]))

    def first_task() -> None:
        second.start()
        assert inside.wait(timeout=10)

    try:
        on_threads([first_task, lambda: None])
        second.join()
        assert torch.get_num_threads() == 2  # not the 1 the second caller found
    finally:
        torch.set_num_threads(before)
