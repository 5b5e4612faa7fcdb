"""Scoring and sampling reuse per-thread activation buffers: same numbers, no aliasing."""

from __future__ import annotations

import pytest
import torch

import realnvp
from realnvp.bijections import _kernels

from registry import randomize


@pytest.fixture
def flow() -> realnvp.Flow:
    torch.set_default_dtype(torch.float32)
    return randomize(realnvp.RealNVP(dim=3, n_layers=4, hidden=(32, 16)), std=0.3).eval()


def _fresh(flow: realnvp.Flow, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():  # autograd's path: no kernels, no buffers
        return flow.log_prob(x).detach()


@pytest.mark.parametrize("mode", ["inference", "no_grad"])
def test_buffered_scores_match_autograd_and_are_not_overwritten(
    flow: realnvp.Flow, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from realnvp.bijections import coupling

    given: list[int] = []

    def spy(rows: int, params: list[torch.Tensor], like: torch.Tensor) -> list[torch.Tensor]:
        work = _kernels.workspace(rows, params, like)
        given.append(len(work))
        return work

    monkeypatch.setattr(coupling, "workspace", spy)
    xs = [torch.randn(n, 3) for n in (700, 300, 700)]
    context = torch.inference_mode if mode == "inference" else torch.no_grad
    with context():
        scores = [flow.log_prob(x) for x in xs]
        z, _ = flow(xs[0])
        back, _ = flow.inverse(z)
    assert given and set(given) == {2}  # every coupling call had buffers
    for x, lp in zip(xs, scores, strict=True):  # later calls left earlier results alone
        torch.testing.assert_close(lp, _fresh(flow, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back, xs[0], atol=1e-5, rtol=1e-5)


def test_buffers_made_in_inference_mode_serve_no_grad_calls_too(flow: realnvp.Flow) -> None:
    x = torch.randn(500, 3, dtype=torch.float64)
    flow.double()
    _kernels._workspaces.__dict__.clear()
    with torch.inference_mode():
        first = flow.log_prob(x)
    with torch.no_grad():  # writing an inference tensor here would raise
        second = flow.log_prob(x)
    torch.testing.assert_close(first, second)


def test_no_buffers_off_the_cpu_or_beyond_the_size_limit() -> None:
    params = [torch.zeros(64, 2), torch.zeros(64), torch.zeros(4, 64), torch.zeros(4)]
    x = torch.zeros(10, 2)
    assert len(_kernels.workspace(300, params, x)) == 2
    assert _kernels.workspace(100, params, x) == []  # small: the heap serves it
    rows = _kernels.WORKSPACE_BYTES // (64 * 4) + 1
    assert _kernels.workspace(rows, params, x) == []
    assert _kernels.workspace(300, params[2:], x) == []  # no hidden layer
    assert _kernels.workspace(300, params, torch.zeros(10, 2, device="meta")) == []
