"""Rational-quadratic spline: the pure spline functions and the coupling built on them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from realnvp.bijections.masks import half_mask
from realnvp.bijections.spline import (
    RationalQuadraticCoupling,
    rq_derivatives,
    rq_knots,
    rq_spline,
)

BOUND = 5.0
BINS = 8
DIMS = [pytest.param(dim, id=f"dim{dim}") for dim in (2, 3, 7)]
FLOATS = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]
DIRECTIONS = [pytest.param(False, id="forward"), pytest.param(True, id="inverse")]
# (dtype, round-trip tolerance): absolute in float64, relative to max(|x|, 1) in float32.
DTYPES = [
    pytest.param(torch.float64, 1e-10, id="float64"),
    pytest.param(torch.float32, 1e-4, id="float32"),
]
# Values every input set includes: the bounds, both tails, zero and near-zero.
SPECIAL = (-1e3, -BOUND - 0.5, -BOUND, -1e-30, 0.0, 1e-30, BOUND, BOUND + 0.5, 1e3)


def _randomize(
    layer: RationalQuadraticCoupling, generator: torch.Generator, gain: float = 0.6
) -> RationalQuadraticCoupling:
    """Redraw every conditioner parameter as N(0, gain^2 / fan_in).

    Scaling by fan-in keeps the spline parameters O(1) whatever the width: the splines are
    clearly not the identity (log-slopes of order 1) yet well conditioned, so round-off,
    not conditioning, sets the round-trip error. Extreme splines have their own test.
    """
    with torch.no_grad():
        for module in layer.conditioner:
            if isinstance(module, nn.Linear):
                std = gain / math.sqrt(max(module.in_features, 1))
                module.weight.normal_(0.0, std, generator=generator)
                module.bias.normal_(0.0, std, generator=generator)
    return layer


def _random_layer(
    dim: int, generator: torch.Generator, context_features: int = 0
) -> RationalQuadraticCoupling:
    layer = RationalQuadraticCoupling(
        half_mask(dim), hidden=(16, 16), context_features=context_features, bins=BINS, bound=BOUND
    )
    return _randomize(layer, generator)


def _inputs(dim: int, generator: torch.Generator, n: int = 64) -> Tensor:
    """Random rows, mostly inside ``[-B, B]`` and some outside, plus one row per special value."""
    random = 2.5 * torch.randn(n, dim, generator=generator)
    special = torch.tensor(SPECIAL).unsqueeze(1).expand(-1, dim)
    return torch.cat([random, special])


def _knot_rows(
    layer: RationalQuadraticCoupling, generator: torch.Generator, heights: bool
) -> Tensor:
    """Rows whose transformed features sit exactly on the knots (x-knots, or y-knots).

    The kept half is one random row repeated, so every row has the same spline; row ``k``
    puts each transformed feature on that feature's ``k``-th knot, ±B included. Relies on
    the documented parameter layout: per feature, K widths, K heights, K - 1 derivatives.
    """
    mask = layer.mask
    dtype = layer.conditioner[0].weight.dtype
    row = torch.randn(1, mask.numel(), generator=generator).to(dtype)
    with torch.no_grad():  # the parameters the layer itself computes for this row
        params = layer._params(row[:, mask], None).reshape(-1, 3 * BINS - 1)
    start = BINS if heights else 0
    knots = rq_knots(params[:, start : start + BINS], BOUND)
    rows = row.repeat(BINS + 1, 1)
    rows[:, ~mask] = knots.T
    return rows


def _relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual - expected).abs() / expected.abs().clamp_min(1)).max().item()


def _raw_spline_params(
    shape: tuple[int, ...], generator: torch.Generator, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Unnormalised widths, heights and derivatives of splines with leading shape ``shape``."""

    def draw(k: int) -> Tensor:
        return scale * torch.randn(*shape, k, generator=generator)

    return draw(BINS), draw(BINS), draw(BINS - 1)


# --- identity at zero parameters ---------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("inverse", DIRECTIONS)
def test_zero_params_give_the_identity_bit_for_bit(
    dtype: torch.dtype, inverse: bool, generator: torch.Generator
) -> None:
    random = 6 * torch.randn(37, 5, generator=generator)
    special = torch.tensor(SPECIAL).unsqueeze(1).expand(-1, 5)
    knots = rq_knots(torch.zeros(5, BINS), BOUND).T
    x = torch.cat([random, special, knots]).to(dtype)
    zeros = torch.zeros(BINS, dtype=dtype)
    y, log_det = rq_spline(x, zeros, zeros, zeros[1:], BOUND, inverse=inverse)
    assert torch.equal(y, x)
    assert torch.equal(log_det, torch.zeros_like(x))


def test_zero_raw_derivatives_are_exactly_one_and_bins_equal() -> None:
    for dtype in (torch.float64, torch.float32):
        ones = torch.ones(3, 101, dtype=dtype)
        assert torch.equal(rq_derivatives(torch.zeros(3, 99, dtype=dtype)), ones)
        knots = rq_knots(torch.zeros(4, dtype=dtype), BOUND)
        torch.testing.assert_close(knots, torch.linspace(-BOUND, BOUND, 5, dtype=dtype))
        assert knots[0] == -BOUND and knots[-1] == BOUND


@pytest.mark.parametrize("dim", DIMS)
def test_fresh_coupling_is_the_identity_bit_for_bit(dim: int, generator: torch.Generator) -> None:
    layer = RationalQuadraticCoupling(half_mask(dim), bins=BINS, bound=BOUND)
    x = _inputs(dim, generator)
    for f in (layer.forward, layer.inverse):
        y, log_det = f(x)
        assert torch.equal(y, x)
        assert torch.equal(log_det, torch.zeros(len(x)))


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES)
@pytest.mark.parametrize("dim", DIMS)
def test_coupling_round_trips(
    dim: int, dtype: torch.dtype, tolerance: float, generator: torch.Generator
) -> None:
    layer = _random_layer(dim, generator).to(dtype)
    x = torch.cat([_inputs(dim, generator).to(dtype), _knot_rows(layer, generator, heights=False)])
    z = torch.cat([_inputs(dim, generator).to(dtype), _knot_rows(layer, generator, heights=True)])
    with torch.no_grad():
        x_back = layer.inverse(layer(x)[0])[0]
        z_back = layer(layer.inverse(z)[0])[0]
    if dtype == torch.float64:
        assert (x_back - x).abs().max() <= tolerance
        assert (z_back - z).abs().max() <= tolerance
    else:
        assert _relative_error(x_back, x) <= tolerance
        assert _relative_error(z_back, z) <= tolerance


@pytest.mark.parametrize("dim", DIMS)
def test_coupling_maps_knots_to_knots(dim: int, generator: torch.Generator) -> None:
    """The documented layout holds: x-knots land on the y-knots of the same spline."""
    layer = _random_layer(dim, generator)
    state = generator.get_state()
    x_knots = _knot_rows(layer, generator, heights=False)
    generator.set_state(state)  # the same kept half, so the same splines
    y_knots = _knot_rows(layer, generator, heights=True)
    with torch.no_grad():
        z = layer(x_knots)[0]
    assert (z - y_knots).abs().max() <= 1e-12
    assert not torch.equal(x_knots, y_knots)


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES)
def test_spline_round_trips_on_knots_and_bounds(
    dtype: torch.dtype, tolerance: float, generator: torch.Generator
) -> None:
    widths, heights, derivatives = (t.to(dtype) for t in _raw_spline_params((50,), generator, 0.5))
    x_knots, y_knots = rq_knots(widths, BOUND), rq_knots(heights, BOUND)
    assert x_knots[:, 0].eq(-BOUND).all() and y_knots[:, -1].eq(BOUND).all()
    for inverse, points in ((False, x_knots), (True, y_knots)):
        x = points.T  # row k: the k-th knot of each of the 50 splines
        y = rq_spline(x, widths, heights, derivatives, BOUND, inverse=inverse)[0]
        x_back = rq_spline(y, widths, heights, derivatives, BOUND, inverse=not inverse)[0]
        assert _relative_error(x_back, x) <= tolerance
        # A knot maps to the matching knot of the other axis.
        other = (y_knots if not inverse else x_knots).T
        assert _relative_error(y, other) <= tolerance


def test_ill_conditioned_splines_stay_finite_and_invertible(generator: torch.Generator) -> None:
    """Extreme raw parameters: slopes span about 3e-7 to 1e3, so x -> z -> x loses digits in
    the flat parts, but the error measured in z (slope times error in x) stays at round-off."""
    widths, heights, derivatives = _raw_spline_params((4000,), generator, 4.0)
    x = torch.linspace(-1.2 * BOUND, 1.2 * BOUND, 4000)
    z, log_det = rq_spline(x, widths, heights, derivatives, BOUND)
    x_back, log_det_back = rq_spline(z, widths, heights, derivatives, BOUND, inverse=True)
    assert log_det.isfinite().all() and log_det_back.isfinite().all()
    assert log_det.max() - log_det.min() > 20  # the stress is real
    assert ((x_back - x).abs() * log_det.exp()).max() <= 1e-12
    x_of_z = rq_spline(x, widths, heights, derivatives, BOUND, inverse=True)[0]
    z_back = rq_spline(x_of_z, widths, heights, derivatives, BOUND)[0]
    assert (z_back - x).abs().max() <= 1e-10


# --- log-determinants --------------------------------------------------------------------


@pytest.mark.parametrize("inverse", DIRECTIONS)
@pytest.mark.parametrize("dim", DIMS)
def test_log_det_matches_autograd_jacobian(
    dim: int, inverse: bool, generator: torch.Generator
) -> None:
    layer = _random_layer(dim, generator)
    f = layer.inverse if inverse else layer.forward
    knots = _knot_rows(layer, generator, heights=inverse)
    random = 2.5 * torch.randn(6, dim, generator=generator)
    edges = torch.tensor([[BOUND + 0.5] * dim, [-BOUND] * dim])
    rows = torch.cat([random, knots[[0, 1, BINS // 2, BINS]], edges])
    for row in rows:
        log_det = f(row.unsqueeze(0))[1]
        jacobian = torch.autograd.functional.jacobian(lambda r: f(r.unsqueeze(0))[0][0], row)
        expected = torch.linalg.slogdet(jacobian).logabsdet
        assert abs(log_det.item() - expected.item()) <= 1e-8


@pytest.mark.parametrize("dim", DIMS)
def test_inverse_log_det_is_minus_forward(dim: int, generator: torch.Generator) -> None:
    layer = _random_layer(dim, generator)
    x = _inputs(dim, generator)
    with torch.no_grad():
        z, log_det = layer(x)
        _, log_det_inverse = layer.inverse(z)
    assert log_det.abs().max() > 0.25  # the spline is not the identity
    assert (log_det + log_det_inverse).abs().max() <= 1e-10


def test_tails_are_the_identity_and_join_smoothly(generator: torch.Generator) -> None:
    widths, heights, derivatives = _raw_spline_params((3,), generator, 1.0)
    outside = torch.tensor([-1e6, -BOUND - 1e-9, BOUND + 1e-9, 1e6])
    for inverse in (False, True):
        y, log_det = rq_spline(outside.unsqueeze(1), widths, heights, derivatives, BOUND, inverse)
        assert torch.equal(y, outside.unsqueeze(1).expand(-1, 3))
        assert torch.equal(log_det, torch.zeros(4, 3))
        edges = torch.tensor([[-BOUND], [BOUND]])
        y, log_det = rq_spline(edges, widths, heights, derivatives, BOUND, inverse)
        assert (y - edges).abs().max() <= 1e-14
        assert log_det.abs().max() <= 1e-12  # boundary derivative 1: C1 with the tails


# --- structure ---------------------------------------------------------------------------


@pytest.mark.parametrize("inverse", DIRECTIONS)
@pytest.mark.parametrize("dim", DIMS)
def test_kept_half_passes_bit_for_bit(dim: int, inverse: bool, generator: torch.Generator) -> None:
    layer = _random_layer(dim, generator)
    x = _inputs(dim, generator)
    y, log_det = (layer.inverse if inverse else layer.forward)(x)
    mask = half_mask(dim)
    assert torch.equal(y[:, mask], x[:, mask])
    assert not torch.equal(y[:, ~mask], x[:, ~mask])
    assert y.shape == x.shape and log_det.shape == (len(x),)


# The autouse float64 fixture is function scoped; it only sets the dtype, so sharing it
# between examples is harmless.
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_spline_is_increasing(data: st.DataObject) -> None:
    bins = data.draw(st.integers(2, 12), label="bins")
    raw = st.floats(-3.0, 3.0)

    def draw(k: int, label: str) -> Tensor:
        return torch.tensor(data.draw(st.lists(raw, min_size=k, max_size=k), label=label))

    widths, heights, derivatives = draw(bins, "widths"), draw(bins, "heights"), draw(bins - 1, "d")
    points = data.draw(st.lists(st.floats(-8.0, 8.0), min_size=2, max_size=40), label="x")
    x = torch.tensor(sorted(points))
    for inverse in (False, True):
        y, log_det = rq_spline(x, widths, heights, derivatives, BOUND, inverse=inverse)
        steps = y.diff()
        assert (steps >= -1e-14).all()  # non-decreasing up to round-off...
        assert (steps[x.diff() > 1e-6] > 0).all()  # ...and strictly increasing
        assert log_det.isfinite().all()


def test_gradient_reaches_every_parameter_and_is_finite(generator: torch.Generator) -> None:
    layer = _random_layer(3, generator)
    x = _inputs(3, generator).requires_grad_()
    z, log_det = layer(x)
    x_back, log_det_back = layer.inverse(z.detach())
    loss = (z.square().sum(1) / 2 - log_det).mean() + (x_back.square().sum(1) - log_det_back).mean()
    loss.backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.isfinite().all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.isfinite().all()


@pytest.mark.parametrize("inverse", DIRECTIONS)
def test_batch_of_one(inverse: bool, generator: torch.Generator) -> None:
    layer = _random_layer(3, generator)
    x = torch.tensor([[0.3, -1.7, 2.2]])
    y, log_det = (layer.inverse if inverse else layer.forward)(x)
    assert y.shape == (1, 3) and log_det.shape == (1,)
    x_back = (layer.forward if inverse else layer.inverse)(y)[0]
    assert (x_back - x).abs().max() <= 1e-10


def test_context_conditions_the_spline(generator: torch.Generator) -> None:
    layer = _random_layer(3, generator, context_features=2)
    x = _inputs(3, generator)
    context = torch.randn(len(x), 2, generator=generator)
    z, log_det = layer(x, context)
    x_back, log_det_back = layer.inverse(z, context)
    assert (x_back - x).abs().max() <= 1e-10
    assert (log_det + log_det_back).abs().max() <= 1e-10
    assert not torch.allclose(layer(x, context + 1)[0], z)
    with pytest.raises(ValueError, match="Expected a context of 2 features"):
        layer(x)


# --- dtypes, devices, shapes, validation -------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_outputs_follow_the_input_dtype_and_device(device: str, dtype: torch.dtype) -> None:
    """On the meta device any tensor made on the CPU by mistake would raise."""
    layer = RationalQuadraticCoupling(half_mask(5), hidden=(8,), bins=BINS).to(device, dtype)
    x = torch.zeros(4, 5, device=device, dtype=dtype)
    for y, log_det in (layer(x), layer.inverse(x)):
        assert y.device.type == log_det.device.type == device
        assert y.dtype == log_det.dtype == dtype
        assert y.shape == (4, 5) and log_det.shape == (4,)


def test_spline_parameters_broadcast_over_inputs(generator: torch.Generator) -> None:
    widths, heights, derivatives = _raw_spline_params((), generator, 1.0)
    x = torch.linspace(-6, 6, 11)
    shared = rq_spline(x, widths, heights, derivatives, BOUND)
    each = rq_spline(x, *(t.expand(11, -1) for t in (widths, heights, derivatives)), BOUND)
    torch.testing.assert_close(shared, each, rtol=0.0, atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"bins": 1}, "bins >= 2", id="one-bin"),
        pytest.param({"bound": 0.0}, "positive bound", id="zero-bound"),
    ],
)
def test_coupling_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RationalQuadraticCoupling(half_mask(2), **kwargs)


def test_spline_rejects_mismatched_parameter_shapes() -> None:
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="Expected widths and heights of K"):
        rq_spline(x, torch.zeros(4), torch.zeros(4), torch.zeros(4), BOUND)
    with pytest.raises(ValueError, match="Expected widths and heights of K"):
        rq_spline(x, torch.zeros(4), torch.zeros(5), torch.zeros(3), BOUND)
