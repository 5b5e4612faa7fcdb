"""Numerics under stress: property-based checks over dimensions, batch sizes, scales, dtypes.

Hypothesis runs derandomized (the same examples on every run, no example database), so a
failure here reproduces exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import realnvp
from realnvp.datasets import TOYS, get_toy

from registry import STD, randomize

ARCHITECTURES = {
    "affine": {},
    "additive": {"coupling": "additive"},
    "spline": {"coupling": "spline"},
    "actnorm-lu": {"actnorm": True, "permutation": "lu"},
    "batchnorm": {"batchnorm": True},
    "learned-base": {"learn_base": True},
    "half-mask-random-permutation": {"mask": "half", "permutation": "random"},
    "tanh": {"activation": "tanh"},
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SETTINGS = {"deadline": None, "derandomize": True, "database": None}


def _random_flow(dim: int, arch: str, dtype: torch.dtype, std: float, seed: int,
                 log_scale: float) -> realnvp.Flow:
    """A flow with random weights and a standardisation for data of scale 10**log_scale."""
    flow = realnvp.RealNVP(dim=dim, n_layers=3, hidden=(16,), seed=seed,
                           **ARCHITECTURES[arch]).to(dtype)
    randomize(flow, std=min(std, STD["spline"]) if arch == "spline" else std, seed=seed)
    g = torch.Generator().manual_seed(seed)
    scale = 10.0**log_scale
    with torch.no_grad():
        flow.standardize.loc.copy_(torch.randn(dim, generator=g) * scale)
        flow.standardize.scale.copy_((torch.rand(dim, generator=g) + 0.5) * scale)
    return flow


def _inputs(batch: int, dim: int, magnitude: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows spread over [-magnitude, magnitude], the first rows pinned at the extremes."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, dim, generator=g, dtype=torch.float64) * 2 - 1) * magnitude
    alternating = [magnitude * (-1) ** j for j in range(dim)]
    corners = torch.tensor([[magnitude] * dim, [-magnitude] * dim, alternating],
                           dtype=torch.float64)
    n = min(batch, 3)
    x[:n] = corners[:n]
    return x.to(dtype)


@settings(max_examples=150, **SETTINGS)
@given(
    dim=st.integers(1, 6),
    batch=st.integers(1, 64),
    arch=st.sampled_from(sorted(ARCHITECTURES)),
    dtype=st.sampled_from(sorted(DTYPES)),
    std=st.floats(0.05, 1.0),
    log_scale=st.floats(-3.0, 3.0),
    magnitude=st.sampled_from([0.0, 1e-3, 1.0, 1e3, 1e6]),
    seed=st.integers(0, 2**16),
)
def test_log_prob_and_samples_are_finite_for_inputs_up_to_1e6(
    dim: int, batch: int, arch: str, dtype: str, std: float, log_scale: float, magnitude: float,
    seed: int,
) -> None:
    flow = _random_flow(dim, arch, DTYPES[dtype], std, seed, log_scale)
    x = _inputs(batch, dim, magnitude, DTYPES[dtype], seed)
    with torch.no_grad():
        log_prob = flow.log_prob(x)
        samples, sample_log_prob = flow.sample_and_log_prob(
            batch, generator=torch.Generator().manual_seed(seed))
    assert log_prob.shape == (batch,) and log_prob.dtype == DTYPES[dtype]
    assert bool(torch.isfinite(log_prob).all()), (x, log_prob)
    assert samples.shape == (batch, dim)
    assert bool(torch.isfinite(samples).all())
    assert bool(torch.isfinite(sample_log_prob).all())


@settings(max_examples=30, **SETTINGS)
@given(
    dim=st.integers(1, 4),
    batch_size=st.sampled_from([1, 2, 7, 32, 128]),
    dtype=st.sampled_from(sorted(DTYPES)),
    log_scale=st.floats(-4.0, 6.0),
    offset=st.sampled_from([0.0, 10.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_training_stays_finite_across_dims_batch_sizes_scales_and_dtypes(
    dim: int, batch_size: int, dtype: str, log_scale: float, offset: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    scale = 10.0**log_scale
    x = torch.randn(128, dim, generator=g, dtype=torch.float64) * scale + offset * scale
    flow = realnvp.RealNVP(dim=dim, n_layers=2, hidden=(8,), seed=seed).to(DTYPES[dtype])
    history = realnvp.fit(flow, x, steps=8, batch_size=batch_size, eval_every=4, lr=1e-2,
                          seed=seed, progress=False)
    assert history.skipped_steps == []
    assert all(math.isfinite(r["train_nll"]) and math.isfinite(r["val_nll"])
               for r in history.records)
    for name, value in flow.state_dict().items():
        if value.is_floating_point():
            assert bool(torch.isfinite(value).all()), name
    probes = torch.cat([x[:16], torch.tensor([[1e6] * dim, [-1e6] * dim], dtype=torch.float64)])
    with torch.no_grad():
        assert bool(torch.isfinite(flow.log_prob(probes.to(DTYPES[dtype]))).all())
        assert bool(torch.isfinite(flow.sample(64, generator=g)).all())


@pytest.mark.parametrize("toy", sorted(TOYS))
def test_a_short_run_on_every_toy_ends_finite_with_no_skipped_step(toy: str) -> None:
    """A small version of ``benchmarks/stress.py`` (30 seeded runs, eight toys)."""
    x, _ = get_toy(toy).sample(600, seed=7)
    flow = realnvp.RealNVP(dim=2, n_layers=4, hidden=(16,), seed=7).float()
    history = realnvp.fit(flow, x, steps=60, batch_size=128, eval_every=20, lr=5e-3, seed=7,
                          progress=False)
    assert history.skipped_steps == []
    assert math.isfinite(history.best_val_nll)
    assert history.records[-1]["val_nll"] < history.records[0]["val_nll"] + 0.5
    with torch.no_grad():
        assert bool(torch.isfinite(flow.log_prob(x.float())).all())
        assert bool(torch.isfinite(flow.sample(500)).all())


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_log_prob_far_out_is_finite_and_decreasing(dtype: str) -> None:
    """Far from the data the density falls off: log_prob stays finite and keeps dropping."""
    x, _ = get_toy("moons").sample(400, seed=0)
    flow = realnvp.RealNVP(dim=2, n_layers=4, hidden=(16,)).to(DTYPES[dtype])
    realnvp.fit(flow, x, steps=40, batch_size=64, seed=0, progress=False)
    radii = torch.tensor([1e1, 1e2, 1e3, 1e4, 1e5, 1e6], dtype=DTYPES[dtype])
    with torch.no_grad():
        for direction in ([1.0, 0.0], [0.0, -1.0], [0.6, 0.8]):
            points = radii[:, None] * torch.tensor(direction, dtype=DTYPES[dtype])
            lp = flow.log_prob(points)
            assert bool(torch.isfinite(lp).all()), lp
            assert bool((lp[1:] < lp[:-1]).all()), lp
