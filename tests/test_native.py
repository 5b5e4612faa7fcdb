"""The compiled (C) training step gives autograd's loss and gradients, and steps aside cleanly."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

import realnvp
from realnvp.training import native
from realnvp.training.fast import fast_step_for

from registry import randomize

needs_compiler = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")

CASES = {
    "moons-default": {"dim": 2},
    "2d-deep-wide": {"dim": 2, "hidden": (64, 64), "n_layers": 6},
    "1d": {"dim": 1},
    "3d-half-reverse": {"dim": 3, "mask": "half", "permutation": "reverse"},
    "5d-random-perm-three-hidden": {"dim": 5, "permutation": "random", "hidden": (12, 20, 9)},
    "12d-one-hidden": {"dim": 12, "hidden": (24,)},
    "unbounded-scale": {"dim": 3, "scale_bound": None},
    "unbounded-input": {"dim": 4, "input_bound": None},
    "spline-2d": {"dim": 2, "coupling": "spline"},
    "spline-1d": {"dim": 1, "coupling": "spline", "bins": 3},
    "spline-5d-random-perm": {"dim": 5, "coupling": "spline", "bins": 5,
                              "permutation": "random", "hidden": (12, 9)},
    "spline-narrow-interval": {"dim": 3, "coupling": "spline", "spline_bound": 1.0},
    "spline-unbounded-input": {"dim": 2, "coupling": "spline", "input_bound": None},
    "spline-many-bins-one-hidden": {"dim": 4, "coupling": "spline", "bins": 16,
                                    "hidden": (24,)},
    "spline-accurate-preset-bins": {"dim": 2, "coupling": "spline", "bins": 32},
}


def _reference(flow: realnvp.Flow, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and gradients by autograd, in float64, for the same weights."""
    wide = copy.deepcopy(flow).double()
    loss = -wide.log_prob(x.double()).mean()
    return loss.detach(), list(torch.autograd.grad(loss, list(wide.parameters())))


def _assert_matches(flow: realnvp.Flow, loss: torch.Tensor, loss_ref: torch.Tensor,
                    grads_ref: list[torch.Tensor],
                    grads_32: list[torch.Tensor] | None = None) -> None:
    """Float32 against float64: the loss to 1e-5 relative, each gradient to 2e-5 of its
    largest entry, or, given float32 autograd's gradients ``grads_32``, to ten times
    their largest relative error over all parameters where that is larger: splines with
    many narrow bins are ill-conditioned in float32, whoever computes them, and which
    parameter's gradient suffers most differs between two float32 computations (32 bins,
    12 random flows: the compiled step's largest relative error 1.3e-4, autograd's 9e-5)."""
    assert abs(float(loss) - float(loss_ref)) <= 1e-5 * (1 + abs(float(loss_ref)))
    relative_32 = 0.0
    if grads_32 is not None:
        relative_32 = max(float((g.double() - ref).abs().max()) / (float(ref.abs().max()) + 1e-3)
                          for g, ref in zip(grads_32, grads_ref, strict=True) if ref.numel())
    for (pname, p), ref in zip(flow.named_parameters(), grads_ref, strict=True):
        if ref.numel():
            scale = float(ref.abs().max()) + 1e-3
            allowed = max(2e-5, 10 * relative_32) * scale
            assert float((p.grad.double() - ref).abs().max()) <= allowed, pname


def _float32_autograd(flow: realnvp.Flow, x: torch.Tensor) -> list[torch.Tensor]:
    copied = copy.deepcopy(flow)
    return list(torch.autograd.grad(-copied.log_prob(x).mean(), list(copied.parameters())))


def _compiled_step(flow: realnvp.Flow, x: torch.Tensor) -> torch.Tensor:
    for p in flow.parameters():
        p.grad = torch.full_like(p, float("nan"))  # the step must overwrite every entry
    step = fast_step_for(flow)
    assert step is not None
    loss = step(x)
    assert isinstance(step._chain._native, native.NativeChain), "the compiled step did not run"
    return loss


@needs_compiler
def test_the_library_builds_and_loads() -> None:
    assert native.library() is not None


@needs_compiler
@pytest.mark.parametrize("rows", [1, 37, 1500])
@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_step_matches_autograd(name: str, rows: int) -> None:
    kwargs = dict(CASES[name])
    kwargs.setdefault("hidden", (16, 16))
    kwargs.setdefault("n_layers", 4)
    unbounded = kwargs.pop("input_bound", 10.0) is None
    flow = randomize(realnvp.RealNVP(**kwargs), std=0.3).float().train()
    for layer in flow.bijection:
        if unbounded and hasattr(layer, "input_bound"):
            layer.input_bound = None  # the conditioners see x1 itself
    with torch.no_grad():
        flow.standardize.loc.normal_()
        flow.standardize.scale.uniform_(0.5, 2.0)
    x = torch.randn(rows, kwargs["dim"], dtype=torch.float32) * 2
    loss_ref, grads_ref = _reference(flow, x)
    grads_32 = _float32_autograd(flow, x)
    loss = _compiled_step(flow, x)
    assert loss.dtype == torch.float32
    _assert_matches(flow, loss, loss_ref, grads_ref, grads_32)


@needs_compiler
@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_parts_on_threads_sum_to_the_whole_batch(coupling: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from realnvp.training import fast

    monkeypatch.setattr(fast, "SPLIT_ROWS", 16)
    flow = randomize(realnvp.RealNVP(dim=3, n_layers=4, hidden=(16, 16), coupling=coupling),
                     std=0.3).float()
    x = torch.randn(101, 3, dtype=torch.float32)
    loss_ref, grads_ref = _reference(flow, x)
    grads_32 = _float32_autograd(flow, x)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for _ in range(2):  # the second step reuses the parts' buffers
            _assert_matches(flow, _compiled_step(flow, x), loss_ref, grads_ref, grads_32)
    finally:
        torch.set_num_threads(before)


@needs_compiler
def test_replaced_weights_are_followed() -> None:
    """Assigning ``p.data`` moves the weights; the step must read the new ones."""
    flow = randomize(realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,)), std=0.3).float()
    x = torch.randn(20, 2, dtype=torch.float32)
    _compiled_step(flow, x)
    for p in flow.parameters():
        p.data = p.data.clone() * 0.5
    loss_ref, grads_ref = _reference(flow, x)
    _assert_matches(flow, _compiled_step(flow, x), loss_ref, grads_ref)


@needs_compiler
@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_non_finite_input_gives_a_non_finite_loss(coupling: str) -> None:
    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,), coupling=coupling).float()
    x = torch.randn(10, 2, dtype=torch.float32)
    x[3, 1] = float("nan")
    assert not torch.isfinite(_compiled_step(flow, x))


def _torchscript_only(flow: realnvp.Flow, x: torch.Tensor) -> None:
    for p in flow.parameters():
        p.grad = torch.zeros_like(p)
    step = fast_step_for(flow)
    assert step is not None
    loss_ref, grads_ref = _reference(flow, x)
    loss = step(x)
    assert step._chain._native in (False, None)
    _assert_matches(flow, loss, loss_ref, grads_ref)


def test_tanh_conditioners_and_float64_take_the_torchscript_step() -> None:
    x = torch.randn(30, 3, dtype=torch.float32)
    _torchscript_only(randomize(realnvp.RealNVP(dim=3, n_layers=2, hidden=(8,),
                                                activation="tanh"), std=0.3).float(), x)
    _torchscript_only(randomize(realnvp.RealNVP(dim=3, n_layers=2, hidden=(8,)), std=0.3),
                      x.double())


@pytest.mark.parametrize("how", ["switch", "no-compiler", "no-cache"])
def test_without_the_library_the_torchscript_step_runs(
    how: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setattr(native, "_loaded", [])
    if how == "switch":
        monkeypatch.setattr(native, "USE_NATIVE", False)
    elif how == "no-compiler":
        monkeypatch.setenv("REALNVP_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(native, "_compiler", lambda: None)
    else:
        monkeypatch.setattr(native, "cache_dir", lambda: None)
    assert native.library() is None
    flow = randomize(realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,)), std=0.3).float()
    _torchscript_only(flow, torch.randn(30, 2, dtype=torch.float32))


@needs_compiler
def test_a_failing_compiler_leaves_no_library(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("REALNVP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_compiler", lambda: shutil.which("false"))
    assert native._build() is None
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


@needs_compiler
def test_the_build_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("REALNVP_CACHE_DIR", str(tmp_path))
    first = native._build()
    assert first is not None and first.parent == tmp_path
    stamp = first.stat().st_mtime_ns
    assert native._build() == first and first.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("coupling", ["affine", "spline"])
@pytest.mark.parametrize("available", [True, False])
def test_train_says_when_training_takes_the_slower_step(
    available: bool, coupling: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    import realnvp.cli

    if available and native.library() is None:
        pytest.skip("no compiled step on this machine")
    monkeypatch.setattr(native, "USE_NATIVE", available)
    torch.set_default_dtype(torch.float32)  # as in a fresh process; conftest restores
    realnvp.cli.main(["train", "--steps", "3", "--layers", "2", "--hidden", "8", "--n-train",
                      "300", "--coupling", coupling, "--no-plots", "--quiet",
                      "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert ("slower than the compiled step" in err) is not available
    assert ("autograd" in err) is (not available and coupling == "spline")


def test_spline_couplings_step_aside_to_autograd_without_the_compiled_step(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the C step trains splines: in float64, or without it, autograd does."""
    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,), coupling="spline")
    for p in flow.parameters():
        p.grad = torch.zeros_like(p)
    step = fast_step_for(flow.double())
    if step is not None:  # the library is there, but not for float64
        assert step(torch.randn(10, 2, dtype=torch.float64)) is None
    monkeypatch.setattr(native, "USE_NATIVE", False)
    monkeypatch.setattr(native, "_loaded", [])
    assert fast_step_for(flow.float()) is None


@needs_compiler
def test_a_spline_flow_trains_through_the_compiled_step() -> None:
    """fit with the compiled step lowers the loss, and the flow stays exactly invertible."""
    from realnvp.training.fit import TrainStep

    torch.manual_seed(0)
    flow = realnvp.RealNVP(dim=2, n_layers=4, hidden=(16, 16), coupling="spline").float()
    x = (torch.randn(256, 2) * torch.tensor([1.0, 0.2]) + torch.tensor([0.0, 1.0])).float()
    step = TrainStep(flow, lr=1e-2)
    first, _ = step(x)
    assert isinstance(step.fast._chain._native, native.NativeChain)
    for _ in range(100):
        last, why = step(x)
        assert why is None
    assert float(last) < float(first) - 1.0
    with torch.no_grad():
        z, _ = flow.forward(x)
        back, _ = flow.inverse(z)
    assert torch.allclose(back, x, atol=1e-4)
