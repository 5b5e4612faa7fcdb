"""Every bijection in the registry: round trip, exact log-det, shapes, kept half untouched."""

from __future__ import annotations

import pytest
import torch

from realnvp.bijections import Coupling, Inverse

from registry import all_cases, build

CASES = sorted(all_cases())
DIMS = [2, 3, 7]


def _rows(dim: int, n: int, scale: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g) * scale).to(dtype)


def _jacobian_log_det(fn, x: torch.Tensor) -> torch.Tensor:
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda r: fn(r.unsqueeze(0))[0].squeeze(0), row)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("scale", [1.0, 1e3], ids=["unit", "1e3"])
def test_round_trip_float64(name: str, dim: int, scale: float) -> None:
    if "unbounded" in name and scale > 1:
        pytest.skip("an unbounded log-scale overflows exp() on huge inputs, by design")
    b = build(name, dim)
    x = _rows(dim, 64, scale, torch.float64)
    with torch.no_grad():
        z, _ = b(x)
        x2, _ = b.inverse(z)
        z_back, _ = b(b.inverse(x)[0])
    assert (x2 - x).abs().max() <= 1e-10 * max(1.0, scale)
    assert (z_back - x).abs().max() <= 1e-10 * max(1.0, scale)


@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("name", CASES)
def test_round_trip_float32(name: str, dim: int) -> None:
    # Weights of moderate size: a random LU map with large entries is ill-conditioned, and
    # no float32 computation round-trips through it to 1e-4.
    b = build(name, dim, torch.float32, std=0.25)
    for scale in (1.0,) if "unbounded" in name else (1.0, 1e3):
        x = _rows(dim, 64, scale, torch.float32)
        with torch.no_grad():
            x2, _ = b.inverse(b(x)[0])
        # Normwise per row: mixing layers spread a large feature's rounding over the others.
        rel = ((x2 - x).abs().amax(1) / (1 + x.abs().amax(1))).max()
        assert rel <= 1e-4, f"relative round-trip error {rel:.2e} at scale {scale}"


@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("name", CASES)
def test_log_det_matches_autograd(name: str, dim: int) -> None:
    b = build(name, dim)
    x = _rows(dim, 5, 1.0, torch.float64, seed=1)
    _, log_det = b(x)
    assert (log_det - _jacobian_log_det(b, x)).abs().max() <= 1e-8
    z = _rows(dim, 5, 1.0, torch.float64, seed=2)
    _, inv_log_det = b.inverse(z)
    assert (inv_log_det - _jacobian_log_det(b.inverse, z)).abs().max() <= 1e-8


@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("name", CASES)
def test_inverse_log_det_is_minus_forward(name: str, dim: int) -> None:
    b = build(name, dim)
    x = _rows(dim, 32, 2.0, torch.float64, seed=3)
    with torch.no_grad():
        z, log_det = b(x)
        _, inv_log_det = b.inverse(z)
    assert (log_det + inv_log_det).abs().max() <= 1e-10


@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("batch", [1, 17])
def test_shapes_and_dtype(name: str, dim: int, batch: int) -> None:
    for dtype in (torch.float32, torch.float64):
        b = build(name, dim, dtype)
        x = _rows(dim, batch, 1.0, dtype)
        z, log_det = b(x)
        x2, inv_log_det = b.inverse(z)
        assert z.shape == x.shape == x2.shape
        assert log_det.shape == inv_log_det.shape == (batch,)
        assert z.dtype == log_det.dtype == dtype
        assert torch.isfinite(z).all() and torch.isfinite(log_det).all()


@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"dim{d}")
@pytest.mark.parametrize(
    "name", [c for c in CASES if any(k in c for k in ("affine", "additive", "spline"))]
)
def test_coupling_keeps_conditioning_half_bit_for_bit(name: str, dim: int) -> None:
    b = build(name, dim)
    coupling = b.bijection if isinstance(b, Inverse) else b
    assert isinstance(coupling, Coupling)
    x = _rows(dim, 50, 3.0, torch.float64, seed=4)
    with torch.no_grad():
        z, _ = b(x)
    kept = coupling.kept
    assert torch.equal(z[:, kept], x[:, kept])
    assert not torch.equal(z[:, coupling.transformed], x[:, coupling.transformed])


def test_coupling_with_context_changes_with_context() -> None:
    from realnvp.bijections import AffineCoupling, half_mask

    from registry import randomize

    b = randomize(AffineCoupling(half_mask(3), hidden=(8,), context_features=2))
    x = torch.randn(4, 3)
    c1, c2 = torch.zeros(4, 2), torch.ones(4, 2)
    z1, _ = b(x, c1)
    assert not torch.allclose(z1, b(x, c2)[0])
    assert torch.allclose(b.inverse(z1, c1)[0], x, atol=1e-12)
    with pytest.raises(ValueError, match="context"):
        b(x)


def test_identity_at_initialisation() -> None:
    from realnvp.bijections import AffineCoupling, alternating_mask

    b = AffineCoupling(alternating_mask(4), hidden=(8, 8))
    x = torch.randn(10, 4)
    z, log_det = b(x)
    assert torch.equal(z, x)
    assert torch.equal(log_det, torch.zeros(10))


def test_scale_bound_limits_log_scale() -> None:
    from realnvp.bijections import AffineCoupling, half_mask

    from registry import randomize

    b = randomize(AffineCoupling(half_mask(2), hidden=(8,), scale_bound=1.5), std=50.0)
    _, log_det = b(torch.randn(200, 2) * 100)
    assert log_det.abs().max() <= 1.5
