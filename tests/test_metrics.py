"""Known-answer checks of realnvp.metrics: NLL, KL, HDR calibration, two-sample tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import realnvp
from realnvp.metrics import (
    Estimate,
    bits_per_dim,
    energy_distance,
    evaluate_flow,
    evaluate_scores,
    hdr_calibration,
    kl_gap,
    mmd,
    nll,
)

N = 20000


def standard_normal_log_prob(x: np.ndarray | torch.Tensor) -> np.ndarray:
    x = np.asarray(x)
    return -0.5 * (x**2).sum(axis=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def scaled_normal_log_prob(x: np.ndarray, scale: float) -> np.ndarray:
    return standard_normal_log_prob(x / scale) - x.shape[1] * math.log(scale)


# --- nll, bits/dim, Estimate -------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 5], ids=lambda d: f"dim={d}")
def test_nll_of_standard_normal_is_its_entropy(dim: int) -> None:
    x = np.random.default_rng(dim).standard_normal((N, dim))
    estimate = nll(standard_normal_log_prob(x))
    entropy = 0.5 * math.log(2 * math.pi * math.e) * dim
    assert abs(estimate.value - entropy) < 4 * estimate.stderr
    # Var[log p(X)] = d/2 for a standard normal.
    assert estimate.stderr == pytest.approx(math.sqrt(dim / 2 / N), rel=0.05)


def test_bits_per_dim_is_nll_over_dim_ln2() -> None:
    log_prob = np.random.default_rng(0).normal(-3.0, 1.0, size=100)
    per_dim, total = bits_per_dim(log_prob, dim=3), nll(log_prob)
    assert per_dim.value == pytest.approx(total.value / (3 * math.log(2)))
    assert per_dim.stderr == pytest.approx(total.stderr / (3 * math.log(2)))


@pytest.mark.parametrize("dim", [0, -1, 2.5, True], ids=["zero", "negative", "float", "bool"])
def test_bits_per_dim_rejects_bad_dim(dim: object) -> None:
    with pytest.raises(ValueError, match="dim"):
        bits_per_dim([-1.0, -2.0], dim)  # type: ignore[arg-type]


def test_metrics_accept_torch_tensors() -> None:
    values = np.random.default_rng(0).normal(size=50)
    assert nll(torch.as_tensor(values)) == nll(values)
    assert kl_gap(torch.as_tensor(values), values - 1.0).value == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("estimate", "text"),
    [
        (Estimate(1.23449, 0.005), "1.234 ± 0.005"),
        (Estimate(1234.4, 5.0), "1234 ± 5"),
        (Estimate(0.5, 0.0), "0.500 ± 0.000"),
        (Estimate(2.0, math.nan), "2.000 ± nan"),
    ],
    ids=["thousandths", "units", "zero-stderr", "nan-stderr"],
)
def test_estimate_str(estimate: Estimate, text: str) -> None:
    assert str(estimate) == text


def test_single_value_has_nan_stderr() -> None:
    estimate = nll([-1.5])
    assert estimate.value == 1.5 and math.isnan(estimate.stderr)


@pytest.mark.parametrize(
    ("values", "match"),
    [([], "at least one"), ([[1.0, 2.0]], "1-D"), ([1.0, math.nan], "NaN"), (["a"], "numeric")],
    ids=["empty", "2-D", "nan", "strings"],
)
def test_nll_rejects_bad_input(values: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        nll(values)


def test_nll_keeps_infinite_log_prob() -> None:
    assert nll([-1.0, -math.inf]).value == math.inf


# --- KL gap ------------------------------------------------------------------------------

KL_CASES = {
    "shifted-mean": ([0.0, 0.0], np.eye(2), [0.5, -0.3], np.eye(2)),
    "wider-model": ([0.0, 0.0], np.eye(2), [0.0, 0.0], 2.0 * np.eye(2)),
    "correlated": ([1.0, 0.0], [[1.0, 0.8], [0.8, 1.0]], [0.0, 0.5], [[2.0, 0.0], [0.0, 0.5]]),
}


def gaussian_kl(m0: np.ndarray, s0: np.ndarray, m1: np.ndarray, s1: np.ndarray) -> float:
    """Closed-form KL(N(m0, s0) || N(m1, s1))."""
    m0, s0, m1, s1 = (np.asarray(a, dtype=float) for a in (m0, s0, m1, s1))
    inv1, diff = np.linalg.inv(s1), m1 - m0
    log_det_ratio = np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1]
    return 0.5 * (np.trace(inv1 @ s0) + diff @ inv1 @ diff - len(m0) + log_det_ratio)


@pytest.mark.parametrize("case", list(KL_CASES.values()), ids=list(KL_CASES))
def test_kl_gap_matches_closed_form(case: tuple) -> None:
    m0, s0, m1, s1 = case
    p, q = stats.multivariate_normal(m0, s0), stats.multivariate_normal(m1, s1)
    x = p.rvs(N, random_state=np.random.default_rng(0))
    estimate = kl_gap(p.logpdf(x), q.logpdf(x))
    assert abs(estimate.value - gaussian_kl(m0, s0, m1, s1)) < 4 * estimate.stderr


def test_kl_gap_of_the_truth_is_exactly_zero() -> None:
    log_p = standard_normal_log_prob(np.random.default_rng(0).standard_normal((100, 2)))
    assert kl_gap(log_p, log_p) == Estimate(0.0, 0.0)


def test_kl_gap_rejects_unpaired_arrays() -> None:
    with pytest.raises(ValueError, match="same points; got 3 and 2"):
        kl_gap([-1.0, -2.0, -3.0], [-1.0, -2.0])


# --- HDR calibration ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def normal_points() -> tuple[np.ndarray, np.ndarray]:
    """Test points and independent 'model samples', both from N(0, I_2)."""
    rng = np.random.default_rng(7)
    return rng.standard_normal((N, 2)), rng.standard_normal((N, 2))


def test_hdr_of_the_true_model_is_calibrated(normal_points: tuple) -> None:
    test, samples = normal_points
    result = hdr_calibration(standard_normal_log_prob(test), standard_normal_log_prob(samples))
    np.testing.assert_allclose(result.coverage, result.alphas, atol=0.02)
    assert result.max_deviation < 0.02
    assert len(result.thresholds) == len(result.stderr) == len(result.alphas) == 11


@pytest.mark.parametrize("scale", [1.5, 0.7], ids=["model-too-wide", "model-too-narrow"])
def test_hdr_of_a_misscaled_model_matches_theory(normal_points: tuple, scale: float) -> None:
    # Data N(0, I_2), model N(0, scale^2 I_2): the model's alpha-HDR is a disc holding
    # 1 - (1 - alpha)^(scale^2) of the data.
    test, standard = normal_points
    samples = scale * standard
    result = hdr_calibration(scaled_normal_log_prob(test, scale),
                             scaled_normal_log_prob(samples, scale))
    alphas = np.asarray(result.alphas)
    np.testing.assert_allclose(result.coverage, 1 - (1 - alphas) ** (scale**2), atol=0.02)
    assert result.max_deviation > 0.2


def test_hdr_accepts_custom_levels_and_prints() -> None:
    rng = np.random.default_rng(0)
    result = hdr_calibration(rng.normal(size=100), rng.normal(size=100), alphas=[0.5, 0.9])
    assert result.alphas == (0.5, 0.9)
    assert "0.5: " in str(result) and "max deviation" in str(result)


@pytest.mark.parametrize("alphas", [[0.0], [1.0], [0.5, 1.5], [-0.1], []],
                         ids=["zero", "one", "above-one", "negative", "empty"])
def test_hdr_rejects_levels_outside_unit_interval(alphas: list[float]) -> None:
    with pytest.raises(ValueError, match="alphas"):
        hdr_calibration([0.0, 1.0], [0.0, 1.0], alphas=alphas)


# --- energy distance and MMD -------------------------------------------------------------


def naive_energy(x: np.ndarray, y: np.ndarray) -> float:
    def mean_distance(a: np.ndarray, b: np.ndarray, skip_diagonal: bool) -> float:
        pairs = [np.linalg.norm(a[i] - b[j]) for i in range(len(a)) for j in range(len(b))
                 if not (skip_diagonal and i == j)]
        return float(np.mean(pairs))

    return (2 * mean_distance(x, y, False) - mean_distance(x, x, True)
            - mean_distance(y, y, True))


def naive_mmd(x: np.ndarray, y: np.ndarray, h: float) -> float:
    def mean_kernel(a: np.ndarray, b: np.ndarray, skip_diagonal: bool) -> float:
        pairs = [math.exp(-np.sum((a[i] - b[j]) ** 2) / (2 * h * h))
                 for i in range(len(a)) for j in range(len(b))
                 if not (skip_diagonal and i == j)]
        return float(np.mean(pairs))

    return mean_kernel(x, x, True) + mean_kernel(y, y, True) - 2 * mean_kernel(x, y, False)


def test_energy_distance_matches_naive_double_loop() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(0.5, 2.0, size=(40, 3))
    assert energy_distance(x, y) == pytest.approx(naive_energy(x, y), rel=1e-10)


def test_mmd_matches_naive_double_loop() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(0.5, 2.0, size=(40, 3))
    assert mmd(x, y, bandwidth=1.3) == pytest.approx(naive_mmd(x, y, 1.3), rel=1e-10)
    pooled = np.concatenate([x, y])
    distances = [np.linalg.norm(pooled[i] - pooled[j])
                 for i in range(len(pooled)) for j in range(i + 1, len(pooled))]
    median = float(torch.tensor(distances).median())  # the lower median, as torch takes it
    assert mmd(x, y) == pytest.approx(naive_mmd(x, y, median), rel=1e-10)


TWO_SAMPLE = {"energy": (energy_distance, 0.005), "mmd": (mmd, 0.002)}


@pytest.mark.parametrize("statistic", list(TWO_SAMPLE.values()), ids=list(TWO_SAMPLE))
def test_two_sample_statistic_near_zero_for_one_distribution(statistic: tuple) -> None:
    function, tolerance = statistic
    rng = np.random.default_rng(1)
    same = function(rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)))
    shifted = function(rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)) + [0.5, 0.0])
    assert abs(same) < tolerance
    assert shifted > 10 * tolerance


@pytest.mark.parametrize("statistic", [energy_distance, mmd], ids=["energy", "mmd"])
def test_two_sample_statistic_is_seeded_and_subsamples(statistic) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(500, 2)), rng.normal(size=(300, 2))
    first = statistic(x, y, max_points=100, seed=3)
    assert statistic(torch.as_tensor(x), torch.as_tensor(y), max_points=100, seed=3) == first
    assert statistic(x, y, max_points=100, seed=4) != first
    assert statistic(x, y) == pytest.approx(statistic(x[::-1], y[::-1]), rel=1e-9)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((5, 2)), np.zeros((5, 3)), "same number of features; got 2 and 3"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "at least 2 rows in x"),
        (np.full((5, 2), np.nan), np.zeros((5, 2)), "finite values in x"),
    ],
    ids=["feature-mismatch", "one-row", "nan"],
)
def test_two_sample_statistics_reject_bad_input(x: np.ndarray, y: np.ndarray, match: str) -> None:
    for statistic in (energy_distance, mmd):
        with pytest.raises(ValueError, match=match):
            statistic(x, y)


def test_mmd_rejects_bad_bandwidth() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(np.zeros((3, 1)), np.ones((3, 1)), bandwidth=0.0)


# --- evaluate_scores / evaluate_flow -----------------------------------------------------


def test_evaluate_scores_without_samples_or_truth() -> None:
    x = np.random.default_rng(0).standard_normal((50, 2))
    result = evaluate_scores(x, standard_normal_log_prob(x))
    assert result["kl_gap"] is None and result["hdr"] is None
    assert math.isnan(result["energy_distance"]) and math.isnan(result["mmd"])
    assert result["n_test"] == 50 and result["n_samples"] == 0


def test_evaluate_scores_rejects_misaligned_scores() -> None:
    with pytest.raises(ValueError, match="one log_q_test value per test row"):
        evaluate_scores(np.zeros((5, 2)), np.zeros(4))


@pytest.fixture(scope="module")
def standard_normal_test() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((3000, 2))


def test_untrained_flow_scores_as_the_standard_normal_it_is(standard_normal_test) -> None:
    # An untrained RealNVP starts at the identity map, so its density is exactly N(0, I).
    flow = realnvp.RealNVP(dim=2, n_layers=4, hidden=(16,))
    test = standard_normal_test
    result = evaluate_flow(flow, test, true_log_prob=standard_normal_log_prob, n_samples=5000)
    assert abs(result["kl_gap"].value) < 1e-9
    assert result["nll"].value == pytest.approx(nll(standard_normal_log_prob(test)).value)
    assert result["bits_per_dim"].value == pytest.approx(result["nll"].value / (2 * math.log(2)))
    assert result["hdr"].max_deviation < 0.04
    assert abs(result["energy_distance"]) < 0.01 and abs(result["mmd"]) < 0.005
    assert result["n_test"] == 3000 and result["n_samples"] == 5000


def test_evaluate_flow_is_reproducible_and_restores_mode(standard_normal_test) -> None:
    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
    test = standard_normal_test[:300]
    flow.train()
    first = evaluate_flow(flow, test, n_samples=300, seed=5)
    assert flow.training
    flow.eval()
    second = evaluate_flow(flow, torch.as_tensor(test), n_samples=300, seed=5)
    assert not flow.training
    assert first == second
    assert evaluate_flow(flow, test, n_samples=300, seed=6) != first


def test_evaluate_flow_accepts_true_log_prob_values(standard_normal_test) -> None:
    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
    test = standard_normal_test[:300]
    by_values = evaluate_flow(flow, test, standard_normal_log_prob(test), n_samples=200)
    by_callable = evaluate_flow(flow, test, standard_normal_log_prob, n_samples=200)
    assert by_values["kl_gap"] == by_callable["kl_gap"]


@pytest.mark.parametrize(
    ("test", "n_samples", "match"),
    [(np.zeros((4, 3)), 100, "2 features; got 3"), (np.zeros((4, 2)), 1, "n_samples")],
    ids=["wrong-features", "too-few-samples"],
)
def test_evaluate_flow_rejects_bad_input(test: np.ndarray, n_samples: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_flow(realnvp.RealNVP(dim=2, n_layers=2), test, n_samples=n_samples)


def test_two_sample_distances_count_every_feature_whatever_its_units() -> None:
    """A column in thousands must not decide the distances alone."""
    rng = np.random.default_rng(3)
    test = rng.normal(size=(800, 2))
    good, bad = rng.normal(size=(800, 2)), rng.normal(size=(800, 2)) * [1.0, 2.0]
    units = np.array([1e4, 1.0])  # the mismatched column is the small one
    scores = {}
    for name, samples in {"good": good, "bad": bad}.items():
        for scaled in (False, True):
            k = units if scaled else 1.0
            result = evaluate_scores(test * k, np.zeros(800), samples=samples * k)
            scores[name, scaled] = (result["energy_distance"], result["mmd"])
    for scaled in (False, True):
        assert scores["bad", scaled][0] > scores["good", scaled][0] + 0.05
        assert scores["bad", scaled][1] > scores["good", scaled][1] + 0.01
    assert np.allclose(scores["bad", True], scores["bad", False], rtol=0.05)
