"""Tests for realnvp.datasets.toys: sampling, exact log-densities, registry."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, ndtr
from sklearn.datasets import make_moons

from realnvp.datasets import TOYS, Toy, get_toy, list_toys
from realnvp.datasets.toys import Pinwheel

NAMES = sorted(TOYS)
CURVE_TOYS = ["2spirals", "moons", "swissroll"]

# Grid steps for the midpoint rule over each toy's bounds: at most about the narrowest
# length scale, where the rule's error for smooth densities is ~exp(-2 pi^2 (s/h)^2).
GRID_STEP = {
    "2spirals": 0.08,
    "8gaussians": 0.2,
    "checkerboard": 0.1,  # squares of side 2: cell centres never straddle an edge
    "circles": 0.15,
    "moons": 0.04,
    "pinwheel": 0.06,
    "rings": 0.06,
    "swissroll": 0.12,
}


@functools.cache
def _grid(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres over the toy's bounds and each cell's probability ``p * h^2``."""
    toy, h = TOYS[name], GRID_STEP[name]
    (x0, x1), (y0, y1) = toy.bounds
    xs = torch.arange(x0 + h / 2, x1, h, dtype=torch.float64)
    ys = torch.arange(y0 + h / 2, y1, h, dtype=torch.float64)
    points = torch.cartesian_prod(xs, ys)
    return points, toy.log_prob(points).exp() * h * h


def _uniform_in_bounds(toy: Toy, n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    (x0, x1), (y0, y1) = toy.bounds
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    low, high = torch.tensor([x0, y0]), torch.tensor([x1, y1])
    return scale * (low + (high - low) * u)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


def test_registry_lists_the_eight_ffjord_toys_sorted():
    expected = ["2spirals", "8gaussians", "checkerboard", "circles", "moons", "pinwheel",
                "rings", "swissroll"]
    assert list_toys() == expected
    assert list(TOYS) == expected
    for name in expected:
        toy = get_toy(name)
        assert toy.name == name and isinstance(toy, Toy)
        assert toy.description and "\n" not in toy.description


def test_unknown_toy_names_the_choices():
    with pytest.raises(ValueError) as info:
        get_toy("foo")
    assert str(info.value) == (
        "Unknown toy 'foo'; expected one of: 2spirals, 8gaussians, checkerboard, circles, "
        "moons, pinwheel, rings, swissroll"
    )


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sample_shapes_dtypes_and_labels(name):
    toy = get_toy(name)
    torch.set_default_dtype(torch.float32)  # samples stay float64 whatever the default
    x, labels = toy.sample(1001, seed=0)
    assert x.shape == (1001, 2) and x.dtype == torch.float64
    assert labels.shape == (1001,) and labels.dtype == torch.long
    assert int(labels.min()) >= 0
    counts = torch.bincount(labels)
    assert int(counts.max() - counts.min()) <= 1  # balanced components
    lp = toy.log_prob(x)
    assert lp.dtype == torch.float64 and bool(torch.isfinite(lp).all())


@pytest.mark.parametrize("name", NAMES)
def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(name):
    toy = get_toy(name)
    torch.manual_seed(1)
    np.random.seed(1)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a, la = toy.sample(300, seed=7)
    toy.sample(300)  # unseeded draws use their own generator too
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    torch.manual_seed(2)
    b, lb = toy.sample(300, seed=7)
    c, lc = toy.sample(300, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(a, c) and torch.equal(la, lc)
    d, _ = toy.sample(300, seed=8)
    assert not torch.equal(a, d)


@pytest.mark.parametrize(
    ("n", "error", "message"),
    [
        (0, ValueError, "Expected n >= 1; got 0"),
        (-3, ValueError, "Expected n >= 1; got -3"),
        (2.5, TypeError, "Expected n to be an int; got float"),
        (True, TypeError, "Expected n to be an int; got bool"),
        ("10", TypeError, "Expected n to be an int; got str"),
    ],
    ids=["zero", "negative", "float", "bool", "string"],
)
def test_sample_validates_n(n, error, message):
    with pytest.raises(error, match=message):
        get_toy("moons").sample(n)


def test_sample_refuses_both_seed_and_generator():
    with pytest.raises(ValueError, match="Expected seed or generator, not both"):
        get_toy("moons").sample(3, seed=0, generator=torch.Generator())


def test_sample_accepts_numpy_integers():
    x, _ = get_toy("rings").sample(np.int64(4), seed=np.int32(0))
    assert x.shape == (4, 2)


# ---------------------------------------------------------------------------------------
# log_prob contract
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_does_not_depend_on_the_default_dtype(name):
    toy = get_toy(name)
    x, _ = toy.sample(200, seed=1)
    expected = toy.log_prob(x)
    torch.set_default_dtype(torch.float32)
    assert torch.equal(toy.log_prob(x), expected)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_handles_float32_nan_and_inf(name):
    toy = get_toy(name)
    x = torch.tensor([[0.1, 0.2], [math.nan, 0.0], [math.inf, 0.0], [1.0, -math.inf]])
    lp = toy.log_prob(x.float())
    assert lp.dtype == torch.float64 and lp.shape == (4,)
    assert bool(torch.isnan(lp[1]))
    assert lp[2] == -math.inf and lp[3] == -math.inf
    assert torch.equal(lp[:1], toy.log_prob(x[:1].float().double()))


def test_log_prob_validates_its_input():
    toy = get_toy("circles")
    with pytest.raises(ValueError, match="Expected 2 features; got 3"):
        toy.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="2-D tensor"):
        toy.log_prob(torch.zeros(2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        toy.log_prob(np.zeros((2, 2)))


def test_log_prob_of_an_empty_batch():
    assert get_toy("moons").log_prob(torch.zeros(0, 2)).shape == (0,)


# ---------------------------------------------------------------------------------------
# The densities are densities, and are the ones the samplers draw from
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one_over_bounds(name):
    _, mass = _grid(name)
    assert abs(float(mass.sum()) - 1.0) < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_sample_moments_match_the_density(name):
    points, mass = _grid(name)
    mass = mass / mass.sum()
    mean = mass @ points
    centred = points - mean
    cov = (centred * mass[:, None]).T @ centred
    x, _ = get_toy(name).sample(20_000, seed=3)
    scale = float(cov.diagonal().max())
    assert torch.allclose(x.mean(0), mean, atol=0.05 * math.sqrt(scale))
    assert torch.allclose(torch.cov(x.T), cov, atol=0.05 * scale)


def test_checkerboard_is_exactly_piecewise_constant():
    toy = get_toy("checkerboard")
    x = torch.tensor([[0.5, 0.5], [-3.0, -3.0], [-4.0, -4.0], [2.5, -0.5], [0.5, 2.5],
                      [4.0, 0.5], [-4.01, -3.0], [1.99, 1.99], [2.0, 2.0]])
    inside = torch.tensor([True, True, True, True, False, False, False, True, True])
    lp = toy.log_prob(x)
    assert torch.equal(lp[inside], torch.full((int(inside.sum()),), -math.log(32.0)))
    assert bool((lp[~inside] == -math.inf).all())


# ---------------------------------------------------------------------------------------
# Each log_prob against an independent reference
# ---------------------------------------------------------------------------------------


def _log_simpson(log_f: np.ndarray, t: np.ndarray) -> np.ndarray:
    """log of Simpson's rule over the last axis of ``exp(log_f)`` on uniform nodes ``t``."""
    w = np.ones(t.size)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return logsumexp(log_f + np.log(w * (t[1] - t[0]) / 3), axis=-1)


def _log_normal2(x: np.ndarray, centre: np.ndarray, s: float) -> np.ndarray:
    sq = ((x[:, None, :] - centre) ** 2).sum(-1)
    return -0.5 * sq / s**2 - np.log(2 * np.pi * s**2)


def _reference_moons(x: np.ndarray) -> np.ndarray:
    t = np.linspace(0, np.pi, 200_001)
    arc = np.stack([np.cos(t), np.sin(t)], -1)
    outer = _log_simpson(_log_normal2(x, arc, 0.05), t)
    inner = _log_simpson(_log_normal2(x, np.array([1.0, 0.5]) - arc, 0.05), t)
    return np.logaddexp(outer, inner) - np.log(2) - np.log(np.pi)


def _reference_swissroll(x: np.ndarray) -> np.ndarray:
    t = np.linspace(1.5 * np.pi, 4.5 * np.pi, 400_001)
    roll = np.stack([t * np.cos(t), t * np.sin(t)], -1) / 5
    return _log_simpson(_log_normal2(x, roll, 0.2), t) - np.log(3 * np.pi)


def _reference_2spirals(x: np.ndarray) -> np.ndarray:
    u = np.linspace(0, 3 * np.pi, 100_001)
    arm = np.stack([-u * np.cos(u), u * np.sin(u)], -1) / 3
    w, s = 0.5 / 3, 0.1

    def log_arm(y: np.ndarray) -> np.ndarray:
        z = y[:, None, :] - arm  # jitter U[0, w] then N(0, s^2), per coordinate
        hi, lo = z / s, (z - w) / s  # Phi(hi) - Phi(lo), taken in the lower tail
        q = np.where(hi + lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo)) / w
        with np.errstate(divide="ignore"):
            return _log_simpson(np.log(q).sum(-1) + np.log(2 * u / (3 * np.pi) ** 2), u)

    return np.logaddexp(log_arm(x), log_arm(-x)) - np.log(2)


def _reference_rings(radii: tuple[float, ...], s: float):
    def reference(x: np.ndarray) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, 20_001)
        circle = np.stack([np.cos(t), np.sin(t)], -1)
        parts = [_log_simpson(_log_normal2(x, r * circle, s), t) for r in radii]
        return logsumexp(np.stack(parts), axis=0) - np.log(2 * np.pi * len(radii))

    return reference


def _reference_8gaussians(x: np.ndarray) -> np.ndarray:
    centres = [(1, 0), (-1, 0), (0, 1), (0, -1)] + [
        (a / np.sqrt(2), b / np.sqrt(2)) for a in (1, -1) for b in (1, -1)
    ]
    mu = 4 * np.array(centres) / 1.414  # FFJORD's definition, verbatim in spirit
    return logsumexp(_log_normal2(x, mu, 0.5 / 1.414), axis=1) - np.log(8)


REFERENCES = {
    "moons": (_reference_moons, 1e-9),
    "swissroll": (_reference_swissroll, 1e-9),
    "2spirals": (_reference_2spirals, 1e-8),
    "circles": (_reference_rings((3.0, 1.5), 0.24), 1e-10),
    "rings": (_reference_rings((3.0, 2.25, 1.5, 0.75), 0.08), 1e-10),
    "8gaussians": (_reference_8gaussians, 1e-12),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_log_prob_matches_an_independent_reference(name):
    reference, tol = REFERENCES[name]
    toy = get_toy(name)
    x = torch.cat([toy.sample(3, seed=11)[0], _uniform_in_bounds(toy, 3, seed=12)])
    expected = reference(x.numpy())
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(toy.log_prob(x).numpy(), expected, rtol=0, atol=tol)


@pytest.mark.parametrize("name", CURVE_TOYS)
def test_quadrature_agrees_with_a_much_finer_one(name):
    toy = get_toy(name)
    x = torch.cat([
        toy.sample(300, seed=5)[0],
        _uniform_in_bounds(toy, 300, seed=6),
        _uniform_in_bounds(toy, 100, seed=7, scale=4.0),  # far outside: refined levels
    ])
    coarse = toy._log_prob(x)
    fine = toy._log_prob(x, extra_levels=2)  # 16 times more panels
    # |d log p| is the relative error of p; far away allow relative error in log p too.
    error = (coarse - fine).abs() / fine.abs().clamp_min(1.0)
    assert float(error.max()) < 1e-11


def test_moons_matches_scikit_learn_make_moons():
    toy = get_toy("moons")
    theirs, y = make_moons(n_samples=20_000, noise=0.05, random_state=0)
    lp_theirs = toy.log_prob(torch.from_numpy(theirs))
    ours, labels = toy.sample(20_000, seed=0)
    lp_ours = toy.log_prob(ours)
    points, mass = _grid("moons")
    expected = float((mass * toy.log_prob(points)).sum())  # E_p[log p] on the grid
    assert abs(float(lp_theirs.mean()) - float(lp_ours.mean())) < 0.02
    assert abs(float(lp_theirs.mean()) - expected) < 0.01
    # Same labelling: 0 is the outer arc (y > 0 on average), 1 the inner one.
    assert theirs[y == 0, 1].mean() > 0 and theirs[y == 1, 1].mean() < 0.5
    assert float(ours[labels == 0, 1].mean()) > 0 and float(ours[labels == 1, 1].mean()) < 0.5
    # Histogram: the fraction of sklearn points per coarse cell matches the density's mass.
    h, sub = 0.5, 0.05
    (x0, x1), (y0, y1) = toy.bounds
    counts, _, _ = np.histogram2d(theirs[:, 0], theirs[:, 1], bins=[
        np.arange(x0, x1 + 1e-9, h), np.arange(y0, y1 + 1e-9, h)])
    grid_x = np.arange(x0 + sub / 2, x1, sub)
    grid_y = np.arange(y0 + sub / 2, y1, sub)
    pts = torch.from_numpy(np.stack(np.meshgrid(grid_x, grid_y, indexing="ij"), -1))
    cell_mass = toy.log_prob(pts.reshape(-1, 2)).exp().reshape(pts.shape[:2]) * sub * sub
    k = round(h / sub)
    expected_counts = cell_mass.reshape(counts.shape[0], k, counts.shape[1], k).sum((1, 3))
    np.testing.assert_allclose(counts / len(theirs), expected_counts.numpy(), atol=0.006)


# ---------------------------------------------------------------------------------------
# Pinwheel: change of variables through its nonlinear map
# ---------------------------------------------------------------------------------------


def test_pinwheel_jacobian_determinant_matches_autograd():
    toy = Pinwheel()
    g = torch.Generator().manual_seed(0)
    for label in range(5):
        f = torch.randn(2, generator=g, dtype=torch.float64) * torch.tensor([0.3, 0.1])
        f = f + torch.tensor([1.0, 0.0])
        labels = torch.tensor([label])

        def forward(v, labels=labels):
            return toy._forward(v[None], labels)[0]

        jac = torch.autograd.functional.jacobian(forward, f)
        det = 4 * (1 + 0.25 * torch.exp(f[0]) * f[1])
        assert torch.allclose(torch.linalg.det(jac), det, rtol=1e-12)


def test_pinwheel_log_prob_is_the_change_of_variables_sum():
    toy = Pinwheel()
    g = torch.Generator().manual_seed(4)
    n = 4000
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    f = torch.stack([1 + 0.3 * eps[:, 0], 0.1 * eps[:, 1]], 1)
    labels = torch.arange(n) % 5
    x = toy._forward(f, labels)
    own_term = toy._log_latent(f) - math.log(5)  # the preimage the point was drawn from
    extra = toy.log_prob(x) - own_term
    assert float(extra.min()) > -1e-12  # it is one of the terms summed...
    assert float(extra.median()) < 1e-8  # ...and usually nearly all of the sum


def _brute_force_pinwheel(x: np.ndarray, grid: int = 400_001) -> float:
    """Every preimage by sign changes of D(f1) on a dense grid, then bisection."""
    rho, arg = np.hypot(*x) / 2, np.arctan2(x[1], x[0])
    f1 = np.linspace(-rho, rho, grid)
    terms = []
    for k in range(5):
        c = arg + 2 * np.pi * k / 5

        def d(v, c=c):
            return rho * np.cos(c + 0.25 * np.exp(v)) - v

        values = d(f1)
        i = np.nonzero((values[:-1] > 0) != (values[1:] > 0))[0]
        lo, hi, lo_positive = f1[i], f1[i + 1], values[i] > 0
        for _ in range(60):
            mid = (lo + hi) / 2
            same = (d(mid) > 0) == lo_positive
            lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        root = (lo + hi) / 2
        f2 = rho * np.sin(c + 0.25 * np.exp(root))
        log_normal = -0.5 * ((root - 1) / 0.3) ** 2 - 0.5 * (f2 / 0.1) ** 2 - np.log(
            2 * np.pi * 0.03)
        terms.append(log_normal - np.log(np.abs(4 * (1 + 0.25 * np.exp(root) * f2))))
    return float(logsumexp(np.concatenate(terms)) - np.log(5))


def test_pinwheel_matches_a_brute_force_root_search():
    toy = Pinwheel()
    x = torch.cat([
        toy.sample(3, seed=9)[0],
        torch.tensor([[1.5, -2.0], [-3.0, 0.5]]),
        8 * torch.tensor([[math.cos(3.95), math.sin(3.95)]]),  # |x| = 8: two close roots
    ])
    expected = [_brute_force_pinwheel(row) for row in x.numpy()]
    np.testing.assert_allclose(toy.log_prob(x).numpy(), expected, rtol=0, atol=1e-9)


def test_pinwheel_at_the_origin_and_far_away():
    toy = Pinwheel()
    lp = toy.log_prob(torch.tensor([[0.0, 0.0], [30.0, 0.0], [1e6, 1e6]]))
    log_normal0 = -0.5 / 0.09 - math.log(2 * math.pi * 0.3 * 0.1)
    assert math.isclose(float(lp[0]), log_normal0 - math.log(4), rel_tol=1e-9)
    assert bool(torch.isfinite(lp[1])) and float(lp[1]) < -1000
    assert float(lp[2]) < float(lp[1])
