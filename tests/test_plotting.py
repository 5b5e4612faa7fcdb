"""Pictures: each runs headless on a small perturbed flow and returns the right type."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image
from sklearn.datasets import make_moons

import realnvp
from realnvp.plotting import (
    TrainingSnapshots,
    plot_density,
    plot_inverse_layers,
    plot_latent,
    plot_layers,
    plot_pairs,
    plot_samples,
    plot_training_curve,
    save_all_plots,
    save_training_gif,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _perturbed(dim: int, n_layers: int = 3, data: torch.Tensor | None = None) -> realnvp.Flow:
    flow = realnvp.RealNVP(dim=dim, n_layers=n_layers, hidden=(16,))
    if data is not None:
        flow.standardize.fit(data)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.2)
    return flow


@pytest.fixture
def moons() -> tuple[torch.Tensor, np.ndarray]:
    x, y = make_moons(300, noise=0.05, random_state=0)
    return torch.as_tensor(x), y


@pytest.fixture
def flow(moons: tuple[torch.Tensor, np.ndarray]) -> realnvp.Flow:
    return _perturbed(2, data=moons[0])


@pytest.fixture
def history() -> list[dict[str, float]]:
    return [{"step": s, "train_nll": 3.0 / s + 1, "lr": 1e-3 * 0.9**s, "seconds": 0.1 * s,
             "val_nll": 3.3 / s + 1.1 if s % 5 == 0 else math.nan} for s in range(1, 41)]


def _modes(module: torch.nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


def _colorbar_labels(fig: Figure) -> list[str]:
    return [child.get_ylabel() for ax in fig.axes for child in ax.child_axes]


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


# --------------------------------------------------------------------------- single pictures


def test_plot_samples_puts_data_and_samples_on_the_same_limits(moons, flow):
    fig = plot_samples(moons[0], flow.sample(200), labels=moons[1])
    left, right = fig.axes
    assert isinstance(fig, Figure)
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["label 0", "label 1"]


def test_plot_samples_of_more_features_is_a_pair_plot():
    fig = plot_samples(torch.randn(50, 5), torch.randn(50, 5))
    assert len(fig.axes) == 16  # the first 4 features
    assert "first 4 of 5 features" in fig.get_suptitle()


def test_plot_pairs_marks_the_gaussian_for_latent_points():
    fig = plot_pairs(torch.randn(60, 3), labels=[0, 1, 2] * 20, gaussian=True)
    off_diagonal = fig.axes[3]  # row 1, column 0
    assert len(off_diagonal.patches) == 3  # the 1/2/3-sigma circles
    assert off_diagonal.get_xlim() == off_diagonal.get_ylim()


def test_plot_density_draws_into_a_given_axes_with_a_labelled_colour_bar(moons, flow):
    ax = Figure().add_subplot()
    out = plot_density(flow, moons[0], resolution=30, ax=ax)
    assert out is ax
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (30, 30)
    assert "log p(x)" in _colorbar_labels(ax.figure)


def test_plot_density_clips_very_negative_values(moons, flow):
    ax = plot_density(flow, moons[0], bounds=(-40, 40, -40, 40), resolution=40)
    low, high = ax.images[0].get_clim()
    assert high - low <= 10.0 + 1e-9
    assert np.isfinite(ax.images[0].get_array()).all()


def test_plot_density_of_a_log_prob_function():
    def normal(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * x.square().sum(-1) - math.log(2 * math.pi)

    ax = plot_density(normal, bounds=(-3, 3, -3, 3), resolution=21, title="True log-density")
    assert isinstance(ax, Axes) and ax.get_title() == "True log-density"
    image = np.asarray(ax.images[0].get_array())
    assert image[10, 10] == pytest.approx(-math.log(2 * math.pi))  # the grid's centre is 0
    with pytest.raises(ValueError, match="Expected data or bounds"):
        plot_density(normal)


def test_plot_density_shows_a_flat_density_with_zero_outside():
    def uniform_square(x: torch.Tensor) -> torch.Tensor:
        inside = (x.abs() < 1).all(-1)
        return torch.where(inside, -math.log(4.0), -math.inf)

    image = plot_density(uniform_square, bounds=(-2, 2, -2, 2), resolution=20).images[0]
    low, high = image.get_clim()
    assert high == pytest.approx(-math.log(4.0)) and low < high
    assert set(np.unique(np.asarray(image.get_array()))) == {low, high}


def test_plot_latent_has_two_panels_and_an_angle_key(moons, flow):
    fig = plot_latent(flow, moons[0], labels=moons[1], n_samples=200)
    left, right = fig.axes[:2]
    assert len(left.patches) == 3  # 1/2/3-sigma circles
    assert left.get_xlabel() == "$z_1$" and right.get_xlabel() == "$x_1$"
    assert "angle of z (degrees)" in _colorbar_labels(fig)


def test_plot_layers_shows_every_stage_named_by_the_flow(moons, flow):
    fig = plot_layers(flow, moons[0], labels=moons[1])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(titles) == len(flow.layer_names()) + 1
    assert titles[0] == "input: data x"
    for title, name in zip(titles[1:], flow.layer_names(), strict=True):
        assert name in title
    assert titles[-1].endswith("→ latent z")


def test_plot_layers_pushes_the_grid_through_the_flow(moons, flow):
    fig = plot_layers(flow, moons[0], grid=True)
    first, last = fig.axes[0], fig.axes[len(flow.layer_names())]
    lines_in = np.concatenate([np.concatenate(c.get_segments()) for c in first.collections
                               if isinstance(c, LineCollection)])
    lines_out = np.concatenate([np.concatenate(c.get_segments()) for c in last.collections
                                if isinstance(c, LineCollection)])
    with torch.no_grad():
        expected = flow(torch.as_tensor(lines_in))[0].numpy()
    np.testing.assert_allclose(lines_out, expected, atol=1e-8)
    no_grid = plot_layers(flow, moons[0], grid=False)
    assert not any(isinstance(c, LineCollection) for c in no_grid.axes[0].collections)


def test_plot_layers_of_a_deep_flow_is_laid_out_in_rows():
    x = torch.randn(100, 2)
    fig = plot_layers(_perturbed(2, n_layers=12, data=x), x)
    rows, cols = fig.axes[0].get_subplotspec().get_geometry()[:2]
    assert rows >= 2 and cols <= 5


def test_plot_inverse_layers_runs_from_latent_to_data(flow):
    fig = plot_inverse_layers(flow, n=100)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles[0].startswith("latent") and titles[-1].endswith("→ data x")
    assert len(titles) == len(flow.layer_names()) + 1


@pytest.mark.parametrize("as_frame", [False, True], ids=["records", "dataframe"])
def test_plot_training_curve(history, as_frame):
    ax = plot_training_curve(pd.DataFrame(history) if as_frame else history)
    assert isinstance(ax, Axes)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "validation NLL" in texts and "learning rate" in texts
    assert any("best validation" in t and "step 40" in t for t in texts)
    twin = [a for a in ax.figure.axes if a is not ax]
    assert twin[0].get_yscale() == "log"


def test_plot_training_curve_needs_steps_and_train_nll():
    with pytest.raises(ValueError, match="train_nll"):
        plot_training_curve([{"step": 1, "loss": 2.0}])
    with pytest.raises(ValueError, match="at least one"):
        plot_training_curve(pd.DataFrame(columns=["step", "train_nll"]))


def test_plotting_restores_every_module_mode(moons, flow):
    flow.train()
    flow.bijection[1].eval()  # a mixed state must come back exactly
    before = _modes(flow)
    plot_density(flow, moons[0], resolution=10)
    plot_layers(flow, moons[0])
    assert _modes(flow) == before


def test_pictures_check_their_input(moons, flow):
    with pytest.raises(ValueError, match="one label per row"):
        plot_latent(flow, moons[0], labels=[0, 1])
    with pytest.raises(ValueError, match="2-D"):
        plot_density(_perturbed(3), resolution=10)
    with pytest.raises(ValueError, match="unconditional"):
        plot_layers(realnvp.RealNVP(dim=2, n_layers=2, context_features=1), moons[0])
    with pytest.raises(ValueError, match="Expected 2 features"):
        plot_layers(flow, torch.randn(10, 3))


# --------------------------------------------------------------------------- training record


def test_snapshots_record_every_kth_call_and_restore_train_mode(moons, flow):
    recorder = TrainingSnapshots(moons[0], every=10, resolution=12, n_samples=50)
    flow.train()
    for step in range(1, 26):
        recorder(step, flow)
    assert [f.step for f in recorder.frames] == [1, 11, 21]
    recorder.record(25, flow)
    assert len(recorder) == 4 and flow.training and all(_modes(flow))
    frame = recorder.frames[-1]
    assert frame.log_prob.shape == (12, 12) and frame.samples.shape == (50, 2)
    np.testing.assert_array_equal(recorder.frames[0].samples, frame.samples)  # same fixed z


def test_snapshots_stay_bounded_and_evenly_spaced(flow):
    recorder = TrainingSnapshots(torch.randn(50, 2), every=1, resolution=4, n_samples=5,
                                 max_frames=4)
    for step in range(1, 21):
        recorder(step, flow)
    steps = [f.step for f in recorder.frames]
    assert len(steps) <= 4 and len(set(np.diff(steps))) == 1
    assert recorder.every > 1


def test_training_gif_has_many_frames_and_at_most_max_frames(tmp_path, moons, flow):
    recorder = TrainingSnapshots(moons[0], every=1, resolution=16, n_samples=40)
    for step in range(1, 13):
        with torch.no_grad():  # the flow changes during "training"
            for p in flow.parameters():
                p.add_(0.01)
        recorder(step, flow)
    path = save_training_gif(recorder, tmp_path / "training.gif", max_frames=5)
    assert path.read_bytes()[:6] == b"GIF89a"
    with Image.open(path) as gif:
        assert gif.n_frames == 5
    with pytest.raises(ValueError, match="at least one recorded snapshot"):
        save_training_gif(TrainingSnapshots(moons[0]), tmp_path / "empty.gif")
    assert _no_temp_files(tmp_path)


# --------------------------------------------------------------------------- all at once


def test_save_all_plots_writes_valid_images_atomically(tmp_path, moons, flow, history):
    recorder = TrainingSnapshots(moons[0], every=1, resolution=16, n_samples=40)
    for step in range(1, 4):
        recorder(step, flow)
    pyplot_before = sys.modules.get("matplotlib.pyplot")
    figures_before = pyplot_before.get_fignums() if pyplot_before else None

    def true_log_prob(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * x.square().sum(-1) - math.log(2 * math.pi)

    out = save_all_plots(tmp_path / "run", flow, moons[0], moons[1], history=history,
                         snapshots=recorder, true_log_prob=true_log_prob, n_samples=200)
    assert set(out) == {"data_vs_samples", "density", "true_density", "latent", "layers",
                        "training_curve", "training"}
    for name, path in out.items():
        data = path.read_bytes()
        assert path.parent == tmp_path / "run"
        assert data.startswith(PNG_MAGIC if path.suffix == ".png" else b"GIF89a"), name
        with Image.open(path) as image:
            image.verify()
    assert out["training"].name == "training.gif"
    with Image.open(out["training"]) as gif:
        assert gif.n_frames > 1
    assert _no_temp_files(tmp_path / "run")
    pyplot_after = sys.modules.get("matplotlib.pyplot")
    assert pyplot_after is pyplot_before  # never imported by the plotting module
    if pyplot_after is not None:
        assert pyplot_after.get_fignums() == figures_before


def test_save_all_plots_of_a_3d_flow_draws_pair_plots_without_grids(tmp_path):
    x = torch.randn(200, 3)
    out = save_all_plots(tmp_path, _perturbed(3, data=x), x, labels=(x[:, 0] > 0).long(),
                         true_log_prob=lambda t: t.sum(-1), n_samples=100)
    assert set(out) == {"data_vs_samples", "latent", "layers"}
    for path in out.values():
        assert path.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in out.values())
