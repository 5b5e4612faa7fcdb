"""The hand-derived training step gives autograd's loss and gradients (float64)."""

from __future__ import annotations

import pytest
import torch

import realnvp
from realnvp.training.fast import fast_step_for

from registry import randomize

CASES = {
    "moons-default": {"dim": 2},
    "5d-tanh": {"dim": 5, "activation": "tanh"},
    "3d-half-reverse": {"dim": 3, "mask": "half", "permutation": "reverse"},
    "4d-random-perm-deep": {"dim": 4, "permutation": "random", "hidden": (8, 8, 8)},
    "1d": {"dim": 1},
    "unbounded-scale": {"dim": 3, "scale_bound": None},
}


@pytest.fixture(params=["torchscript", "python"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each check with the scripted kernels and with the plain Python fall-back."""
    from realnvp.bijections import _kernels as k

    if request.param == "python":
        monkeypatch.setattr(k, "_CACHE", [k.Kernels(k.coupling_forward, k.coupling_backward,
                                                    k.coupling_inverse)])
    return request.param


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_step_matches_autograd(name: str, kernels: str) -> None:
    kwargs = dict(CASES[name])
    kwargs.setdefault("hidden", (16, 16))
    flow = randomize(realnvp.RealNVP(n_layers=4, **kwargs), std=0.3).train()
    with torch.no_grad():
        flow.standardize.loc.normal_()
        flow.standardize.scale.uniform_(0.5, 2.0)
    x = torch.randn(64, kwargs["dim"]) * 2
    loss_ref = -flow.log_prob(x).mean()
    grads_ref = torch.autograd.grad(loss_ref, list(flow.parameters()))
    for p in flow.parameters():
        p.grad = torch.full_like(p, float("nan"))  # the step must overwrite every entry
    step = fast_step_for(flow)
    assert step is not None
    loss = step(x)
    assert torch.allclose(loss, loss_ref, atol=1e-12, rtol=0)
    for (pname, p), ref in zip(flow.named_parameters(), grads_ref, strict=True):
        assert torch.allclose(p.grad, ref, atol=1e-11, rtol=1e-9), pname


@pytest.mark.parametrize(
    "kwargs",
    [{"actnorm": True}, {"batchnorm": True}, {"permutation": "lu"}, {"learn_base": True},
     {"coupling": "spline"}, {"activation": "gelu"}, {"context_features": 1}],
    ids=["actnorm", "batchnorm", "lu", "learned-base", "spline", "gelu", "context"],
)
def test_other_flows_fall_back_to_autograd(kwargs: dict) -> None:
    assert fast_step_for(realnvp.RealNVP(dim=2, **kwargs)) is None
