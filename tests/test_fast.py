"""The hand-derived training step gives autograd's loss and gradients (float64)."""

from __future__ import annotations

import math

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
        monkeypatch.setattr(k, "_CACHE", [k._PYTHON])
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
     {"coupling": "spline", "activation": "tanh"}, {"activation": "gelu"},
     {"context_features": 1}],
    ids=["actnorm", "batchnorm", "lu", "learned-base", "tanh-spline", "gelu", "context"],
)
def test_other_flows_fall_back_to_autograd(kwargs: dict) -> None:
    assert fast_step_for(realnvp.RealNVP(dim=2, **kwargs)) is None


LARGE = 2 * 2048  # above ONEDNN_MIN_ROWS: float32 batches this big take the fused oneDNN layers


@pytest.mark.parametrize("kwargs", [{"dim": 2}, {"dim": 5, "activation": "tanh"},
                                    {"dim": 6, "mask": "half", "permutation": "reverse"}],
                         ids=["2d", "5d-tanh", "6d-half"])
def test_large_float32_batches_agree_with_autograd(kwargs: dict, kernels: str) -> None:
    from realnvp.bijections._kernels import use_onednn

    torch.set_default_dtype(torch.float32)
    flow = randomize(realnvp.RealNVP(n_layers=4, hidden=(32, 32), **kwargs), std=0.3).train()
    x = torch.randn(LARGE, kwargs["dim"]) * 2
    assert use_onednn(x) == torch.backends.mkldnn.is_available()
    log_ref = flow.log_prob(x)  # autograd's path
    loss_ref = -log_ref.mean()
    grads_ref = torch.autograd.grad(loss_ref, list(flow.parameters()))
    for p in flow.parameters():
        p.grad = torch.zeros_like(p)
    loss = fast_step_for(flow)(x)
    assert torch.allclose(loss, loss_ref, atol=1e-5, rtol=1e-5)
    for (pname, p), ref in zip(flow.named_parameters(), grads_ref, strict=True):
        assert torch.allclose(p.grad, ref, atol=1e-4, rtol=1e-3), pname
    with torch.no_grad():  # scoring and sampling: the inference kernels
        log_q = flow.log_prob(x)
        z, _ = flow(x)
        back, _ = flow.inverse(z)
    assert torch.allclose(log_q, log_ref.detach(), atol=1e-4, rtol=1e-5)
    assert torch.allclose(back, x, atol=1e-4, rtol=1e-4)


def test_large_batches_with_unevenly_spaced_halves_use_index_gathers(kernels: str) -> None:
    from realnvp.bijections import AffineCoupling

    torch.set_default_dtype(torch.float32)
    mask = torch.tensor([True, True, False, True, False, False, False])  # no slice describes it
    layer = randomize(AffineCoupling(mask, hidden=(32, 32)), std=0.3)
    assert layer._halves()[2] == [] and layer._halves()[3] == []
    x = torch.randn(LARGE, 7)
    y_ref, ld_ref = layer(x)  # autograd path (grad enabled)
    with torch.no_grad():
        y, ld = layer(x)
        back, ld_inv = layer.inverse(y)
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(ld, ld_ref, atol=1e-5)
    assert torch.equal(y[:, mask], x[:, mask])  # the kept half passes through bit for bit
    assert torch.allclose(back, x, atol=1e-4) and torch.allclose(ld_inv, -ld, atol=1e-5)


@pytest.mark.parametrize("mask", [[1, 0], [0, 1], [1, 1, 0], [0, 0, 1, 1], [1, 0, 1, 0],
                                  [0, 1, 0, 1], [1, 0, 1], [1, 0, 0, 1, 1]],
                         ids=lambda m: "".join(map(str, m)))
def test_merging_the_halves_undoes_taking_them(mask: list[int]) -> None:
    from realnvp.bijections import AffineCoupling
    from realnvp.bijections._kernels import merge_columns, take_columns

    layer = AffineCoupling(torch.tensor(mask, dtype=torch.bool), hidden=(4,))
    kept, transformed, kept_view, transformed_view = layer._halves()
    x = torch.randn(7, len(mask))
    x1, x2 = take_columns(x, kept, kept_view), take_columns(x, transformed, transformed_view)
    assert torch.equal(x1, x[:, kept]) and torch.equal(x2, x[:, transformed])
    merged = merge_columns(x1, x2, kept, transformed, kept_view, transformed_view)
    assert torch.equal(merged, x)


def test_the_kernels_compile() -> None:
    """The Python fall-back is for platforms without TorchScript, not for a kernel that no
    longer compiles: that would only show as a slowdown."""
    from realnvp.bijections._kernels import _compile

    assert all(isinstance(f, torch.jit.ScriptFunction) for f in _compile())


def test_kernels_follow_changed_bounds_and_dtypes() -> None:
    flow = randomize(realnvp.RealNVP(dim=3, n_layers=4, hidden=(8,)), std=0.3).float()
    x = torch.randn(50, 3, dtype=torch.float32)
    step = None
    for change in ("scale_bound", "double"):
        if change == "scale_bound":
            for layer in flow.bijection:
                if hasattr(layer, "scale_bound"):
                    layer.scale_bound = 0.5
        else:
            flow.double()
            x = x.double()
        expected = flow.log_prob(x)  # autograd's path reads the bound and dtype directly
        with torch.no_grad():  # the kernels' path
            torch.testing.assert_close(flow.log_prob(x), expected.detach())
        if step is None:  # built, with its gradients, before the changes: must notice them
            for p in flow.parameters():
                p.grad = torch.zeros_like(p)
            step = fast_step_for(flow)
        torch.testing.assert_close(step(x), -expected.detach().mean())


@pytest.mark.parametrize("threads", [2, 3])
def test_batches_split_between_threads_give_autograd_s_step(
    threads: int, kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large CPU batches are split into one part per thread, the parts' gradients summed."""
    from realnvp.training import fast

    monkeypatch.setattr(fast, "SPLIT_ROWS", 16)  # 101 rows: 2 or 3 parts
    parts: list[int] = []
    real = fast.on_threads
    monkeypatch.setattr(fast, "on_threads", lambda tasks: parts.append(len(tasks)) or real(tasks))
    flow = randomize(realnvp.RealNVP(dim=3, n_layers=4, hidden=(16, 16)), std=0.3).train()
    x = torch.randn(101, 3) * 2
    loss_ref = -flow.log_prob(x).mean()
    grads_ref = torch.autograd.grad(loss_ref, list(flow.parameters()))
    for p in flow.parameters():
        p.grad = torch.full_like(p, float("nan"))  # every entry must be written
    step = fast_step_for(flow)
    assert step is not None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(2):  # the second step reuses the other parts' gradient buffers
            loss = step(x)
            assert torch.get_num_threads() == threads
            assert torch.allclose(loss, loss_ref, atol=1e-12, rtol=0)
            for (pname, p), ref in zip(flow.named_parameters(), grads_ref, strict=True):
                assert torch.allclose(p.grad, ref, atol=1e-11, rtol=1e-9), pname
    finally:
        torch.set_num_threads(before)
    assert parts == [threads, threads]


def test_hooked_layers_train_through_autograd_and_their_hooks_run() -> None:
    from realnvp.training.fit import TrainStep

    flow = randomize(realnvp.RealNVP(dim=3, n_layers=3, hidden=(8,), permutation="random"),
                     std=0.3).train()
    flow.bijection[2].register_forward_hook(lambda *_: None)  # a permutation
    assert fast_step_for(flow) is None
    flow = randomize(realnvp.RealNVP(dim=3, n_layers=3, hidden=(8,)), std=0.3).train()
    step = TrainStep(flow, lr=0.0)
    assert step.fast is not None
    x = torch.randn(32, 3)
    step(x)  # gathered without hooks
    seen: list[int] = []
    flow.bijection[1].register_forward_pre_hook(lambda *_: seen.append(1))  # added later
    loss_ref = -flow.log_prob(x).mean()
    grads_ref = torch.autograd.grad(loss_ref, list(flow.parameters()))
    seen.clear()
    loss, why = step(x)
    assert why is None and seen == [1]  # the hook ran: autograd's path took this step
    assert torch.allclose(loss, loss_ref.detach(), atol=1e-12)
    for p, ref in zip(flow.parameters(), grads_ref, strict=True):
        assert torch.allclose(p.grad, ref, atol=1e-11)


def test_subclasses_with_their_own_maps_are_not_fused() -> None:
    from realnvp.bijections import Chain, Permutation

    class ScaledSwap(Permutation):
        def forward(self, x, context=None):  # noqa: ANN001, ANN202
            z, _ = super().forward(x, context)
            return 2 * z, x.new_full((x.shape[0],), 2 * math.log(2))

        def inverse(self, z, context=None):  # noqa: ANN001, ANN202
            x, _ = super().inverse(z / 2, context)
            return x, z.new_full((z.shape[0],), -2 * math.log(2))

    chain = Chain([ScaledSwap(torch.tensor([1, 0])), ScaledSwap(torch.tensor([1, 0]))])
    x = torch.randn(5, 2)
    with torch.no_grad():
        z, log_det = chain(x)
    torch.testing.assert_close(z, 4 * x)
    torch.testing.assert_close(log_det, torch.full((5,), 4 * math.log(2)))


@pytest.mark.parametrize("kwargs", [{"dim": 2}, {"dim": 5, "hidden": (16, 24, 16)},
                                    {"dim": 40, "hidden": (16, 16)}],
                         ids=["2d", "5d-three-hidden", "40d-inputs-wider-than-hidden"])
def test_reused_activation_buffers_give_the_same_step(kwargs: dict,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Large row parts keep their activations in buffers between steps: same loss and
    gradients as fresh tensors, step after step (each step overwrites the last one's)."""
    from realnvp.bijections import _kernels
    from realnvp.training import fast

    kwargs = {"hidden": (32, 32), **kwargs}
    flow = randomize(realnvp.RealNVP(n_layers=4, **kwargs), std=0.3).train()
    for p in flow.parameters():
        p.grad = torch.zeros_like(p)
    step = fast_step_for(flow)
    rows = 4096  # float64 parts of 2048 rows (2 threads), 16+ wide: 256 KiB activations
    assert _kernels.TRAINING_WORKSPACE_MIN_BYTES <= 2048 * 16 * 8
    xs = [torch.randn(rows, kwargs["dim"]) * 2 for _ in range(2)]
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # (more threads would make smaller parts)
    try:
        for on in (False, True):
            monkeypatch.setattr(fast, "TRAIN_WORKSPACE", on)
            for i, x in enumerate(xs):
                loss = step(x)
                results[on, i] = (loss, [p.grad.clone() for p in flow.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert all(kept[1][1] for kept in step._stack()._work.values())  # the buffers were used
    for i in range(len(xs)):
        (loss_off, grads_off), (loss_on, grads_on) = results[False, i], results[True, i]
        assert torch.allclose(loss_on, loss_off, rtol=1e-13, atol=0)
        for a, b in zip(grads_on, grads_off, strict=True):
            assert torch.allclose(a, b, rtol=1e-11, atol=1e-13)
