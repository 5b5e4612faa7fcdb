"""Flow-level checks: gradients, modes, integration to one, sampling, bad input."""

from __future__ import annotations

import pytest
import torch

import realnvp
from realnvp.bijections import ActNorm

from registry import randomize

CONFIGS = {
    "default": {},
    "actnorm-lu": {"actnorm": True, "permutation": "lu"},
    "additive-reverse": {"coupling": "additive", "permutation": "reverse"},
    "half-random-learnbase": {"mask": "half", "permutation": "random", "learn_base": True},
    "batchnorm": {"batchnorm": True},
    "spline": {"coupling": "spline", "bins": 5},
}


def perturbed(dim: int, std: float = 0.3, **kwargs) -> realnvp.Flow:
    return randomize(realnvp.RealNVP(dim=dim, n_layers=4, hidden=(16, 16), **kwargs), std=std)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_every_parameter_gets_a_finite_gradient(name: str, dim: int) -> None:
    flow = perturbed(dim, **CONFIGS[name]).train()
    loss = -flow.log_prob(torch.randn(64, dim)).mean()
    loss.backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", [n for n in sorted(CONFIGS) if n != "batchnorm"])
def test_eval_and_train_log_prob_agree(name: str) -> None:
    flow = realnvp.RealNVP(dim=3, n_layers=4, hidden=(16,), **CONFIGS[name])
    x = torch.randn(100, 3) * 2 + 1
    flow.train()
    flow.log_prob(x)  # data-dependent initialisation of ActNorm layers
    randomize(flow)
    assert all(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm))
    eval_lp = flow.eval().log_prob(x)
    train_lp = flow.train().log_prob(x)
    assert torch.equal(eval_lp, train_lp)


def test_batchnorm_uses_running_statistics_in_eval() -> None:
    flow = perturbed(2, batchnorm=True).eval()
    x = torch.randn(50, 2)
    one_by_one = torch.cat([flow.log_prob(x[i : i + 1]) for i in range(50)])
    assert torch.allclose(flow.log_prob(x), one_by_one, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_density_integrates_to_one(name: str) -> None:
    flow = perturbed(2, std=0.15, **CONFIGS[name]).eval()
    lim, n = 9.0, 900
    axis = torch.linspace(-lim, lim, n)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    mass = density.sum() * (axis[1] - axis[0]) ** 2
    assert abs(float(mass) - 1.0) <= 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sample_and_log_prob_agree_with_log_prob(name: str) -> None:
    flow = perturbed(3, **CONFIGS[name]).eval()
    with torch.no_grad():
        x, log_prob = flow.sample_and_log_prob(200)
        assert torch.allclose(log_prob, flow.log_prob(x), atol=1e-9)


def test_sampling_is_reproducible_with_a_generator() -> None:
    flow = perturbed(2).eval()
    a = flow.sample(10, generator=torch.Generator().manual_seed(3))
    b = flow.sample(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 7])
def test_any_dimension_round_trips(dim: int) -> None:
    flow = perturbed(dim).eval()
    x = torch.randn(20, dim)
    with torch.no_grad():
        z, log_det = flow(x)
        x2, inv_log_det = flow.inverse(z)
    assert (x2 - x).abs().max() < 1e-10
    assert (log_det + inv_log_det).abs().max() < 1e-10


def test_flow_trace_has_one_point_per_layer() -> None:
    flow = perturbed(2).eval()
    x = torch.randn(7, 2)
    points = flow.trace(x)
    assert len(points) == len(flow.bijection) + 1
    assert torch.allclose(points[-1], flow(x)[0])
    back = flow.trace(points[-1], inverse=True)
    assert torch.allclose(back[-1], x, atol=1e-10)


def test_float32_flow_accepts_float64_input_and_numpy() -> None:
    flow = realnvp.RealNVP(dim=2).float()
    out = flow.log_prob(torch.randn(3, 2, dtype=torch.float64))
    assert out.dtype == torch.float32
    assert flow.log_prob([[0.0, 1.0]]).shape == (1,)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(4, 3), "Expected 2 features; got 3"),
        (torch.randn(4), "1-D"),
        (torch.ones(4, 2, dtype=torch.long), "floating-point"),
        (torch.randn(2, 2, 2), "2-D tensor"),
    ],
    ids=["wrong-features", "one-dimensional", "integer", "three-dimensional"],
)
def test_bad_input_is_a_clear_value_error(x: torch.Tensor, message: str) -> None:
    flow = realnvp.RealNVP(dim=2)
    with pytest.raises(ValueError, match=message):
        flow.log_prob(x)


def test_nan_in_training_data_is_a_clear_value_error() -> None:
    x = torch.randn(100, 2)
    x[42, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN.*row 42"):
        realnvp.fit(realnvp.RealNVP(dim=2), x, steps=1, progress=False)


@pytest.mark.parametrize("n", [0, -1, 2.5, "3"])
def test_bad_sample_count(n) -> None:
    with pytest.raises(ValueError, match="n_samples|integer"):
        realnvp.RealNVP(dim=2).sample(n)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim >= 1"),
        ({"dim": 2, "n_layers": 0}, "n_layers >= 1"),
        ({"dim": 2, "coupling": "cubic"}, "coupling"),
        ({"dim": 2, "permutation": "shuffle"}, "permutation"),
        ({"dim": 2, "activation": "swish2"}, "activation"),
        ({"dim": 2, "hidden": (0,)}, "hidden"),
    ],
    ids=["dim0", "layers0", "coupling", "permutation", "activation", "hidden"],
)
def test_bad_architecture_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        realnvp.RealNVP(**kwargs)


def test_one_dimensional_flow_is_a_meaningful_model() -> None:
    x = torch.randn(2000, 1) * 3 + 5
    flow = realnvp.RealNVP(dim=1, n_layers=2, hidden=(8,))
    realnvp.fit(flow, x, steps=300, progress=False, seed=0)
    # A Gaussian fit: the NLL of N(5, 3) is 0.5 * log(2 pi e 9) = 2.52.
    nll = -flow.log_prob(x).mean().detach()
    assert abs(float(nll) - 2.52) < 0.05
