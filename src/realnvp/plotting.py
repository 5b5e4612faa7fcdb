"""Pictures of a flow: density, samples, latent space, the layer-by-layer warp, training."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle
from PIL import Image
from torch import Tensor, nn

from realnvp._validation import as_float_tensor
from realnvp.flow import Flow
from realnvp.io import atomic_write_bytes
from realnvp.mixture import FlowMixture, as_single_flow

__all__ = [
    "Snapshot",
    "TrainingSnapshots",
    "plot_density",
    "plot_inverse_layers",
    "plot_latent",
    "plot_layers",
    "plot_pairs",
    "plot_samples",
    "plot_training_curve",
    "save_all_plots",
    "save_training_gif",
]

Bounds = tuple[float, float, float, float]
"""``(xmin, xmax, ymin, ymax)`` of a 2-D view, as matplotlib's ``extent``."""

# One colour scheme for every picture: data blue, samples orange, labels a fixed palette.
DATA_COLOR = "#4c72b0"
SAMPLE_COLOR = "#dd8452"
BACKGROUND_COLOR = "#b0b0b0"
LABEL_COLORS = ("#4c72b0", "#c44e52", "#55a868", "#8172b3", "#937860",
                "#da8bc3", "#64b5cd", "#ccb974", "#2f4b7c", "#8c8c8c")
GRID_COLORS = ("#9e9e9e", "#d9b48f")  # deformed grid: lines of constant y, of constant x
DENSITY_CMAP = "viridis"
ANGLE_CMAP = "hsv"  # cyclic: colours a latent point by its angle
DENSITY_SPAN = 10.0  # log-density maps show [max - DENSITY_SPAN, max]; lower values are clipped
MAX_POINTS = 3000  # scatter plots draw at most this many points (a fixed random subset)
DPI = 120

LogProb = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _evaluating(flow: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode inside; every submodule's train/eval mode restored after."""
    modes = [(module, module.training) for module in flow.modules()]
    flow.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _check_flow(flow: Any, two_d: bool = False, mixture: bool = False) -> Flow:
    if not isinstance(flow, (Flow, FlowMixture) if mixture else Flow):
        kinds = "realnvp.Flow or FlowMixture" if mixture else "realnvp.Flow"
        raise TypeError(f"Expected a {kinds}; got {type(flow).__name__}")
    if flow.context_features:
        raise ValueError(
            f"Expected an unconditional flow; got one with {flow.context_features} context features"
        )
    if two_d and flow.dim != 2:
        raise ValueError(f"Expected a flow on 2-D data for this picture; got dim={flow.dim}")
    return flow


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _points(data: Any, dim: int | None = None, what: str = "data",
            drop_nonfinite: bool = False) -> np.ndarray:
    """Rows as a float64 array; ``drop_nonfinite`` skips NaN/inf rows (a diverged model's
    samples) instead of refusing them."""
    if isinstance(data, Tensor):
        data = data.detach().cpu()
    if drop_nonfinite:
        array = np.asarray(data, dtype=np.float64)
        data = array[np.isfinite(array).all(1)] if array.ndim == 2 else array
    return _numpy(as_float_tensor(data, dim, what))


def _labels(labels: Any, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"Expected one label per row of data ({n}); got {labels.shape[0]}")
    return labels


def _subsample(
    x: np.ndarray, labels: np.ndarray | None, max_points: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    if x.shape[0] <= max_points:
        return x, labels
    keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
    return x[keep], None if labels is None else labels[keep]


def _bounds(points: np.ndarray, margin: float = 0.15) -> Bounds:
    """A view around the bulk of ``points`` (first two columns), robust to a few outliers."""
    finite = points[np.isfinite(points[:, :2]).all(1), :2]
    if finite.shape[0] == 0:
        return (-3.0, 3.0, -3.0, 3.0)
    lo, hi = np.quantile(finite, 0.002, axis=0), np.quantile(finite, 0.998, axis=0)
    pad = margin * max(float((hi - lo).max()), 1e-3)
    return (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)


def _square(bounds: Bounds) -> Bounds:
    """The smallest square view holding ``bounds``, centred on it."""
    cx, cy = (bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2
    half = max(bounds[1] - bounds[0], bounds[3] - bounds[2]) / 2
    return (cx - half, cx + half, cy - half, cy + half)


def _new_axes(ax: Axes | None, figsize: tuple[float, float] = (5.5, 4.5)) -> Axes:
    if ax is not None:
        return ax
    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _colorbar(ax: Axes, mappable: Any, label: str, **kwargs: Any) -> Any:
    """A colour bar exactly as tall as ``ax`` (whatever its aspect), just right of it."""
    cax = ax.inset_axes((1.04, 0.0, 0.045, 1.0))
    return ax.figure.colorbar(mappable, cax=cax, label=label, **kwargs)


def _dot(color: Any, label: str) -> Line2D:
    return Line2D([], [], ls="", marker="o", ms=6, color=color, label=label)


def _label_colors(labels: np.ndarray | None) -> tuple[Any, list[Line2D]]:
    """Per-point colours and legend handles: a palette for few labels, viridis for many."""
    if labels is None:
        return DATA_COLOR, []
    values, codes = np.unique(labels, return_inverse=True)
    if len(values) <= len(LABEL_COLORS):
        palette = np.array(LABEL_COLORS)
        return palette[codes], [_dot(palette[i], f"label {v}") for i, v in enumerate(values)]
    numeric = labels.astype(float) if np.issubdtype(labels.dtype, np.number) else codes
    span = float(numeric.max() - numeric.min()) or 1.0
    return matplotlib.colormaps["viridis"]((numeric - numeric.min()) / span), []


def _angle_colors(z: np.ndarray) -> np.ndarray:
    angle = np.arctan2(z[:, 1], z[:, 0])
    return matplotlib.colormaps[ANGLE_CMAP]((angle + math.pi) / (2 * math.pi))


def _scatter(ax: Axes, x: np.ndarray, color: Any, size: float = 4, alpha: float = 0.7,
             **kwargs: Any) -> Any:
    return ax.scatter(x[:, 0], x[:, 1], c=color, s=size, alpha=alpha, linewidths=0, **kwargs)


def _view(ax: Axes, bounds: Bounds, xlabel: str, ylabel: str) -> None:
    """Show exactly ``bounds``, at equal scale on both axes (the box takes their shape)."""
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _sigma_circles(ax: Axes) -> None:
    for r in (1, 2, 3):
        ax.add_patch(Circle((0, 0), r, fill=False, ls="--", lw=0.9, color="0.25", zorder=3))
        ax.annotate(f"{r}σ", (r * 0.71, r * 0.71), fontsize=7, color="0.25", zorder=3,
                    xytext=(2, 2), textcoords="offset points")


def _grid_lines(bounds: Bounds, n_lines: int = 15, resolution: int = 150) -> np.ndarray:
    """A square grid over ``bounds`` as polylines, shape ``(lines, resolution, 2)``.

    The first half are lines of constant y, the second half lines of constant x.
    """
    x0, x1, y0, y1 = bounds
    step = max(x1 - x0, y1 - y0) / (n_lines - 1)
    xs, ys = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
    rows = [np.column_stack([xs, np.full_like(xs, y)]) for y in np.arange(y0, y1 + step / 2, step)]
    cols = [np.column_stack([np.full_like(ys, x), ys]) for x in np.arange(x0, x1 + step / 2, step)]
    return np.stack(rows + cols)


def _log_density_grid(log_prob: LogProb, bounds: Bounds, resolution: int,
                      dtype: torch.dtype = torch.float64,
                      device: torch.device | str = "cpu") -> np.ndarray:
    """``log_prob`` on a ``resolution x resolution`` grid; rows follow y (``origin="lower"``)."""
    xx, yy = np.meshgrid(np.linspace(bounds[0], bounds[1], resolution),
                         np.linspace(bounds[2], bounds[3], resolution))
    grid = torch.as_tensor(np.column_stack([xx.ravel(), yy.ravel()]), dtype=dtype, device=device)
    values = [torch.as_tensor(log_prob(chunk)).reshape(-1) for chunk in grid.split(65536)]
    return _numpy(torch.cat(values)).reshape(resolution, resolution)


def _color_range(log_p: np.ndarray) -> tuple[float, float]:
    finite = log_p[np.isfinite(log_p)]
    if finite.size == 0:
        return -1.0, 0.0
    top = float(finite.max())
    bottom = max(float(finite.min()), top - DENSITY_SPAN)
    return (top - 1.0 if top - bottom < 1e-6 else bottom), top  # a flat density stays visible


def _density_image(ax: Axes, log_p: np.ndarray, bounds: Bounds,
                   limits: tuple[float, float] | None = None) -> Any:
    vmin, vmax = limits or _color_range(log_p)
    shown = np.clip(np.nan_to_num(log_p, nan=vmin, neginf=vmin, posinf=vmax), vmin, vmax)
    return ax.imshow(shown, origin="lower", extent=bounds, cmap=DENSITY_CMAP, vmin=vmin,
                     vmax=vmax, interpolation="bilinear")


def _dtype_device(flow: Flow | FlowMixture) -> tuple[torch.dtype, torch.device]:
    anchor = flow._anchor()
    return anchor.dtype, anchor.device


def _base_samples(flow: Flow, n: int, seed: int) -> Tensor:
    return flow.base.sample(int(n), torch.Generator().manual_seed(int(seed)))


# ----------------------------------------------------------------------------- panels


def plot_samples(data: Any, samples: Any, labels: Any = None,
                 max_points: int = MAX_POINTS) -> Figure:
    """Training data (coloured by label) beside model samples, on the same axes limits.

    Data with other than two features is drawn as a pair plot (:func:`plot_pairs`).

    Example:
        >>> fig = plot_samples(torch.randn(50, 2), torch.randn(60, 2))
        >>> [ax.get_title() for ax in fig.axes]
        ['Training data (n=50)', 'Flow samples (n=60)']
    """
    x, s = _points(data), _points(samples, None, "samples", drop_nonfinite=True)
    if s.shape[1] != x.shape[1]:
        raise ValueError(f"Expected samples with {x.shape[1]} features; got {s.shape[1]}")
    if x.shape[1] != 2:
        return plot_pairs(x, s, labels, max_points=max_points,
                          title="Training data (blue) vs flow samples (orange)")
    n_data, n_samples = x.shape[0], s.shape[0]
    x, lab = _subsample(x, _labels(labels, x.shape[0]), max_points)
    s, _ = _subsample(s, None, max_points)
    bounds = _bounds(x)
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors, handles = _label_colors(lab)
    _scatter(left, x, colors)
    left.set_title(f"Training data (n={n_data})")
    if handles:
        left.legend(handles=handles, loc="best", fontsize=8)
    _scatter(right, s, SAMPLE_COLOR)
    right.set_title(f"Flow samples (n={n_samples})")
    for ax in (left, right):
        _view(ax, bounds, "$x_1$", "$x_2$")
    return fig


def plot_pairs(data: Any, samples: Any = None, labels: Any = None, max_features: int = 4,
               gaussian: bool = False, title: str | None = None,
               max_points: int = MAX_POINTS) -> Figure:
    """Pair plot of the first ``max_features`` features: histograms on the diagonal.

    With ``samples``, data (blue) and samples (orange) are overlaid for comparison; without,
    the data is coloured by label. ``gaussian=True`` marks the standard normal (its density
    on the diagonal, its 1/2/3-sigma circles elsewhere), for points in latent space.

    Example:
        >>> fig = plot_pairs(torch.randn(40, 3), torch.randn(40, 3))
        >>> len(fig.axes)
        9
    """
    x = _points(data)
    lab = _labels(labels, x.shape[0])
    s = None if samples is None else _points(samples, x.shape[1], "samples", True)
    k = max(1, min(x.shape[1], int(max_features)))
    x, lab = _subsample(x, lab, max_points)
    if s is not None:
        s, _ = _subsample(s, None, max_points)
    colors, handles = (DATA_COLOR, [_dot(DATA_COLOR, "data"), _dot(SAMPLE_COLOR, "samples")]) \
        if s is not None else _label_colors(lab)
    fig = Figure(figsize=(2.4 * k + 0.6, 2.4 * k + 0.6), layout="constrained")
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            _pair_panel(axes[i, j], x, s, colors, (i, j, k), gaussian)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False,
                   ncols=len(handles))
    shown = f"first {k} of {x.shape[1]} features" if k < x.shape[1] else f"{k} features"
    fig.suptitle(f"{title or 'Pair plot'}\n({shown})")
    return fig


def _pair_panel(ax: Axes, x: np.ndarray, s: np.ndarray | None, colors: Any,
                where: tuple[int, int, int], gaussian: bool) -> None:
    i, j, k = where  # row, column, size of the grid
    if j > i:
        ax.set_axis_off()
        return
    if i == j:
        bins = np.histogram_bin_edges(x[:, i], bins=40)
        ax.hist(x[:, i], bins=bins, density=True, color=DATA_COLOR, alpha=0.55)
        if s is not None:
            ax.hist(s[:, i], bins=bins, density=True, color=SAMPLE_COLOR, histtype="step", lw=1.5)
        if gaussian:
            t = np.linspace(bins[0], bins[-1], 200)
            ax.plot(t, np.exp(-t**2 / 2) / math.sqrt(2 * math.pi), color="0.2", lw=1, ls="--")
        ax.set_yticks([])
    else:
        _scatter(ax, x[:, [j, i]], colors, size=3, alpha=0.5)
        if s is not None:
            _scatter(ax, s[:, [j, i]], SAMPLE_COLOR, size=3, alpha=0.35)
        if gaussian:
            _sigma_circles(ax)
            r = _latent_radius(x[:, [j, i]])
            ax.set_xlim(-r, r)
            ax.set_ylim(-r, r)
            ax.set_aspect("equal", adjustable="box")
        else:
            ax.set_xlim(*_bounds(x[:, [j, i]])[:2])
            ax.set_ylim(*_bounds(x[:, [j, i]])[2:])
    name = "z" if gaussian else "x"
    if i == k - 1:
        ax.set_xlabel(f"${name}_{{{j + 1}}}$")
    if j == 0 and i != j:
        ax.set_ylabel(f"${name}_{{{i + 1}}}$")
    ax.tick_params(labelsize=7)


def plot_density(flow: Flow | FlowMixture | LogProb, data: Any = None,
                 bounds: Bounds | None = None,
                 resolution: int = 200, ax: Axes | None = None,
                 title: str | None = None) -> Axes:
    """Heatmap of ``log p(x)`` on a grid, with the data scattered on top.

    ``flow`` is a 2-D :class:`~realnvp.Flow` or any ``log_prob(x: Tensor) -> Tensor``
    (then called on float64 points). Values more than ``DENSITY_SPAN`` nats below the
    maximum are clipped so the colour scale shows the shape of the density. ``bounds``
    default to the data's range with a margin (or, for a flow alone, its samples').

    Example:
        >>> import realnvp
        >>> ax = plot_density(realnvp.RealNVP(dim=2, n_layers=2), resolution=20)
        >>> ax.get_title()
        'Model log-density'
    """
    x = None if data is None else _points(data, 2)
    if isinstance(flow, (Flow, FlowMixture)):
        _check_flow(flow, two_d=True, mixture=True)
        dtype, device = _dtype_device(flow)
        with _evaluating(flow):
            if bounds is None and x is None:
                bounds = _bounds(_numpy(flow.sample(2000, generator=torch.Generator()
                                                    .manual_seed(0))))
            log_p = _log_density_grid(flow.log_prob, bounds or _bounds(x), resolution, dtype,
                                      device)
        title = title or ("Model log-density" if isinstance(flow, Flow) else
                          f"Model log-density: mixture of {len(flow)} flows")
    else:
        if bounds is None and x is None:
            raise ValueError("Expected data or bounds to place the grid of a log-density function")
        log_p = _log_density_grid(flow, bounds or _bounds(x), resolution)
        title = title or "Log-density"
    bounds = bounds or _bounds(x)
    ratio = (bounds[3] - bounds[2]) / max(bounds[1] - bounds[0], 1e-12)
    ax = _new_axes(ax, (6.2, float(np.clip(5.0 * ratio, 2.5, 6.5)) + 0.9))
    image = _density_image(ax, log_p, bounds)
    _colorbar(ax, image, "log p(x)")
    if x is not None:
        _scatter(ax, _subsample(x, None, MAX_POINTS)[0], "white", size=1.5, alpha=0.35)
    _view(ax, bounds, "$x_1$", "$x_2$")
    ax.set_title(title)
    return ax


def plot_latent(flow: Flow, data: Any, labels: Any = None, n_samples: int = 2000,
                seed: int = 0, max_points: int = MAX_POINTS) -> Figure:
    """Two views of the latent space of a 2-D flow.

    Left: the data mapped to latent space, ``z = f(x)``, coloured by label, over the standard
    normal's 1/2/3-sigma circles and a faint wheel of angle colours. A good fit fills the
    circles like a Gaussian cloud. With labels, a middle panel maps base samples back to
    data space coloured by the label of their nearest mapped data point (which moon each
    part of the Gaussian becomes). Right: base samples mapped back to data space,
    ``x = f^{-1}(z)``, coloured by the angle of their ``z`` with the same wheel; it shows
    which direction of the latent Gaussian becomes which part of the data (a sharp change
    of colour marks where the flow tears the plane to make gaps between modes).

    For other than two features this is a pair plot of ``z`` (:func:`plot_pairs`).

    Example:
        >>> import realnvp
        >>> fig = plot_latent(realnvp.RealNVP(dim=2, n_layers=2), torch.randn(30, 2),
        ...                   n_samples=30)
        >>> [ax.get_xlabel() for ax in fig.axes]
        ['$z_1$', '$x_1$']
    """
    _check_flow(flow)
    x = _points(data, flow.dim)
    lab = _labels(labels, x.shape[0])
    x, lab = _subsample(x, lab, max_points)
    with _evaluating(flow):
        z = _numpy(flow(x)[0])
        eps = _base_samples(flow, n_samples, seed)
        back = _numpy(flow.inverse(eps)[0])
    if flow.dim != 2:
        return plot_pairs(z, labels=lab, gaussian=True, title="Data mapped to latent space")
    fig = Figure(figsize=(16.5 if lab is not None else 11, 4.8), layout="constrained")
    axes = fig.subplots(1, 3 if lab is not None else 2)
    _latent_panel(axes[0], z, lab)
    if lab is not None:
        # Each latent sample takes the label of the nearest mapped data point: which moon
        # (class, component) each region of the Gaussian is sent to.
        nearest = torch.cdist(torch.as_tensor(_numpy(eps), dtype=torch.float64),
                              torch.as_tensor(z, dtype=torch.float64)).argmin(1).numpy()
        colors, handles = _label_colors(lab[nearest])
        mid = axes[1]
        _scatter(mid, back, colors, size=4, alpha=0.8)
        _view(mid, _bounds(x), "$x_1$", "$x_2$")
        mid.set_title("Latent samples mapped to data: $x = f^{-1}(z)$\n"
                      "colour = label of the nearest data point in latent space", fontsize=10)
        if handles:
            mid.legend(handles=handles, loc="best", fontsize=8)
    right = axes[-1]
    _scatter(right, x, BACKGROUND_COLOR, size=2, alpha=0.35)
    _scatter(right, back, _angle_colors(_numpy(eps)), size=4, alpha=0.8)
    _view(right, _bounds(x), "$x_1$", "$x_2$")
    right.set_title("Latent samples mapped to data: $x = f^{-1}(z)$\n"
                    "colour = angle of z (data in grey)", fontsize=10)
    wheel = ScalarMappable(Normalize(-180, 180), matplotlib.colormaps[ANGLE_CMAP])
    _colorbar(right, wheel, "angle of z (degrees)", ticks=[-180, -90, 0, 90, 180])
    return fig


def _latent_radius(z: np.ndarray) -> float:
    """Half-width of a square latent view: at least 3.6 (past the 3-sigma circle), at most 10."""
    finite = np.abs(z[np.isfinite(z).all(1)])
    return float(np.clip(np.quantile(finite, 0.998) * 1.1 if finite.size else 3.6, 3.6, 10.0))


def _latent_panel(ax: Axes, z: np.ndarray, labels: np.ndarray | None) -> None:
    r = _latent_radius(z)
    t = np.linspace(-r, r, 200)
    tx, ty = np.meshgrid(t, t)
    wheel = matplotlib.colormaps[ANGLE_CMAP]((np.arctan2(ty, tx) + math.pi) / (2 * math.pi))
    wheel[..., 3] = np.where(tx**2 + ty**2 <= 9, 0.14, 0.0)
    ax.imshow(wheel, origin="lower", extent=(-r, r, -r, r), zorder=0)
    colors, handles = _label_colors(labels)
    _scatter(ax, z, colors, size=4, alpha=0.7, zorder=2)
    _sigma_circles(ax)
    _view(ax, (-r, r, -r, r), "$z_1$", "$z_2$")
    ax.set_title("Data mapped to latent space: $z = f(x)$\n"
                 "dashed: 1/2/3σ circles of the standard normal", fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=8)


# ----------------------------------------------------------------------------- layer by layer


def plot_layers(flow: Flow, data: Any, labels: Any = None, grid: bool = True,
                max_points: int = 2000, n_lines: int = 15, note: str | None = None) -> Figure:
    """How the flow maps data to latent, layer by layer: one panel per stage.

    Panels show the input, the points after each layer (named by ``flow.layer_names()``)
    and the latent space, with the data coloured by label. With ``grid`` (2-D only), a
    regular grid laid over the data is pushed through the same layers, so one sees each
    coupling bend the plane: a coupling moves points along one axis by an amount that
    depends on the other, so straight lines become curves. Each panel has its own scale.
    For more than two features, the first two are drawn, without grid. ``note`` adds a
    line under the title.

    Example:
        >>> import realnvp
        >>> fig = plot_layers(realnvp.RealNVP(dim=2, n_layers=2), torch.randn(30, 2))
        >>> [ax.get_title() for ax in fig.axes][:2]
        ['input: data x', 'after 0: Standardize']
    """
    _check_flow(flow)
    if flow.dim < 2:
        raise ValueError(f"Expected a flow on at least 2 features; got dim={flow.dim}")
    x = _points(data, flow.dim)
    x, lab = _subsample(x, _labels(labels, x.shape[0]), max_points)
    lines = _grid_lines(_bounds(x), n_lines) if grid and flow.dim == 2 else None
    stages, grids = _trace(flow, x, lines)
    titles = ["input: data x"] + [f"after {name}" for name in flow.layer_names()]
    titles[-1] += " → latent z"
    colors, handles = _label_colors(lab)
    suptitle = "Data → latent, layer by layer"
    if flow.dim > 2:
        suptitle += f"\n(first 2 of {flow.dim} features; grids are drawn for 2-D data only)"
    if note:
        suptitle += f"\n({note})"
    names = ["x"] + ["h"] * (len(stages) - 2) + ["z"]
    return _plot_stages(stages, grids, titles, names, colors, handles, suptitle)


def plot_inverse_layers(flow: Flow, n: int = 2000, seed: int = 0, grid: bool = True,
                        n_lines: int = 15) -> Figure:
    """Latent Gaussian samples pulled back through each layer to data space.

    Points are coloured by the angle of their latent ``z`` (as in :func:`plot_latent`);
    with ``grid`` (2-D only), a grid over ``[-3, 3]^2`` in latent space travels along.

    Example:
        >>> import realnvp
        >>> fig = plot_inverse_layers(realnvp.RealNVP(dim=2, n_layers=2), n=30)
        >>> fig.axes[-1].get_title().endswith('→ data x')
        True
    """
    _check_flow(flow)
    if flow.dim < 2:
        raise ValueError(f"Expected a flow on at least 2 features; got dim={flow.dim}")
    with _evaluating(flow):
        eps = _numpy(_base_samples(flow, n, seed))
    lines = _grid_lines((-3.0, 3.0, -3.0, 3.0), n_lines) if grid and flow.dim == 2 else None
    stages, grids = _trace(flow, eps, lines, inverse=True)
    titles = ["latent z ~ base"] + [f"after inverse of {name}" for name in flow.layer_names()[::-1]]
    titles[-1] += " → data x"
    names = ["z"] + ["h"] * (len(stages) - 2) + ["x"]
    suptitle = "Latent → data, layer by layer (colour = angle of z)"
    return _plot_stages(stages, grids, titles, names, _angle_colors(eps), [], suptitle)


def _trace(flow: Flow, points: np.ndarray, lines: np.ndarray | None, inverse: bool = False
           ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The points (and grid lines) after every layer, pushed through in one batch."""
    n = points.shape[0]
    flat = points if lines is None else np.concatenate([points, lines.reshape(-1, points.shape[1])])
    with _evaluating(flow):
        trace = [_numpy(t) for t in flow.trace(flat, inverse=inverse)]
    stages = [t[:n] for t in trace]
    if lines is None:
        return stages, None
    grids = [np.where(np.isfinite(t[n:]), t[n:], np.nan).reshape(lines.shape) for t in trace]
    return stages, grids


MAX_PANELS = 16
"""Layer-by-layer figures of deeper flows show this many evenly spaced stages (first and last
always), so a 24-layer flow still reads as one picture."""


def _shown(n: int, limit: int = MAX_PANELS) -> list[int]:
    """Indices of the stages to draw: all of them, or ``limit`` evenly spaced incl. both ends.

    Example:
        >>> _shown(4), _shown(30, limit=4)
        ([0, 1, 2, 3], [0, 10, 19, 29])
    """
    if n <= limit:
        return list(range(n))
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def _plot_stages(stages: Sequence[np.ndarray], grids: Sequence[np.ndarray] | None,
                 titles: Sequence[str], names: Sequence[str], colors: Any,
                 handles: list[Line2D], suptitle: str) -> Figure:
    keep = _shown(len(stages))
    if len(keep) < len(stages):
        suptitle += f"\n({len(keep)} of {len(stages)} stages, evenly spaced)"
    stages, titles, names = ([seq[i] for i in keep] for seq in (stages, titles, names))
    grids = None if grids is None else [grids[i] for i in keep]
    n = len(stages)
    nrows = math.ceil(n / 5)  # at most 5 panels a row, rows as evenly filled as possible
    ncols = math.ceil(n / nrows)
    # Margins fixed in inches: a constrained layout of 16 panels took longer to compute than
    # to draw them (about half of the default job's picture time).
    top_in = 0.3 + 0.22 * (suptitle.count("\n") + 1)
    bottom_in = 0.5 + (0.3 if handles else 0.0)
    width, height = 3.1 * ncols, 3.0 * nrows + top_in + bottom_in
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=bottom_in / height,
                        top=1 - top_in / height, wspace=0.38, hspace=0.42)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        _stage_panel(ax, stages[i], None if grids is None else grids[i], colors, names[i])
        if names[i] == "z":
            _sigma_circles(ax)
        ax.set_title(titles[i], fontsize=9)
    if handles:
        fig.legend(handles=handles, loc="lower center", fontsize=8, frameon=False,
                   ncols=len(handles), bbox_to_anchor=(0.5, 0.02 / height))
    fig.suptitle(suptitle, y=1 - 0.08 / height, va="top")
    return fig


def _stage_panel(ax: Axes, points: np.ndarray, lines: np.ndarray | None, colors: Any,
                 name: str) -> None:
    if lines is not None:
        half = lines.shape[0] // 2
        for part, color in ((lines[:half], GRID_COLORS[0]), (lines[half:], GRID_COLORS[1])):
            ax.add_collection(LineCollection(list(part), colors=color, linewidths=0.75,
                                             zorder=1), autolim=False)
    _scatter(ax, points, colors, size=3, alpha=0.75, zorder=2)
    _view(ax, _square(_bounds(points, margin=0.12)), f"${name}_1$", f"${name}_2$")
    ax.tick_params(labelsize=7)


# ----------------------------------------------------------------------------- training


def plot_training_curve(history: Any, ax: Axes | None = None) -> Axes:
    """Train and validation NLL against step, learning rate on a twin log axis.

    ``history`` is a list of dicts, a pandas DataFrame or a :class:`realnvp.History`, with
    columns ``step`` and ``train_nll`` and optionally ``val_nll`` (NaN where not validated)
    and ``lr``. A star marks the best validation step. If early losses dwarf the rest, the
    y-axis is cut to the bulk of the curve.

    Example:
        >>> rows = [{"step": s, "train_nll": 3 / s, "val_nll": 3.2 / s, "lr": 1e-3}
        ...         for s in range(1, 6)]
        >>> plot_training_curve(rows).get_ylabel()
        'NLL (nats, mean per row)'
    """
    df = _history_frame(history)
    ax = _new_axes(ax, (7, 4.2))
    step, train = df["step"].to_numpy(float), df["train_nll"].to_numpy(float)
    handles = _plot_nll(ax, step, train, df)
    if "lr" in df and (df["lr"].to_numpy(float) > 0).any():
        lr_ax = ax.twinx()
        lr = df["lr"].to_numpy(float)
        handles += lr_ax.plot(step, np.where(lr > 0, lr, np.nan), color="0.45", ls=":",
                              lw=1.2, label="learning rate")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2,
              fontsize=8, frameon=False)
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats, mean per row)")
    ax.set_title("Training curve")
    ax.grid(alpha=0.3)
    return ax


def _history_frame(history: Any) -> pd.DataFrame:
    if hasattr(history, "to_frame") and not isinstance(history, pd.DataFrame):
        history = history.to_frame()
    df = history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))
    missing = [c for c in ("step", "train_nll") if c not in df]
    if missing:
        raise ValueError(f"Expected history columns step and train_nll; missing {missing}")
    if df.empty:
        raise ValueError("Expected at least one history record; got none")
    df = df.apply(pd.to_numeric, errors="coerce")
    if "member" in df:  # an ensemble's metrics.csv: its first member's curve
        df = df[df["member"] == df["member"].min()]
    return df.sort_values("step")


def _plot_nll(ax: Axes, step: np.ndarray, train: np.ndarray, df: pd.DataFrame) -> list[Any]:
    handles: list[Any] = []
    if len(train) > 200:
        ax.plot(step, train, color=DATA_COLOR, alpha=0.25, lw=0.7)
        window = max(5, len(train) // 50)
        smooth = pd.Series(train).rolling(window, center=True, min_periods=1).mean()
        handles += ax.plot(step, smooth, color=DATA_COLOR, lw=1.6, label="train NLL (smoothed)")
    else:
        handles += ax.plot(step, train, color=DATA_COLOR, lw=1.6, label="train NLL",
                           marker="o" if len(train) <= 30 else None, ms=3)
    values = [train]
    if "val_nll" in df and df["val_nll"].notna().any():
        val = df.dropna(subset=["val_nll"])
        vs, vv = val["step"].to_numpy(float), val["val_nll"].to_numpy(float)
        handles += ax.plot(vs, vv, color=LABEL_COLORS[1], lw=1.4, marker="o", ms=3,
                           label="validation NLL")
        best = int(np.argmin(vv))
        handles.append(ax.scatter(vs[best], vv[best], marker="*", s=180, color="#f2b701",
                                  edgecolors="0.2", zorder=5,
                                  label=f"best validation {vv[best]:.4g} (step {vs[best]:.0f})"))
        values.append(vv)
    _robust_ylim(ax, np.concatenate(values))
    return handles


def _robust_ylim(ax: Axes, values: np.ndarray) -> None:
    values = values[np.isfinite(values)]
    if values.size < 5:
        return
    lo, hi, top = values.min(), np.quantile(values, 0.9), values.max()
    if top - lo > 4 * (hi - lo) > 0:
        pad = 0.15 * (hi - lo)
        ax.set_ylim(lo - pad, hi + 3 * pad)


@dataclass(frozen=True)
class Snapshot:
    """One frame of training: the step, ``log p`` on a fixed grid, and fixed-``z`` samples.

    ``log_prob`` has shape ``(resolution, resolution)`` with rows following y;
    ``samples`` has shape ``(n_samples, 2)``.
    """

    step: int
    log_prob: np.ndarray
    samples: np.ndarray


class TrainingSnapshots:
    """Records the density and samples of a 2-D flow during training, for an animation.

    Call it as ``recorder(step, flow)`` (a :func:`realnvp.fit` callback): it records on the
    1st call and every ``every``-th after, and :meth:`record` records on demand (for the
    final frame). Each frame holds ``log p`` on a fixed grid (bounds fixed from ``data`` at
    construction) and the same latent batch pushed through the current flow, so the
    animation moves smoothly. Evaluation runs in eval and inference mode and restores each
    module's mode. Beyond ``max_frames`` frames, every other one is dropped and ``every``
    doubles, so memory stays bounded however long training runs.

    Example:
        >>> import realnvp
        >>> recorder = TrainingSnapshots(torch.randn(100, 2), every=2, resolution=10,
        ...                              n_samples=20)
        >>> flow = realnvp.RealNVP(dim=2, n_layers=2)
        >>> for step in range(1, 6):
        ...     recorder(step, flow)
        >>> [frame.step for frame in recorder.frames]
        [1, 3, 5]
    """

    def __init__(self, data: Any, every: int = 20, resolution: int = 100,
                 n_samples: int = 1000, bounds: Bounds | None = None, seed: int = 0,
                 max_frames: int = 200) -> None:
        if every < 1 or resolution < 2 or n_samples < 1 or max_frames < 2:
            raise ValueError(
                "Expected every >= 1, resolution >= 2, n_samples >= 1 and max_frames >= 2; "
                f"got {every}, {resolution}, {n_samples} and {max_frames}"
            )
        x = _points(data, 2)
        self.bounds: Bounds = tuple(bounds) if bounds is not None else _bounds(x)  # type: ignore[assignment]
        self.every, self.resolution, self.n_samples = int(every), int(resolution), int(n_samples)
        self.seed, self.max_frames = int(seed), int(max_frames)
        self.data = _subsample(x, None, 1000)[0]
        self.frames: list[Snapshot] = []
        self._calls = 0

    def __len__(self) -> int:
        return len(self.frames)

    def __call__(self, step: int, flow: Flow) -> None:
        if self._calls % self.every == 0:
            self.record(step, flow)
        self._calls += 1

    def record(self, step: int, flow: Flow) -> Snapshot:
        """Evaluate ``flow`` now and store a frame labelled ``step``."""
        _check_flow(flow, two_d=True)
        dtype, device = _dtype_device(flow)
        with _evaluating(flow):
            log_p = _log_density_grid(flow.log_prob, self.bounds, self.resolution, dtype, device)
            samples = _numpy(flow.inverse(_base_samples(flow, self.n_samples, self.seed))[0])
        frame = Snapshot(int(step), log_p.astype(np.float32), samples.astype(np.float32))
        self.frames.append(frame)
        if len(self.frames) > self.max_frames:
            self.frames, self.every = self.frames[::2], self.every * 2
        return frame


def save_training_gif(snapshots: TrainingSnapshots, path: str | Path, fps: int = 8,
                      max_frames: int = 100) -> Path:
    """Write an animated GIF of the density and samples through training; returns the path.

    At most ``max_frames`` evenly spaced frames (first and last kept), each showing the
    step; the last frame is held for 1.5 s. The colour scale is fixed by the final frame.
    Written atomically.
    """
    if fps <= 0 or max_frames < 1:
        raise ValueError(f"Expected fps > 0 and max_frames >= 1; got {fps} and {max_frames}")
    frames = _evenly(snapshots.frames, max_frames)
    if not frames:
        raise ValueError("Expected at least one recorded snapshot; got none "
                         "(pass the TrainingSnapshots as a training callback)")
    render = _animation(snapshots, frames[-1])
    path = Path(path)
    atomic_write_bytes(path, _encode_gif([render(frame) for frame in frames], fps))
    return path


def _evenly(items: Sequence[Snapshot], k: int) -> list[Snapshot]:
    if len(items) <= k:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))]


def _animation(snapshots: TrainingSnapshots, last: Snapshot) -> Callable[[Snapshot], Image.Image]:
    """A figure drawn once; the returned function updates it to a frame and renders it."""
    fig = Figure(figsize=(8.6, 3.3), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    limits = _color_range(last.log_prob)
    image = _density_image(left, last.log_prob, snapshots.bounds, limits)
    _colorbar(left, image, "log p(x)")
    left.set_title("Model log-density", fontsize=10)
    _scatter(right, snapshots.data, BACKGROUND_COLOR, size=2, alpha=0.5)
    points = _scatter(right, last.samples, SAMPLE_COLOR, size=3, alpha=0.8)
    right.set_title("Samples (orange) over data (grey)", fontsize=10)
    for ax in (left, right):
        _view(ax, snapshots.bounds, "$x_1$", "$x_2$")
    title = fig.suptitle("Training: step 0")
    # Blitting: draw the static parts (axes, ticks, colour bar, data) once, then per frame
    # only the heatmap, the samples and the title over a copy of that background.
    for artist in (image, points, title):
        artist.set_animated(True)
    canvas.draw()
    fig.set_layout_engine("none")
    background = canvas.copy_from_bbox(fig.bbox)

    def render(frame: Snapshot) -> Image.Image:
        lo, hi = limits
        image.set_data(np.clip(np.nan_to_num(frame.log_prob, nan=lo, neginf=lo, posinf=hi), lo, hi))
        points.set_offsets(frame.samples)
        title.set_text(f"Training: step {frame.step}")
        canvas.restore_region(background)
        left.draw_artist(image)
        right.draw_artist(points)
        fig.draw_artist(title)
        return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())

    return render


def _encode_gif(images: Sequence[Image.Image], fps: int) -> bytes:
    """One shared palette (from the first, middle and last frames), no dithering."""
    picks = [images[0], images[len(images) // 2], images[-1]]
    palette = Image.fromarray(np.concatenate([np.asarray(im) for im in picks])).quantize(255)
    frames = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    durations = [max(20, round(1000 / fps))] * len(frames)
    durations[-1] = max(durations[-1], 1500)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:],
                   duration=durations, loop=0)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- all at once


def _noted(fig: Figure, note: str | None) -> Figure:
    """``fig`` with a line ``(note)`` under its title, if any note."""
    if note:
        title = fig.get_suptitle()
        fig.suptitle(f"{title}\n({note})" if title else f"({note})")
    return fig


def _save_png(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_all_plots(run_dir: str | Path, flow: Flow | FlowMixture, data: Any, labels: Any = None,
                   history: Any = None, snapshots: TrainingSnapshots | None = None,
                   true_log_prob: LogProb | None = None, n_samples: int = 2000,
                   seed: int = 0) -> dict[str, Path]:
    """Write the standard pictures of a run into ``run_dir``; returns name -> path.

    Names (files ``<name>.png`` unless noted): ``data_vs_samples``, ``density`` and
    ``true_density`` (2-D only; the latter when ``true_log_prob`` is given), ``latent``,
    ``layers`` (at least 2 features), ``training_curve`` (with ``history``) and
    ``training`` (``training.gif``, with recorded ``snapshots``). For more than two
    features the pictures are pair plots of the first few features and the layer view shows
    the first two without grid: density maps and grids are drawn for 2-D data only. Each
    file is written atomically. For a :class:`~realnvp.mixture.FlowMixture` the density
    and samples are the mixture's, the latent and layer views its first member's.
    """
    _check_flow(flow, mixture=True)
    single = as_single_flow(flow)
    member = (f"member 1 of the mixture of {len(flow)} flows"
              if isinstance(flow, FlowMixture) else None)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    x = _points(data, flow.dim)
    lab = _labels(labels, x.shape[0])
    with _evaluating(flow):
        n = min(int(n_samples), x.shape[0])  # as many samples as data: a fair comparison
        samples = _numpy(flow.sample(n, generator=torch.Generator().manual_seed(seed)))
    out: dict[str, Path] = {}
    figures: Mapping[str, Callable[[], Figure]] = {
        "data_vs_samples": lambda: plot_samples(x, samples, lab),
        "density": lambda: plot_density(flow, x, _bounds(x)).figure,
        "true_density": lambda: plot_density(true_log_prob, x, _bounds(x),  # type: ignore[arg-type]
                                             title="True log-density").figure,
        "latent": lambda: _noted(plot_latent(single, x, lab, n_samples, seed), member),
        "layers": lambda: plot_layers(single, x, lab, note=member),
        "training_curve": lambda: plot_training_curve(history).figure,
    }
    wanted = {"density": flow.dim == 2, "true_density": flow.dim == 2 and true_log_prob is not None,
              "layers": flow.dim >= 2, "training_curve": history is not None}
    for name, make in figures.items():
        if wanted.get(name, True):
            out[name] = _save_png(make(), run_dir / f"{name}.png")  # type: ignore[arg-type]
    if snapshots is not None and len(snapshots):
        out["training"] = save_training_gif(snapshots, run_dir / "training.gif")
    return out
