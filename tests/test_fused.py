"""The fused affine coupling gives autograd's values and gradients exactly (float64)."""

from __future__ import annotations

import pytest
import torch

from realnvp.bijections import AffineCoupling, Coupling, alternating_mask, half_mask

from registry import randomize

CASES = {
    "relu-2d": {"mask": alternating_mask(2), "activation": "relu"},
    "tanh-5d": {"mask": half_mask(5), "activation": "tanh"},
    "relu-unbounded-input": {"mask": alternating_mask(4, 1), "input_bound": None},
    "relu-unbounded-scale": {"mask": alternating_mask(3), "scale_bound": None},
    "relu-context": {"mask": half_mask(3), "context_features": 2},
    "relu-1d-nothing-kept": {"mask": torch.zeros(1, dtype=torch.bool)},
    "relu-deep": {"mask": alternating_mask(6), "hidden": (8, 8, 8)},
}


def _reference(layer: AffineCoupling, x: torch.Tensor, context: torch.Tensor | None):
    x1, x2 = layer._split(x)
    y2, log_det = Coupling._forward_transformed(layer, x1, x2, context)
    return x.index_copy(1, layer.transformed, y2), log_det


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_matches_autograd(name: str) -> None:
    kwargs = dict(CASES[name])
    mask = kwargs.pop("mask")
    kwargs.setdefault("hidden", (16, 16))
    layer = randomize(AffineCoupling(mask, **kwargs), std=0.4).train()
    dim = mask.numel()
    x = torch.randn(33, dim, requires_grad=True)
    context = torch.randn(33, 2, requires_grad=True) if kwargs.get("context_features") else None
    weights = torch.randn(33, dim)
    results = []
    for fn in (layer, lambda a, c: _reference(layer, a, c)):
        layer.zero_grad()
        z, log_det = fn(x, context)
        loss = (z * weights).sum() + (log_det * torch.linspace(-1, 2, 33)).sum()
        inputs = [x] + ([context] if context is not None else []) + list(layer.parameters())
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        results.append((z.detach(), log_det.detach(), grads))
    (z_a, ld_a, g_a), (z_b, ld_b, g_b) = results
    assert torch.allclose(z_a, z_b, atol=1e-13, rtol=0)
    assert torch.allclose(ld_a, ld_b, atol=1e-13, rtol=0)
    for a, b in zip(g_a, g_b, strict=True):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
            continue
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


def test_fused_gradcheck() -> None:
    layer = randomize(AffineCoupling(half_mask(3), hidden=(4,)), std=0.5)
    x = torch.randn(5, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: layer(a), (x,))


@pytest.mark.parametrize("name", sorted(CASES))
def test_scripted_inference_path_matches_autograd_path(name: str) -> None:
    kwargs = dict(CASES[name])
    mask = kwargs.pop("mask")
    kwargs.setdefault("hidden", (16, 16))
    layer = randomize(AffineCoupling(mask, **kwargs), std=0.4)
    x = torch.randn(40, mask.numel()) * 3
    context = torch.randn(40, 2) if kwargs.get("context_features") else None
    z_grad, ld_grad = layer(x, context)
    x_grad, ild_grad = layer.inverse(z_grad.detach(), context)
    with torch.no_grad():
        z, ld = layer(x, context)
        x_back, ild = layer.inverse(z, context)
    assert torch.allclose(z, z_grad, atol=1e-13, rtol=0)
    assert torch.allclose(ld, ld_grad, atol=1e-13, rtol=0)
    assert torch.allclose(x_back, x_grad, atol=1e-12, rtol=0)
    assert torch.allclose(ild, ild_grad, atol=1e-13, rtol=0)
