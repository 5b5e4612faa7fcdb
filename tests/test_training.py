"""The fit loop's handling of users' data: rounded columns, thread settings, outcome."""

from __future__ import annotations

import pytest
import torch

import realnvp
from realnvp.training.fit import lattice_steps


def test_lattice_steps_finds_coarse_rounding_only() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 4, generator=g)
    x[:, 1] = torch.round(x[:, 1] * 10) / 10          # rounded to 0.1: 0.1 sd, coarse
    x[:, 2] = torch.randint(0, 5, (5000,), generator=g).double()  # integer levels
    x[:, 3] = torch.round(x[:, 3] * 1000) / 1000      # rounded to 0.001 sd: left alone
    steps = lattice_steps(x.float())
    assert steps[0] == 0 and steps[3] == 0
    assert abs(float(steps[1]) - 0.1) < 1e-5
    assert float(steps[2]) == 1.0


def test_fit_dequantizes_rounded_columns_and_says_so() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 2, generator=g)
    x[:, 0] = torch.round(x[:, 0] * 4) / 4
    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(16,))
    history = realnvp.fit(flow, x, steps=150, progress=False)
    assert list(history.dequantized) == [0]
    # A smooth density: the grid points and the midpoints between them are about as likely.
    grid = torch.tensor([[0.0, 0.0], [0.125, 0.0]])
    lp = flow.log_prob(grid).detach()
    assert abs(float(lp[0] - lp[1])) < 1.0
    assert realnvp.fit(flow, x, steps=5, progress=False, dequantize=False).dequantized == {}


def test_fit_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    realnvp.fit(realnvp.RealNVP(dim=2, n_layers=1, hidden=(4,)), torch.randn(100, 2), steps=3,
                progress=False)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("batch", "fast", "threads"), [
    (512, True, 1), (1024, True, 2), (1024, False, 1), (4096, False, 2), (4096, True, 2),
])
def test_small_batches_train_on_one_thread_unless_split_into_row_parts(
    batch: int, fast: bool, threads: int
) -> None:
    from realnvp.training.fit import single_thread_for

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with single_thread_for(batch, torch.device("cpu"), fast):
            seen = torch.get_num_threads()
        assert seen == threads and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_one_extreme_outlier_does_not_flatten_the_column() -> None:
    """A 1e12 typed among values near 1 used to set the scale, so every ordinary value
    became the same float32 number: one density for all of them, outliers included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=g)
    x[7, 0] = 1e12
    flow = realnvp.RealNVP(dim=2, n_layers=4, hidden=(16, 16))
    realnvp.fit(flow, x, steps=200, progress=False)
    assert float(flow.standardize.scale[0]) < 2.0
    with torch.no_grad():
        lp = flow.log_prob(torch.tensor([[0.0, 0.0], [2.5, 0.0], [-1e6, 0.0]]))
    assert float(lp[0] - lp[1]) > 0.5  # the bulk keeps a shape (was flat: 0; normal: 3.1)
    assert float(lp[2]) < -1e6  # and a far value is an anomaly


def test_the_starting_gaussian_is_kept_when_training_only_overfits() -> None:
    """50 rows without weight decay: every validation after step 0 was far worse (25-700
    nats against 4.4). The automatic weight decay keeps the later flows near that too."""
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 5.0])
    flow = realnvp.RealNVP(dim=2)
    history = realnvp.fit(flow, x, steps=200, progress=False, weight_decay=0.0)
    assert history.best_step == 0 and history.best_val_nll < 5.0
    assert all(r["val_nll"] > history.best_val_nll + 1.0 for r in history.records)
    decayed = realnvp.fit(realnvp.RealNVP(dim=2), x, steps=200, progress=False)
    assert all(r["val_nll"] < 5.0 for r in decayed.records)


def test_flushing_denormals_is_scoped_to_the_with_block_and_the_thread() -> None:
    from realnvp.bijections._blocks import flushing_denormals, flushing_denormals_now

    assert not flushing_denormals_now()
    with flushing_denormals():
        assert torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item() == 0.0
        with flushing_denormals():  # nested: the inner exit leaves the outer's mode on
            pass
        assert flushing_denormals_now()
    assert not flushing_denormals_now()
    assert torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item() > 0.0


def test_fit_flushes_denormals_only_while_it_trains() -> None:
    from realnvp.bijections._blocks import flushing_denormals_now

    seen: list[bool] = []
    realnvp.fit(realnvp.RealNVP(dim=2, n_layers=1, hidden=(4,)), torch.randn(100, 2), steps=2,
                progress=False,
                callbacks=[lambda step, flow: seen.append(flushing_denormals_now())])
    assert seen == [True, True]
    assert not flushing_denormals_now()


def test_auto_weight_decay_is_three_over_the_training_rows() -> None:
    from realnvp.training.fit import resolve_weight_decay

    flow = realnvp.RealNVP(dim=2, n_layers=1, hidden=(4,))
    history = realnvp.fit(flow, torch.randn(300, 2), steps=2, progress=False)  # 270 train
    assert history.weight_decay == pytest.approx(3 / 270)
    assert realnvp.fit(flow, torch.randn(300, 2), steps=2, progress=False,
                       weight_decay=0.0).weight_decay == 0.0
    assert resolve_weight_decay("auto", 5000) == 3 / 5000
    assert resolve_weight_decay("auto", 5001) == 0.0  # large data: none (see its docstring)
    assert resolve_weight_decay(1e-4, 10) == 1e-4
    for bad in (-1.0, float("nan"), "heavy"):
        with pytest.raises(ValueError, match="Expected weight_decay >= 0 or 'auto'"):
            resolve_weight_decay(bad, 10)  # type: ignore[arg-type]


def test_train_step_clears_subnormal_weights_and_moments() -> None:
    from realnvp.training.fit import SUBNORMAL_EVERY, TrainStep

    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,)).float()  # subnormal below 1e-38
    step = TrainStep(flow, lr=1e-3, weight_decay=0.1)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)).float()
    step(x)
    moments = step.optimizer.state[step.flat.value]["exp_avg_sq"]
    with torch.no_grad():
        step.flat.value[:3] = torch.tensor([1e-40, -1e-41, 0.5], dtype=torch.float32)
        moments[:2] = 1e-42
    step.flush_subnormals()
    assert step.flat.value[:3].tolist() == [0.0, 0.0, 0.5] and moments[:2].tolist() == [0, 0]
    calls: list[int] = []
    step.flush_subnormals = lambda: calls.append(step._steps)  # type: ignore[method-assign]
    for _ in range(2 * SUBNORMAL_EVERY):
        step(x)
    assert calls == [SUBNORMAL_EVERY, 2 * SUBNORMAL_EVERY]


def test_a_resumed_fit_reports_the_weight_decay_it_trains_with(tmp_path) -> None:
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    flow = realnvp.RealNVP(dim=2, n_layers=1, hidden=(4,))
    realnvp.fit(flow, x, steps=4, progress=False, weight_decay=0.0, checkpoint_dir=tmp_path,
                checkpoint_every=2)
    resumed = realnvp.fit(realnvp.RealNVP(dim=2, n_layers=1, hidden=(4,)), x, steps=8,
                          progress=False, checkpoint_dir=tmp_path, resume=True)
    assert resumed.weight_decay == 0.0  # the checkpoint's optimiser, not today's "auto"
