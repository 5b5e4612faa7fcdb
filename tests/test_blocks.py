"""Large CPU batches without autograd run as row blocks on parallel threads: same results."""

from __future__ import annotations

import os

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_give_the_whole_batch_result(dtype: torch.dtype,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    flow = _flow().to(dtype)
    x = torch.randn(ROWS, 3, dtype=dtype)
    z = torch.randn(ROWS, 3, dtype=dtype)
    with torch.inference_mode():
        blocked = flow.log_prob(x), *flow.inverse(z)
    _serial(monkeypatch)
    with torch.inference_mode():
        whole = flow.log_prob(x), *flow.inverse(z)
    for got, expected in zip(blocked, whole, strict=True):
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_blocks_keep_the_callers_threads_and_grad_mode() -> None:
    flow = _flow()
    threads = torch.get_num_threads()
    with torch.no_grad():
        out = flow.log_prob(torch.randn(ROWS, 3))
    assert torch.get_num_threads() == threads
    assert not out.is_inference() and not out.requires_grad
    with torch.inference_mode():
        assert flow.log_prob(torch.randn(ROWS, 3)).is_inference()


def test_batch_statistics_are_never_split(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = _flow(batchnorm=True).train()
    assert not flow.bijection.rowwise()
    calls: list[int] = []
    monkeypatch.setattr(_blocks, "by_row_blocks", lambda *a: calls.append(1))
    with torch.no_grad():
        flow.log_prob(torch.randn(ROWS, 3))
    assert not calls
    assert flow.eval().bijection.rowwise()


def test_an_error_in_a_block_reaches_the_caller() -> None:
    class Fails(Bijection):
        def forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
            if x.shape[0] < ROWS:
                raise RuntimeError("block failed")
            return x, x.new_zeros(x.shape[0])

    chain = realnvp.bijections.Chain([Fails()])
    threads = torch.get_num_threads()
    with torch.no_grad(), pytest.raises(RuntimeError, match="block failed"):
        chain(torch.randn(ROWS, 2))
    assert torch.get_num_threads() == threads


@pytest.mark.usefixtures("forkable")
def test_a_forked_child_gets_its_own_pool_of_threads() -> None:
    # (Only the pool: torch's OpenMP threads themselves cannot be used after a fork.)
    parent = _blocks._executor(1)
    assert parent.submit(os.getpid).result() == os.getpid()
    pid = os.fork()
    if pid == 0:  # the parent's worker threads do not exist here: a new pool must serve
        code = 1
        try:
            pool = _blocks._executor(1)
            code = 0 if pool is not parent and pool.submit(os.getpid).result(10) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
