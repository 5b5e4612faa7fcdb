"""Tables of a one-input ReLU conditioner's linear pieces: the same function, to rounding."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import realnvp
from realnvp.bijections import _pieces
from realnvp.bijections._pieces import PieceTables, lookup, relu_pieces
from realnvp.bijections.coupling import AffineCoupling
from realnvp.nn import MLP


def _net(hidden: tuple[int, ...], seed: int, out: int = 2) -> MLP:
    torch.manual_seed(seed)
    net = MLP(1, out, hidden=hidden, zero_last=False)
    with torch.no_grad():
        for p in net.parameters():  # biases as large as weights: kinks all over [-10, 10]
            p.copy_(torch.randn_like(p) * (3.0 if p.dim() == 1 else 1.0))
    return net


def _tables(net: MLP, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    built = relu_pieces(net.flat_parameters(), lo, hi, 1 << 20)
    assert built is not None
    return torch.from_numpy(built[0]), torch.from_numpy(built[1])


@settings(max_examples=25, deadline=None)
@given(hidden=st.lists(st.integers(1, 24), min_size=1, max_size=3).map(tuple),
       seed=st.integers(0, 10_000), out=st.integers(1, 4))
def test_tables_reproduce_the_network_in_float64(hidden: tuple[int, ...], seed: int,
                                                  out: int) -> None:
    net = _net(hidden, seed, out)
    edges, table = _tables(net, -10.0, 10.0)
    a = torch.cat([torch.linspace(-10, 10, 2001), edges, edges + 1e-9]).unsqueeze(1)
    expected = net(a).detach()
    scale = 1.0 + expected.abs().max()
    assert torch.allclose(lookup(a, edges, table), expected, rtol=0, atol=1e-11 * scale)
    assert bool((edges[1:] > edges[:-1]).all())


def test_unbounded_input_covers_the_real_line() -> None:
    net = _net((16, 16), 3)
    edges, table = _tables(net, -math.inf, math.inf)
    a = torch.tensor([-1e6, -1e3, -50.0, 0.0, 50.0, 1e3, 1e6]).unsqueeze(1)
    expected = net(a).detach()
    assert torch.allclose(lookup(a, edges, table), expected, rtol=1e-12, atol=1e-9)


def test_a_kink_far_out_on_an_unbounded_end_piece() -> None:
    """A nearly dead unit switches at 1e17: its end piece still gets the right state."""
    net = _net((8, 8), 5)
    with torch.no_grad():
        net[0].weight[0, 0], net[0].bias[0] = -1e-17, 1.0
    edges, table = _tables(net, -math.inf, math.inf)
    a = torch.linspace(-5, 5, 101).unsqueeze(1)
    assert torch.allclose(lookup(a, edges, table), net(a).detach(), rtol=0, atol=1e-10)


def test_no_kinks_on_the_real_line_warns_nothing() -> None:
    net = _net((4,), 0)
    with torch.no_grad():
        net[0].weight.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edges, table = _tables(net, -math.inf, math.inf)
    assert len(edges) == 0 and table.shape[0] == 1


def test_one_hidden_layer_has_at_most_width_plus_one_pieces() -> None:
    edges, table = _tables(_net((32,), 1), -math.inf, math.inf)
    assert table.shape == (len(edges) + 1, 2 * 2 + 1) and len(edges) <= 32


def test_too_many_pieces_gives_none() -> None:
    assert relu_pieces(_net((32, 32), 1).flat_parameters(), -10.0, 10.0, 4) is None


def test_float32_tables_are_closer_to_float64_than_float32_products() -> None:
    net = _net((64, 64), 7)
    a = (torch.rand(20_000, 1) * 20 - 10)
    truth = net(a).detach()
    edges, table = _tables(net, -10.0, 10.0)
    from_tables = lookup(a.float(), edges.float(), table.float()).double()
    products = net.float()(a.float()).detach().double()
    assert (from_tables - truth).abs().max() <= (products - truth).abs().max()


def _flow(dim: int = 2, dtype: torch.dtype = torch.float64, input_bound: float | None = 10.0,
          hidden: tuple[int, ...] = (64, 64), **kwargs) -> realnvp.RealNVP:
    torch.manual_seed(0)
    flow = realnvp.RealNVP(dim, n_layers=6, hidden=hidden, **kwargs).to(dtype)
    for coupling in _couplings(flow):
        coupling.input_bound = input_bound
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow.eval()


def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables from the second call with the same weights, for calls of any size."""
    monkeypatch.setattr(_pieces, "TABLE_MIN_ROWS", 0)
    monkeypatch.setattr(_pieces, "LOOKUP_MIN_ROWS", 0)


def _score_twice(flow: realnvp.RealNVP, x: torch.Tensor) -> None:
    """Score ``x`` twice without autograd: with :func:`_eager`, the second call makes the
    tables."""
    with torch.no_grad():
        flow.log_prob(x), flow.log_prob(x)


def _reference(flow: realnvp.RealNVP, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():  # autograd's modules: no kernels, no tables
        return flow.log_prob(x).detach()


def _couplings(flow: realnvp.RealNVP) -> list[AffineCoupling]:
    return [m for m in flow.modules() if isinstance(m, AffineCoupling)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("input_bound", [10.0, None])
def test_flow_scores_and_samples_with_tables(monkeypatch: pytest.MonkeyPatch,
                                             dtype: torch.dtype, input_bound: float | None,
                                             ) -> None:
    _eager(monkeypatch)
    flow = _flow(dtype=dtype, input_bound=input_bound)
    x = torch.randn(3000, 2, dtype=dtype) * 2
    with torch.inference_mode():
        flow.log_prob(x)  # first sight of these weights: the products
        assert all(c._pieces._tables is None for c in _couplings(flow))
        scored = flow.log_prob(x)  # the same weights again: the tables
        assert all(c._pieces._tables is not None for c in _couplings(flow))
        z = torch.randn(3000, 2, dtype=dtype)
        back, _ = flow.bijection.inverse(z)
        again, _ = flow.bijection.forward(back)
        monkeypatch.setattr(_pieces, "USE_TABLES", False)
        back_products, _ = flow.bijection.inverse(z)
        again_products, _ = flow.bijection.forward(back_products)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    assert torch.allclose(scored, _reference(flow, x), rtol=tol, atol=tol)
    # The round trip in float32 is as good as the matrix products' (these flows stretch
    # some points to |x| ~ 1e3, where float32 rounds at 1e-4).
    error, products_error = (again - z).abs().max(), (again_products - z).abs().max()
    assert error <= 2 * products_error + (1e-12 if dtype == torch.float64 else 1e-5)


def test_tables_follow_edits_that_bypass_version_counters(monkeypatch: pytest.MonkeyPatch,
                                                          ) -> None:
    _eager(monkeypatch)
    flow = _flow()
    x = torch.randn(500, 2)
    _score_twice(flow, x)
    with torch.no_grad():
        for p in flow.parameters():
            p.data.mul_(1.1)  # .data: no version bump
        edited = flow.log_prob(x)
        edited_again = flow.log_prob(x)  # rebuilt for the new values
    assert torch.allclose(edited, _reference(flow, x), rtol=1e-10, atol=1e-10)
    assert torch.allclose(edited_again, edited, rtol=1e-10, atol=1e-10)


def test_a_changed_input_bound_makes_new_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    _eager(monkeypatch)
    flow = _flow()
    x = torch.randn(500, 2) * 30
    _score_twice(flow, x)  # tables on [-10, 10]
    with torch.no_grad():
        for coupling in _couplings(flow):
            coupling.input_bound = None
        unbounded = [flow.log_prob(x) for _ in range(2)]
    for scored in unbounded:
        assert torch.allclose(scored, _reference(flow, x), rtol=1e-10, atol=1e-8)


def test_tables_wait_for_enough_rows_and_stay_out_of_training() -> None:
    flow = _flow()
    coupling = _couplings(flow)[0]
    params = coupling.conditioner.flat_parameters()
    tables = PieceTables()
    assert tables.get(params, 10.0, 10) is None  # first sight
    assert tables.get(params, 10.0, _pieces.TABLE_MIN_ROWS // 2) is None
    assert tables.get(params, 10.0, _pieces.TABLE_MIN_ROWS) is not None
    with torch.no_grad():
        assert coupling._fused_spec()[5][0] is params[0]  # the training step's weights


def test_wide_inputs_narrow_conditioners_and_other_activations_keep_the_products(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _eager(monkeypatch)
    for flow in (_flow(dim=4), _flow(activation="tanh"), _flow(hidden=(32, 32))):
        _score_twice(flow, torch.randn(100, flow.dim))
        assert all(c._pieces._tables is None for c in _couplings(flow))


def test_state_dicts_leave_tables_out_and_copies_stay_right(monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    _eager(monkeypatch)
    flow = _flow()
    x = torch.randn(200, 2)
    _score_twice(flow, x)
    assert all(c._pieces._tables is not None for c in _couplings(flow))
    assert not any("piece" in key for key in flow.state_dict())
    twin = copy.deepcopy(flow)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.9)
        assert torch.allclose(twin.log_prob(x), _reference(twin, x), rtol=1e-10, atol=1e-10)
        assert torch.allclose(flow.log_prob(x), _reference(flow, x), rtol=1e-10, atol=1e-10)


def test_small_calls_keep_the_products(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pieces, "TABLE_MIN_ROWS", 0)
    flow = _flow()
    with torch.no_grad():
        for rows in (1, _pieces.LOOKUP_MIN_ROWS - 1) * 2:
            flow.log_prob(torch.randn(rows, 2))
        assert all(c._pieces._tables is None for c in _couplings(flow))
        for _ in range(2):
            flow.log_prob(torch.randn(_pieces.LOOKUP_MIN_ROWS, 2))
        assert all(c._pieces._tables is not None for c in _couplings(flow))
