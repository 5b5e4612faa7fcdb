"""The GPU paths: training, scoring, sampling, saving and the CLI on ``cuda``.

Skipped where CUDA is absent (CI has no GPU); run on a GPU machine with
``pytest tests/test_cuda.py``. Each test compares the device against the CPU, which the
rest of the suite checks against the math. ``REALNVP_TEST_DEVICE=cpu`` runs the same tests
with the CPU standing in for the GPU (a check of the tests themselves).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import realnvp
import realnvp.cli
from realnvp.bijections._kernels import (
    bound_constants,
    coupling_forward,
    coupling_inverse,
    kernels,
)
from realnvp.datasets import get_toy
from realnvp.training import make_train_step

CUDA = torch.device(os.environ.get("REALNVP_TEST_DEVICE", "cuda"))

pytestmark = pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device")


def _moons(n: int = 2000) -> np.ndarray:
    return get_toy("moons").sample(n, seed=0)[0].numpy()


@pytest.mark.parametrize("coupling", ["affine", "additive", "spline"])
def test_a_flow_moved_to_cuda_scores_and_inverts_like_on_the_cpu(coupling: str) -> None:
    flow = realnvp.RealNVP(3, n_layers=4, hidden=(16, 16), coupling=coupling, seed=1)
    with torch.no_grad():  # leave the identity start so the test sees real maps
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(257, 3)
    gpu = realnvp.RealNVP(3, n_layers=4, hidden=(16, 16), coupling=coupling, seed=1)
    gpu.load_state_dict(flow.state_dict())
    gpu.to(CUDA)
    with torch.inference_mode():
        expected = flow.log_prob(x)
        got = gpu.log_prob(x.to(CUDA))
        z, _ = gpu(x.to(CUDA))
        back, _ = gpu.inverse(z)
    assert got.device.type == CUDA.type
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(back.cpu(), x, rtol=1e-9, atol=1e-9)


def test_scripted_kernels_on_cuda_match_the_python_kernels() -> None:
    torch.manual_seed(0)
    h = torch.randn(100, 4, device=CUDA)
    kept = torch.tensor([0, 2], device=CUDA)
    transformed = torch.tensor([1, 3], device=CUDA)
    params = [torch.randn(8, 2, device=CUDA), torch.randn(8, device=CUDA),
              torch.randn(4, 8, device=CUDA), torch.randn(4, device=CUDA)]
    consts = bound_constants(10.0, 3.0, h)
    y, ld, _ = kernels().forward(h, kept, transformed, [], [], params, 10.0, 3.0, consts, True)
    y_py, ld_py, _ = coupling_forward(h, kept, transformed, [], [], params, 10.0, 3.0, consts,
                                      True)
    torch.testing.assert_close(y, y_py)
    torch.testing.assert_close(ld, ld_py)
    x, ld_inv = kernels().inverse(y, kept, transformed, [], [], params, 10.0, 3.0, consts, True)
    x_py, _ = coupling_inverse(y, kept, transformed, [], [], params, 10.0, 3.0, consts, True)
    torch.testing.assert_close(x, x_py)
    torch.testing.assert_close(x, h)
    torch.testing.assert_close(ld_inv, -ld)


def test_the_fast_training_step_on_cuda_matches_the_cpu_step() -> None:
    cpu = realnvp.RealNVP(2, n_layers=4, hidden=(16, 16), seed=3)
    gpu = realnvp.RealNVP(2, n_layers=4, hidden=(16, 16), seed=3).to(CUDA)
    x = torch.as_tensor(_moons(512))
    step_cpu, step_gpu = make_train_step(cpu, lr=1e-2), make_train_step(gpu, lr=1e-2)
    for _ in range(5):
        loss_cpu = step_cpu(x)
        loss_gpu = step_gpu(x.to(CUDA))
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-8, atol=1e-8)
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-7, atol=1e-8, msg=name)


@pytest.mark.parametrize("options", [
    {}, {"coupling": "spline"}, {"permutation": "lu", "actnorm": True}, {"batchnorm": True},
])
def test_fit_on_cuda_learns_and_leaves_the_flow_on_cuda(options: dict) -> None:
    torch.set_default_dtype(torch.float32)
    flow = realnvp.RealNVP(2, n_layers=4, hidden=(32, 32), **options)
    history = realnvp.fit(flow, _moons(), steps=150, batch_size=256, lr=5e-3, device=str(CUDA),
                          progress=False, eval_every=50)
    assert next(flow.parameters()).device.type == CUDA.type
    assert history.records[-1]["val_nll"] < history.records[0]["val_nll"]
    with torch.inference_mode():
        x, log_q = flow.sample_and_log_prob(1000, generator=torch.Generator().manual_seed(0))
        assert x.device.type == CUDA.type and bool(torch.isfinite(log_q).all())
        torch.testing.assert_close(flow.log_prob(x), log_q, rtol=1e-3, atol=1e-3)


def test_a_flow_trained_on_cuda_saves_and_loads_on_the_cpu(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    flow = realnvp.RealNVP(2, n_layers=2, hidden=(16, 16))
    realnvp.fit(flow, _moons(500), steps=20, batch_size=128, device=str(CUDA), progress=False)
    realnvp.save(flow, tmp_path / "m.safetensors")
    loaded = realnvp.load(tmp_path / "m.safetensors")
    x = torch.randn(64, 2)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x.to(CUDA)).cpu())
    on_gpu = realnvp.load(tmp_path / "m.safetensors", map_location=str(CUDA))
    assert next(on_gpu.parameters()).device.type == CUDA.type


def test_resume_on_cuda_continues_from_the_checkpoint(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    data = _moons(1000)
    kwargs = dict(batch_size=128, device=str(CUDA), progress=False, checkpoint_dir=tmp_path,
                  checkpoint_every=10, eval_every=10, seed=0)
    straight = realnvp.RealNVP(2, n_layers=2, hidden=(16, 16))
    realnvp.fit(straight, data, steps=40, **kwargs)
    second = {**kwargs, "checkpoint_dir": tmp_path / "b"}
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: the step finishes, a checkpoint is saved
        realnvp.fit(realnvp.RealNVP(2, n_layers=2, hidden=(16, 16)), data, steps=40,
                    callbacks=[_interrupt_at(23)], **second)
    resumed = realnvp.RealNVP(2, n_layers=2, hidden=(16, 16))
    history = realnvp.fit(resumed, data, steps=40, resume=True, **second)
    assert history.stopped == "completed 40 steps"
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def _interrupt_at(step: int):
    def callback(current: int, flow: object) -> None:
        if current == step:
            raise KeyboardInterrupt
    return callback


def test_the_estimator_fits_on_cuda_and_scores_on_the_cpu() -> None:
    est = realnvp.RealNVPDensity(steps=100, n_layers=2, hidden=(16, 16), device=str(CUDA))
    est.fit(_moons(500))
    scores = est.score_samples(_moons(50))
    assert scores.shape == (50,) and np.isfinite(scores).all()


def test_the_cli_trains_scores_and_samples_on_cuda(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--steps", "60", "--n-train", "2000", "--device", str(CUDA), "--quiet",
            "--out", str(run)]
    realnvp.cli.main(args)
    assert (run / "model.safetensors").exists() and (run / "metrics.json").exists()
    scored = tmp_path / "scores.csv"
    np.savetxt(tmp_path / "x.csv", _moons(100), delimiter=",", header="x0,x1", comments="")
    realnvp.cli.main(["score", str(run), str(tmp_path / "x.csv"), "--out", str(scored)])
    assert len(scored.read_text().splitlines()) == 101
