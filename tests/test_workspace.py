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
    given: list[int] = []
    real = _kernels.workspace

    def spy(rows: int, width: int, like: torch.Tensor) -> list[torch.Tensor]:
        work = real(rows, width, like)
        given.append(len(work))
        return work

    monkeypatch.setattr(_kernels, "workspace", spy)
    xs = [torch.randn(n, 3) for n in (700, 300, 700)]
    context = torch.inference_mode if mode == "inference" else torch.no_grad
    with context():
        scores = [flow.log_prob(x) for x in xs]
        z, _ = flow(xs[0])
        back, _ = flow.inverse(z)
    assert given and set(given) == {2}  # every chain call had buffers
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
    x = torch.zeros(10, 2)
    assert len(_kernels.workspace(300, 64, x)) == 2
    assert _kernels.workspace(100, 64, x) == []  # small: the heap serves it
    assert _kernels.workspace(_kernels.WORKSPACE_BYTES // (64 * 4) + 1, 64, x) == []
    assert _kernels.workspace(300, 0, x) == []  # no hidden layer
    assert _kernels.workspace(300, 64, torch.zeros(10, 2, device="meta")) == []
    params = [torch.zeros(64, 2), torch.zeros(64), torch.zeros(32, 64), torch.zeros(32),
              torch.zeros(4, 32), torch.zeros(4)]
    assert _kernels.hidden_width(params) == 64 and _kernels.hidden_width(params[4:]) == 0


def test_couplings_and_permutations_score_in_one_call_unless_hooked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from realnvp.bijections import base

    flow = randomize(realnvp.RealNVP(dim=4, n_layers=4, hidden=(8,), permutation="random"),
                     std=0.3).eval()
    runs: list[int] = []
    real = base.run_chain
    monkeypatch.setattr(base, "run_chain", lambda specs, x, inverse: runs.append(len(specs))
                        or real(specs, x, inverse))
    x = torch.randn(20, 4)
    expected = _fresh(flow, x)
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), expected)
        z, _ = flow(x)
        torch.testing.assert_close(flow.inverse(z)[0], x)
    assert runs == [7, 7, 7]  # after the standardisation: 4 couplings, 3 permutations
    seen: list[str] = []
    flow.bijection[3].register_forward_hook(lambda *_: seen.append("hook"))
    runs.clear()
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), expected)
    assert seen == ["hook"] and runs == [2, 4]  # the hooked layer is called on its own


def test_no_buffers_under_autocast() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _kernels.workspace(300, 64, torch.zeros(10, 2)) == []
