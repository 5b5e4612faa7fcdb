"""How good is a density: NLL, bits/dim, KL to a known density, HDR calibration, 2-sample tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from realnvp.flow import Flow
    from realnvp.mixture import FlowMixture

__all__ = [
    "DEFAULT_ALPHAS",
    "Estimate",
    "HDRCalibration",
    "bits_per_dim",
    "energy_distance",
    "evaluate_flow",
    "evaluate_scores",
    "hdr_calibration",
    "kl_gap",
    "mmd",
    "nll",
]

DEFAULT_ALPHAS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
"""HDR levels checked by :func:`hdr_calibration` unless told otherwise."""

_CHUNK_ROWS = 8192  # rows per forward pass in evaluate_flow
_MEDIAN_POINTS = 1000  # points used for the MMD median-heuristic bandwidth


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate: ``value`` with its standard error ``stderr``.

    ``str`` rounds both to the first significant digit of the standard error.

    Example:
        >>> print(Estimate(1.23449, 0.005))
        1.234 ± 0.005
        >>> float(Estimate(2.0, 0.1))
        2.0
    """

    value: float
    stderr: float

    def __str__(self) -> str:
        if math.isfinite(self.stderr) and self.stderr > 0:
            decimals = min(max(-math.floor(math.log10(self.stderr)), 0), 12)
        else:
            decimals = 3
        return f"{self.value:.{decimals}f} ± {self.stderr:.{decimals}f}"

    def __float__(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class HDRCalibration:
    r"""Coverage of the model's highest-density regions by test data (see :func:`hdr_calibration`).

    Attributes:
        alphas: the HDR levels :math:`\alpha`.
        coverage: fraction of test points inside each level's region; ideally ``alphas``.
        thresholds: the log-density cut :math:`\tau_\alpha` of each region.
        stderr: binomial standard error of each coverage, :math:`\sqrt{\alpha(1-\alpha)/n}`
            with ``n`` test points (the sampling noise of a calibrated model).
        max_deviation: :math:`\max_\alpha |\text{coverage}_\alpha - \alpha|`.
    """

    alphas: tuple[float, ...]
    coverage: tuple[float, ...]
    thresholds: tuple[float, ...]
    stderr: tuple[float, ...]
    max_deviation: float

    def __str__(self) -> str:
        rows = ", ".join(f"{a:g}: {c:.3f}" for a, c in zip(self.alphas, self.coverage, strict=True))
        return f"HDR coverage (level: coverage) {rows}; max deviation {self.max_deviation:.3f}"


def nll(log_prob: Any) -> Estimate:
    r"""Mean negative log-likelihood in nats, with its standard error.

    .. math:: \widehat{\mathrm{NLL}} = -\frac1n\sum_i \log q(x_i), \qquad
        \mathrm{se} = \frac{\operatorname{sd}_i \log q(x_i)}{\sqrt n}

    Over test points drawn from ``p`` this estimates the cross-entropy
    :math:`H(p, q) = H(p) + \mathrm{KL}(p\,\|\,q)`; lower is better.

    Args:
        log_prob: log-density of each test point, shape ``(n,)`` (numpy or torch).

    Example:
        >>> print(nll([-1.0, -2.0, -3.0]))
        2.0 ± 0.6
    """
    values = _as_vector(log_prob, "log_prob")
    return _mean_estimate(-values)


def bits_per_dim(log_prob: Any, dim: int) -> Estimate:
    r"""NLL per feature in bits: :math:`\mathrm{NLL} / (d \ln 2)`, with its standard error.

    For continuous data this is the differential-entropy analogue of the image-model
    metric: no dequantisation offset (such as :math:`\log_2 256`) is added, so values can be
    negative and depend on the data's units.

    Args:
        log_prob: log-density of each test point in nats, shape ``(n,)``.
        dim: number of features ``d``.

    Example:
        >>> print(bits_per_dim([-2 * math.log(2)] * 4, dim=2))
        1.000 ± 0.000
    """
    if not _is_count(dim, 1):
        raise ValueError(f"Expected dim to be a positive integer; got {dim!r}")
    estimate = nll(log_prob)
    factor = dim * math.log(2)
    return Estimate(estimate.value / factor, estimate.stderr / factor)


def kl_gap(log_p_true: Any, log_q_model: Any) -> Estimate:
    r"""Monte Carlo estimate of :math:`\mathrm{KL}(p\,\|\,q)` in nats, with its standard error.

    .. math:: \widehat{\mathrm{KL}} = \frac1n\sum_i \bigl[\log p(x_i) - \log q(x_i)\bigr],
        \qquad x_i \sim p

    The two arrays are paired (row ``i`` of each scores the same test point), so the
    standard error is that of the differences, much smaller than that of either NLL.

    Args:
        log_p_true: true log-density of each test point, shape ``(n,)``.
        log_q_model: the model's log-density of the same points, shape ``(n,)``.

    Example:
        >>> print(kl_gap([-1.0, -2.0], [-1.5, -2.5]))
        0.500 ± 0.000
    """
    log_p = _as_vector(log_p_true, "log_p_true")
    log_q = _as_vector(log_q_model, "log_q_model")
    if log_p.shape != log_q.shape:
        raise ValueError(
            "Expected log_p_true and log_q_model to score the same points; got "
            f"{log_p.shape[0]} and {log_q.shape[0]} values"
        )
    return _mean_estimate(log_p - log_q)


def hdr_calibration(
    log_q_test: Any, log_q_samples: Any, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> HDRCalibration:
    r"""How much test data falls in the model's highest-density regions, level by level.

    The model's :math:`\alpha`-HDR is :math:`R_\alpha = \{x : \log q(x) \ge \tau_\alpha\}`,
    the smallest region holding probability :math:`\alpha` under ``q``. Its threshold
    :math:`\tau_\alpha` is the :math:`(1-\alpha)` quantile of :math:`\log q` over the model's
    own samples. The coverage is the fraction of test points inside:

    .. math:: c_\alpha = \frac1n \sum_i \mathbf 1[\log q(x_i) \ge \tau_\alpha]

    A calibrated model has :math:`c_\alpha \approx \alpha` at every level. Coverage above
    :math:`\alpha` means the data are more concentrated than the model thinks (the model is
    too wide); below means the model is too narrow or misses mass. Sampling noise is
    about ``stderr`` plus the quantile error from the model samples.

    Args:
        log_q_test: the model's log-density of each test point, shape ``(n,)``.
        log_q_samples: the model's log-density of its own samples, shape ``(m,)``.
        alphas: HDR levels in ``(0, 1)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> log_q = lambda x: -0.5 * x**2  # a standard normal, up to a constant
        >>> result = hdr_calibration(log_q(rng.normal(size=5000)), log_q(rng.normal(size=5000)))
        >>> result.max_deviation < 0.05
        True
    """
    test = _as_vector(log_q_test, "log_q_test")
    samples = _as_vector(log_q_samples, "log_q_samples")
    levels = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if levels.size == 0 or not bool(np.all((levels > 0) & (levels < 1))):
        raise ValueError(f"Expected alphas strictly between 0 and 1; got {list(alphas)}")
    thresholds = np.quantile(samples, 1 - levels)
    coverage = (test[None, :] >= thresholds[:, None]).mean(axis=1)
    stderr = np.sqrt(levels * (1 - levels) / test.size)
    return HDRCalibration(
        alphas=tuple(float(a) for a in levels),
        coverage=tuple(float(c) for c in coverage),
        thresholds=tuple(float(t) for t in thresholds),
        stderr=tuple(float(s) for s in stderr),
        max_deviation=float(np.max(np.abs(coverage - levels))),
    )


def energy_distance(x: Any, y: Any, max_points: int = 2000, seed: int = 0) -> float:
    r"""Székely's energy distance between two samples (unbiased U-statistic).

    .. math:: \mathcal E(P, Q) = 2\,\mathbb E\|X - Y\| - \mathbb E\|X - X'\| - \mathbb E\|Y - Y'\|

    with the within-sample means taken over distinct pairs, so the estimate is unbiased:
    about 0 (and possibly slightly negative) when both samples come from one distribution,
    positive otherwise. This is the squared form :math:`D^2` of Székely & Rizzo (2013),
    not its square root. Distances are Euclidean in the data's units, so features on
    large scales dominate.

    Each sample is first subsampled without replacement to at most ``max_points`` rows
    (seeded by ``seed``), bounding the :math:`O(n^2)` cost.

    Args:
        x: first sample, shape ``(n, d)`` (or ``(n,)`` for one feature); numpy or torch.
        y: second sample, shape ``(m, d)``.
        max_points: subsample size cap per sample (at least 2).
        seed: seed of the subsampling.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> same = energy_distance(rng.normal(size=(500, 2)), rng.normal(size=(500, 2)))
        >>> shifted = energy_distance(rng.normal(size=(500, 2)), rng.normal(1, 1, (500, 2)))
        >>> abs(same) < 0.02 < shifted
        True
    """
    xs, ys = _two_samples(x, y, max_points, seed)
    d_xy = torch.cdist(xs, ys).mean()
    return float(2 * d_xy - _mean_off_diagonal(torch.cdist(xs, xs))
                 - _mean_off_diagonal(torch.cdist(ys, ys)))


def mmd(
    x: Any, y: Any, bandwidth: float | None = None, max_points: int = 2000, seed: int = 0
) -> float:
    r"""Unbiased squared maximum mean discrepancy with a Gaussian kernel.

    .. math:: \mathrm{MMD}^2_u = \frac{\sum_{i\ne j} k(x_i, x_j)}{n(n-1)}
        + \frac{\sum_{i\ne j} k(y_i, y_j)}{m(m-1)} - \frac{2}{nm}\sum_{i,j} k(x_i, y_j),
        \qquad k(a, b) = e^{-\|a - b\|^2 / (2h^2)}

    (Gretton et al. 2012). About 0 (possibly slightly negative) for samples of one
    distribution. ``bandwidth=None`` uses the median heuristic: ``h`` is the median distance
    between distinct points of the pooled subsamples (at most 1000 of them; 1 if all
    coincide). Samples are subsampled to ``max_points`` rows each, seeded by ``seed``.

    Args:
        x: first sample, shape ``(n, d)`` (or ``(n,)``); numpy or torch.
        y: second sample, shape ``(m, d)``.
        bandwidth: kernel width ``h`` in the data's units, or ``None`` for the median heuristic.
        max_points: subsample size cap per sample (at least 2).
        seed: seed of the subsampling.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> same = mmd(rng.normal(size=(500, 2)), rng.normal(size=(500, 2)))
        >>> shifted = mmd(rng.normal(size=(500, 2)), rng.normal(1, 1, (500, 2)))
        >>> abs(same) < 0.01 < shifted
        True
    """
    xs, ys = _two_samples(x, y, max_points, seed)
    if bandwidth is None:
        h = _median_distance(torch.cat([xs, ys]), seed)
    else:
        h = float(bandwidth)
        if not (math.isfinite(h) and h > 0):
            raise ValueError(f"Expected a positive finite bandwidth; got {bandwidth!r}")

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * h * h))

    return float(_mean_off_diagonal(kernel(xs, xs)) + _mean_off_diagonal(kernel(ys, ys))
                 - 2 * kernel(xs, ys).mean())


def evaluate_scores(
    test: Any,
    log_q_test: Any,
    samples: Any = None,
    log_q_samples: Any = None,
    log_p_test: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of this module from precomputed arrays, for any density model.

    Metrics needing something not given are ``None`` (``kl_gap`` without ``log_p_test``,
    ``hdr`` without ``log_q_samples``) or NaN (``energy_distance`` and ``mmd`` without
    ``samples``). The two-sample distances are taken after dividing each column by its
    standard deviation over the test rows, so that every feature counts whatever its units.

    Args:
        test: test points, shape ``(n, d)``.
        log_q_test: the model's log-density of each test point, shape ``(n,)``.
        samples: the model's samples, shape ``(m, d)``.
        log_q_samples: the model's log-density of its samples, shape ``(m,)``.
        log_p_test: true log-density of each test point, shape ``(n,)``.
        seed: seed of the two-sample tests' subsampling.

    Returns:
        A dict with ``nll``, ``bits_per_dim``, ``kl_gap`` (:class:`Estimate` or ``None``),
        ``hdr`` (:class:`HDRCalibration` or ``None``), ``energy_distance``, ``mmd``,
        ``n_test`` and ``n_samples``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 2))
        >>> log_q = lambda x: -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
        >>> print(evaluate_scores(x, log_q(x), log_p_test=log_q(x))["kl_gap"])
        0.000 ± 0.000
    """
    points = _as_points(test, "test")
    log_q = _as_vector(log_q_test, "log_q_test")
    if log_q.shape[0] != points.shape[0]:
        raise ValueError(
            f"Expected one log_q_test value per test row ({points.shape[0]}); got {log_q.shape[0]}"
        )
    result: dict[str, Any] = {
        "nll": nll(log_q),
        "bits_per_dim": bits_per_dim(log_q, points.shape[1]),
        "kl_gap": None if log_p_test is None else kl_gap(log_p_test, log_q),
        "hdr": None if log_q_samples is None else hdr_calibration(log_q, log_q_samples),
        "energy_distance": math.nan,
        "mmd": math.nan,
        "n_test": int(points.shape[0]),
        "n_samples": 0,
    }
    if samples is not None:
        drawn = _as_points(samples, "samples")
        # In units of each column's spread over the test rows: a column in thousands would
        # otherwise decide both distances alone.
        spread = points.std(axis=0)
        spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
        result["energy_distance"] = energy_distance(drawn / spread, points / spread, seed=seed)
        result["mmd"] = mmd(drawn / spread, points / spread, seed=seed)
        result["n_samples"] = int(drawn.shape[0])
    elif log_q_samples is not None:
        result["n_samples"] = int(_as_vector(log_q_samples, "log_q_samples").shape[0])
    return result


def evaluate_flow(
    flow: Flow | FlowMixture,
    test: Any,
    true_log_prob: Callable[[Tensor], Any] | Any = None,
    n_samples: int = 20000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a flow on a test set: every metric of this module, in the data's units.

    The flow is put in eval mode for the evaluation (its mode is restored after), scores
    the test set in chunks under ``torch.inference_mode``, and draws ``n_samples`` samples
    (with their log-density, in one pass) from a ``torch.Generator`` seeded with ``seed``,
    so the result is reproducible. See :func:`evaluate_scores` for the returned dict.

    Args:
        flow: an unconditional :class:`realnvp.Flow` or :class:`realnvp.FlowMixture`.
        test: test points, shape ``(n, flow.dim)``; numpy or torch.
        true_log_prob: the true log-density, if known: a callable given the test set as a
            float64 tensor (numpy/scipy functions accept it too), or an array of its
            values at the test points.
        n_samples: samples drawn from the flow for HDR calibration and the two-sample tests.
        seed: seeds the sampling and the two-sample tests' subsampling.

    Example:
        >>> import realnvp
        >>> flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
        >>> test = np.random.default_rng(0).normal(size=(100, 2))
        >>> result = evaluate_flow(flow, test, n_samples=500)
        >>> sorted(result)
        ['bits_per_dim', 'energy_distance', 'hdr', 'kl_gap', 'mmd', 'n_samples', 'n_test', 'nll']
    """
    if flow.context_features:
        raise ValueError(
            f"Expected an unconditional flow; got one with {flow.context_features} context features"
        )
    points = _as_points(test, "test")
    if points.shape[1] != flow.dim:
        raise ValueError(f"Expected test with {flow.dim} features; got {points.shape[1]}")
    if not _is_count(n_samples, 2):
        raise ValueError(f"Expected an integer n_samples >= 2; got {n_samples!r}")
    was_training = flow.training
    flow.eval()
    try:
        log_q_test = _flow_log_prob(flow, points)
        samples, log_q_samples = _flow_samples(flow, int(n_samples), seed)
    finally:
        flow.train(was_training)
    log_p_test = None
    if true_log_prob is not None:
        log_p_test = true_log_prob
        if callable(true_log_prob):
            log_p_test = true_log_prob(torch.as_tensor(points, dtype=torch.float64))
    return evaluate_scores(points, log_q_test, samples, log_q_samples, log_p_test, seed)


def _flow_log_prob(flow: Flow | FlowMixture, points: np.ndarray) -> np.ndarray:
    parts = []
    with torch.inference_mode():
        for start in range(0, points.shape[0], _CHUNK_ROWS):
            chunk = torch.as_tensor(points[start:start + _CHUNK_ROWS])
            parts.append(flow.log_prob(chunk).to("cpu", torch.float64).numpy())
    return np.concatenate(parts)


def _flow_samples(flow: Flow | FlowMixture, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    xs, log_qs = [], []
    with torch.inference_mode():
        for start in range(0, n, _CHUNK_ROWS):
            x, log_q = flow.sample_and_log_prob(min(_CHUNK_ROWS, n - start), generator=generator)
            xs.append(x.to("cpu", torch.float64).numpy())
            log_qs.append(log_q.to("cpu", torch.float64).numpy())
    return np.concatenate(xs), np.concatenate(log_qs)


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.ascontiguousarray(values, dtype=np.float64)  # torch rejects negative strides


def _as_vector(values: Any, what: str) -> np.ndarray:
    """A non-empty 1-D float64 array without NaN (infinities are kept: they are honest)."""
    try:
        v = _to_numpy(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Expected numeric {what}; got {type(values).__name__}") from error
    if v.ndim != 1:
        raise ValueError(f"Expected {what} to be 1-D (one value per point); got shape {v.shape}")
    if v.size == 0:
        raise ValueError(f"Expected at least one value in {what}; got 0")
    nan = np.isnan(v)
    if nan.any():
        raise ValueError(f"Expected no NaN in {what}; got NaN (first at index {int(nan.argmax())})")
    return v


def _as_points(values: Any, what: str) -> np.ndarray:
    """A 2-D float64 array of finite points; a 1-D input is one feature."""
    try:
        v = _to_numpy(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Expected numeric {what}; got {type(values).__name__}") from error
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"Expected {what} to be 2-D (rows, features); got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        row = int(bad.any(axis=1).argmax())
        raise ValueError(f"Expected finite values in {what}; got NaN or inf (first at row {row})")
    return v


def _is_count(n: Any, minimum: int) -> bool:
    return not isinstance(n, bool) and isinstance(n, (int, np.integer)) and n >= minimum


def _mean_estimate(values: np.ndarray) -> Estimate:
    n = values.size
    if n < 2:
        return Estimate(float(values.mean()), math.nan)
    with np.errstate(invalid="ignore"):
        return Estimate(float(values.mean()), float(values.std(ddof=1) / math.sqrt(n)))


def _two_samples(x: Any, y: Any, max_points: int, seed: int) -> tuple[Tensor, Tensor]:
    if not _is_count(max_points, 2):
        raise ValueError(f"Expected an integer max_points >= 2; got {max_points!r}")
    xs, ys = _as_points(x, "x"), _as_points(y, "y")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(
            "Expected x and y with the same number of features; "
            f"got {xs.shape[1]} and {ys.shape[1]}"
        )
    for name, sample in (("x", xs), ("y", ys)):
        if sample.shape[0] < 2:
            raise ValueError(f"Expected at least 2 rows in {name}; got {sample.shape[0]}")
    rng = np.random.default_rng(seed)
    return (torch.as_tensor(_subsample(xs, max_points, rng)),
            torch.as_tensor(_subsample(ys, max_points, rng)))


def _subsample(points: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    if points.shape[0] <= cap:
        return points
    return points[rng.choice(points.shape[0], size=cap, replace=False)]


def _mean_off_diagonal(matrix: Tensor) -> Tensor:
    n = matrix.shape[0]
    return (matrix.sum() - matrix.diagonal().sum()) / (n * (n - 1))


def _median_distance(points: Tensor, seed: int) -> float:
    if points.shape[0] > _MEDIAN_POINTS:
        rng = np.random.default_rng(seed)
        points = points[torch.as_tensor(rng.choice(points.shape[0], _MEDIAN_POINTS, replace=False))]
    rows, cols = torch.triu_indices(points.shape[0], points.shape[0], offset=1)
    distances = torch.cdist(points, points)[rows, cols]
    median = float(distances.median())
    return median if median > 0 else 1.0
