"""Checks of realnvp.baselines: hyperparameter choice, data-unit densities, the comparison table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

import realnvp
from realnvp import baselines
from realnvp.baselines import (
    Baseline,
    compare,
    fit_gaussian_mixture,
    fit_kernel_density,
)

MEANS = np.array([[-6.0, -6.0], [-6.0, 6.0], [6.0, -6.0], [6.0, 6.0]])
COVARIANCES = np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]],
                        [[1.5, -0.6], [-0.6, 0.8]], [[1.0, 0.0], [0.0, 1.0]]])


def mixture_log_prob(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Exact log-density of the equal-weight mixture of four Gaussians above."""
    x = np.asarray(x)
    parts = [stats.multivariate_normal(m, c).logpdf(x) for m, c in zip(MEANS, COVARIANCES,
                                                                         strict=True)]
    return logsumexp(np.stack(parts), axis=0) - math.log(len(MEANS))


def mixture_sample(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    component = rng.integers(len(MEANS), size=n)
    noise = np.einsum("nij,nj->ni", np.linalg.cholesky(COVARIANCES)[component],
                      rng.standard_normal((n, 2)))
    return MEANS[component] + noise


@pytest.fixture(scope="module")
def mixture_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return mixture_sample(800, 0), mixture_sample(400, 1), mixture_sample(400, 2)


@pytest.fixture(scope="module")
def gmm(mixture_splits) -> Baseline:
    train, val, _ = mixture_splits
    return fit_gaussian_mixture(train, val, seed=0)


@pytest.fixture(scope="module")
def kde(mixture_splits) -> Baseline:
    train, val, _ = mixture_splits
    return fit_kernel_density(train, val, seed=0)


# --- hyperparameter choice ---------------------------------------------------------------


def test_gaussian_mixture_picks_the_true_component_count(gmm: Baseline) -> None:
    assert abs(gmm.n_components - 4) <= 1
    assert gmm.name == f"GaussianMixture(k={gmm.n_components})"
    scores = gmm.validation_log_likelihood
    assert list(scores)[:4] == [1, 2, 3, 4]
    assert max(scores, key=scores.get) == gmm.n_components
    assert gmm.fit_seconds > 0


@pytest.mark.parametrize("model", ["gmm", "kde"])
def test_baseline_is_close_to_the_truth_on_test_data(model: str, request, mixture_splits) -> None:
    baseline = request.getfixturevalue(model)
    test = mixture_splits[2]
    gap = np.mean(mixture_log_prob(test) - baseline.score_samples(test))
    assert gap < (0.05 if model == "gmm" else 0.25)


def test_kde_bandwidth_is_near_scott_on_gaussian_data() -> None:
    rng = np.random.default_rng(3)
    kde = fit_kernel_density(rng.standard_normal((600, 2)), rng.standard_normal((300, 2)))
    scott = 600 ** (-1 / 6)
    assert 0.5 * scott < kde.bandwidth < 2 * scott
    assert len(kde.validation_log_likelihood) == 20


def test_kde_bandwidth_shrinks_on_multimodal_data(kde: Baseline) -> None:
    # Clusters are narrow in standardised units, so a single-Gaussian rule oversmooths.
    assert kde.bandwidth < 0.5 * 800 ** (-1 / 6)
    assert kde.name == f"KernelDensity(bw={kde.bandwidth:.3g})"


def test_kde_warns_when_the_best_bandwidth_is_at_the_grid_edge() -> None:
    rng = np.random.default_rng(4)
    with pytest.warns(UserWarning, match="edge of the grid"):
        kde = fit_kernel_density(rng.standard_normal((200, 2)), rng.standard_normal((100, 2)),
                                 bandwidths=[5.0, 10.0])
    assert kde.bandwidth == 5.0


def test_kde_caps_its_reference_set() -> None:
    rng = np.random.default_rng(5)
    kde = fit_kernel_density(rng.standard_normal((500, 2)), rng.standard_normal((100, 2)),
                             max_reference=100)
    assert kde.reference.shape == (100, 2)


# --- densities in the data's units -------------------------------------------------------

SCALES = np.array([1e-3, 1e2])  # wildly different columns whose Jacobian does not cancel
OFFSET = np.array([5.0, -2000.0])


@pytest.fixture(scope="module")
def scaled_splits() -> tuple[np.ndarray, np.ndarray]:
    """The four-cluster mixture with its columns put on scales 1e-3 and 1e2."""
    data = mixture_sample(900, 6) / 6.0 * SCALES + OFFSET
    return data[:600], data[600:]


@pytest.fixture(scope="module")
def scaled_baselines(scaled_splits) -> dict[str, Baseline]:
    train, val = scaled_splits
    return {"gmm": fit_gaussian_mixture(train, val, max_components=5),
            "kde": fit_kernel_density(train, val)}


@pytest.mark.parametrize("model", ["gmm", "kde"])
def test_density_integrates_to_one_in_data_units(model, scaled_baselines, scaled_splits) -> None:
    train = scaled_splits[0]
    baseline = scaled_baselines[model]
    assert abs(np.log(baseline.scale).sum()) > 1.0  # the correction matters here
    margin = 0.5 * train.std(axis=0)
    low, high = train.min(axis=0) - margin, train.max(axis=0) + margin
    axes = [np.linspace(low[j], high[j], 150) for j in range(2)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
    cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
    mass = np.exp(baseline.score_samples(grid)).sum() * cell
    assert mass == pytest.approx(1.0, abs=0.02)


def test_kde_score_is_the_data_unit_product_kernel(scaled_baselines, scaled_splits) -> None:
    train, val = scaled_splits
    kde = scaled_baselines["kde"]
    widths = kde.bandwidth * train.std(axis=0)  # per-feature kernel width in data units
    np.testing.assert_allclose(kde.bandwidth_data_units, widths)
    x = val[:25]
    per_pair = stats.norm.logpdf(x[:, None, :], loc=train[None, :, :], scale=widths).sum(-1)
    expected = logsumexp(per_pair, axis=1) - math.log(len(train))
    np.testing.assert_allclose(kde.score_samples(x), expected, rtol=1e-9)


def test_kde_scores_far_points_exactly_without_underflow() -> None:
    kde = fit_kernel_density(np.array([[0.0], [1.0]]), np.array([[0.5]]), bandwidths=[0.1])
    far = kde.score_samples(np.array([[100.0]]))[0]
    h = 0.1 * 0.5  # bandwidth in data units (train std is 0.5)
    log_kernels = [-(100.0**2) / (2 * h * h), -(99.0**2) / (2 * h * h)]
    expected = logsumexp(log_kernels) - math.log(2) - 0.5 * math.log(2 * math.pi * h * h)
    assert np.isfinite(far) and far == pytest.approx(expected, rel=1e-12)


def test_kde_scores_in_blocks_like_in_one_go(monkeypatch, kde, mixture_splits) -> None:
    test = mixture_splits[2]
    whole = kde.score_samples(test)
    monkeypatch.setattr(baselines, "_CHUNK_ELEMENTS", 5000)
    np.testing.assert_allclose(kde.score_samples(test), whole, rtol=1e-12)


@pytest.mark.parametrize("model", ["gmm", "kde"])
def test_samples_are_seeded_and_in_data_units(model, scaled_baselines, scaled_splits) -> None:
    train = scaled_splits[0]
    baseline = scaled_baselines[model]
    samples = baseline.sample(4000, seed=1)
    assert samples.shape == (4000, 2)
    np.testing.assert_array_equal(baseline.sample(4000, seed=1), samples)
    assert not np.array_equal(baseline.sample(4000, seed=2), samples)
    assert np.all(np.abs(samples.mean(axis=0) - train.mean(axis=0)) < 0.1 * SCALES)
    np.testing.assert_allclose(samples.std(axis=0), train.std(axis=0), rtol=0.1)


# --- input checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t, v: fit_gaussian_mixture(t, v, covariance_type="bogus"), "covariance_type"),
        (lambda t, v: fit_gaussian_mixture(t, v, max_components=0), "max_components"),
        (lambda t, v: fit_gaussian_mixture(t, v[:, :1]), "Expected 2 features; got 1"),
        (lambda t, v: fit_kernel_density(t, v, bandwidths=[0.5, -1.0]), "bandwidths"),
        (lambda t, v: fit_kernel_density(t, v, max_reference=0), "max_reference"),
        (lambda t, v: fit_kernel_density(t[:1], v), "at least 2 train rows"),
    ],
    ids=["covariance-type", "max-components", "val-features", "bandwidths", "max-reference",
         "one-train-row"],
)
def test_fitters_reject_bad_input(call, match: str) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=match):
        call(rng.standard_normal((50, 2)), rng.standard_normal((20, 2)))


def test_score_samples_checks_features(kde: Baseline) -> None:
    with pytest.raises(ValueError, match="Expected 2 features; got 3"):
        kde.score_samples(np.zeros((4, 3)))


# --- compare -----------------------------------------------------------------------------

BASE_COLUMNS = ["model", "test_nll", "test_nll_stderr", "bits_per_dim", "hdr_max_deviation",
                "energy_distance", "fit_seconds"]


@pytest.fixture(scope="module")
def normal_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    return tuple(rng.standard_normal((n, 2)) for n in (300, 150, 300))


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x.square().sum(-1) - math.log(2 * math.pi)


def test_compare_without_truth(normal_splits) -> None:
    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
    table = compare(flow, *normal_splits, n_samples=500, flow_fit_seconds=1.5, max_components=3)
    assert list(table.columns) == BASE_COLUMNS
    names = table["model"].tolist()
    assert names[0] == "realnvp" and names[1].startswith("GaussianMixture(k=")
    assert names[2].startswith("KernelDensity(bw=") and len(names) == 3
    assert table.loc[0, "fit_seconds"] == 1.5
    assert table[BASE_COLUMNS[1:]].notna().all().all()


def test_compare_with_truth(normal_splits) -> None:
    # The untrained flow is exactly N(0, I), the truth here, so its KL gap is zero.
    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
    table = compare(flow, *normal_splits, true_log_prob=standard_normal_log_prob,
                    n_samples=500, max_components=3).set_index("model")
    assert list(table.columns) == [*BASE_COLUMNS[1:4], "kl_gap", "kl_gap_stderr",
                                   *BASE_COLUMNS[4:]]
    assert table.index[-1] == "truth" and len(table) == 4
    assert table.loc["truth", "kl_gap"] == 0.0
    assert abs(table.loc["realnvp", "kl_gap"]) < 1e-9
    assert math.isnan(table.loc["realnvp", "fit_seconds"])
    assert table.loc["truth", "test_nll"] == pytest.approx(table.loc["realnvp", "test_nll"])
    assert (table.drop(index="truth")["kl_gap"] > -0.1).all()
    assert table["hdr_max_deviation"].notna().all()


def test_compare_rejects_non_callable_truth(normal_splits) -> None:
    with pytest.raises(ValueError, match="callable"):
        compare(realnvp.RealNVP(dim=2), *normal_splits, true_log_prob=np.zeros(300))


def test_evaluate_fits_baselines_with_the_flows_dequantization_noise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """On rounded columns a mixture fitted to the raw values puts spikes on the grid (a
    test NLL far below any density's over whole cells); ``realnvp evaluate`` fits the
    baselines with the noise the flow was trained with."""
    import pandas as pd

    import realnvp.cli

    rng = np.random.default_rng(0)
    counts = np.stack([rng.poisson(0.3, 600), rng.poisson(4.0, 600)], axis=1)
    pd.DataFrame(counts, columns=["rare", "common"]).to_csv(tmp_path / "counts.csv",
                                                            index=False)
    monkeypatch.chdir(tmp_path)
    realnvp.cli.main(["train", "--data", "counts.csv", "--steps", "30", "--layers", "2",
                      "--hidden", "8", "--no-plots", "--quiet", "--out", "run"])
    capsys.readouterr()
    realnvp.cli.main(["evaluate", "run"])
    assert "dequantization noise on 2 rounded column(s)" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "run" / "evaluation.csv").set_index("model")
    mixture = table.loc[[m for m in table.index if m.startswith("GaussianMixture")][0]]
    # Poisson(0.3) x Poisson(4) has entropy of about 2.6 nats: no model spread over whole
    # unit cells scores far below that; the raw-fitted mixture's spikes score below -5.
    assert mixture["test_nll"] > 1.0


def test_gaussian_mixture_fits_on_at_most_max_train_rows() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[-6, -6], [-6, 6], [6, -6], [6, 6], [0, 0], [0, 9]], dtype=float)
    data = centres[rng.integers(0, 6, 2000)] + rng.normal(size=(2000, 2))
    train, val = data[:1500], data[1500:]
    full = baselines.fit_gaussian_mixture(train, val, max_components=8)
    assert full.name == "GaussianMixture(k=6)"
    same = baselines.fit_gaussian_mixture(train, val, max_components=8, max_train=1500)
    assert np.array_equal(same.score_samples(val), full.score_samples(val))
    # 45 rows allow 45 // (5 * 3) = 3 components at most, whatever the data holds
    small = baselines.fit_gaussian_mixture(train, val, max_components=8, max_train=45)
    assert max(small.validation_log_likelihood) == 3
    with pytest.raises(ValueError, match="max_train >= 1"):
        baselines.fit_gaussian_mixture(train, val, max_train=0)
