"""RealNVPDensity: scikit-learn's estimator checks, its conventions, saving and run folders."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import realnvp
from realnvp import RealNVPDensity
from realnvp.estimator import AUTO_QUANTILE


def tiny(**kwargs: object) -> RealNVPDensity:
    """A configuration that fits in tens of milliseconds."""
    params: dict = {"n_layers": 2, "hidden": (8,), "steps": 20, "random_state": 0}
    return RealNVPDensity(**{**params, **kwargs})


def gaussian(n: int = 300, dim: int = 2, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=(n, dim))


@pytest.fixture(scope="module")
def fitted() -> RealNVPDensity:
    columns = ["height", "weight"]
    return tiny(steps=60).fit(pd.DataFrame(gaussian(), columns=columns))


# ------------------------------------------------------------------ scikit-learn's own checks

@parametrize_with_checks([tiny()])
def test_sklearn_estimator_checks(estimator: RealNVPDensity, check) -> None:
    """All of ``check_estimator``, as an outlier detector; none is marked expected-failed."""
    check(estimator)


def test_it_is_an_outlier_detector_and_a_density_estimator() -> None:
    from sklearn.base import is_outlier_detector

    assert is_outlier_detector(RealNVPDensity())
    assert hasattr(RealNVPDensity(), "fit_predict") and hasattr(RealNVPDensity(), "score")


# ------------------------------------------------------------------ fitted-attribute contract

def test_fitted_attributes(fitted: RealNVPDensity) -> None:
    assert isinstance(fitted.flow_, realnvp.Flow) and fitted.flow_.dim == 2
    assert not fitted.flow_.training
    assert next(fitted.flow_.parameters()).dtype == torch.float64
    assert fitted.n_features_in_ == 2
    assert list(fitted.feature_names_in_) == ["height", "weight"]
    assert fitted.feature_names_in_.dtype == object
    assert list(fitted.history_.columns) == ["step", "train_nll", "val_nll", "lr", "seconds"]
    assert len(fitted.history_) > 0 and 1 <= fitted.n_iter_ <= 60
    assert isinstance(fitted.offset_, float) and math.isfinite(fitted.offset_)


def test_params_are_stored_unchanged_and_fit_returns_self() -> None:
    hidden = [8, 8]
    est = RealNVPDensity(hidden=hidden, steps=5, contamination=0.1)
    assert est.hidden is hidden and est.get_params()["contamination"] == 0.1
    assert est.fit(gaussian(50)) is est
    assert est.hidden is hidden and est.steps == 5


def test_numpy_input_has_no_feature_names() -> None:
    assert not hasattr(tiny().fit(gaussian(50)), "feature_names_in_")


@pytest.mark.parametrize("method", ["score_samples", "score", "decision_function", "predict"])
def test_methods_before_fit_raise_not_fitted(method: str) -> None:
    with pytest.raises(NotFittedError):
        getattr(RealNVPDensity(), method)(gaussian(5))


def test_sample_and_save_before_fit_raise_not_fitted(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError):
        RealNVPDensity().sample(3)
    with pytest.raises(NotFittedError):
        realnvp.save(RealNVPDensity(), tmp_path / "model")


# ------------------------------------------------------------------ errors sklearn users know

def test_1d_input_is_refused() -> None:
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array instead"):
        tiny().fit(np.arange(10.0))


def test_wrong_number_of_features_is_refused() -> None:
    est = tiny().fit(gaussian(30))
    message = "X has 3 features, but RealNVPDensity is expecting 2 features as input"
    for method in (est.score_samples, est.predict, est.decision_function, est.score):
        with pytest.raises(ValueError, match=message):
            method(np.zeros((4, 3)))


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_input_is_refused(value: float) -> None:
    X = gaussian(20)
    X[3, 1] = value
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        tiny().fit(X)


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_rows_are_refused(n: int) -> None:
    with pytest.raises(ValueError, match=f"Found array with {n} sample"):
        tiny().fit(np.zeros((n, 2)))


def test_constant_column_is_refused_by_name() -> None:
    X = pd.DataFrame({"a": np.arange(20.0), "b": np.ones(20)})
    with pytest.raises(ValueError, match="Column 'b' is constant"):
        tiny().fit(X)


@pytest.mark.parametrize(
    ("params", "message"),
    [({"contamination": 0.7}, "contamination 'auto' or a float in (0, 0.5]; got 0.7"),
     ({"contamination": "some"}, "contamination 'auto'"),
     ({"coupling": "cubic"}, "coupling in"),
     ({"steps": 0}, "steps to be 'auto' or an int >= 1; got 0"),
     ({"batch_size": 0}, "batch_size to be an int >= 1"),
     ({"hidden": 8}, "hidden to be a tuple of positive ints"),
     ({"lr": -1.0}, "lr > 0"),
     ({"weight_decay": -1.0}, "weight_decay 'auto' or >= 0; got -1.0"),
     ({"clip_grad": -1.0}, "clip_grad >= 0; got -1.0"),
     ({"weight_decay": "heavy"}, "weight_decay 'auto' or >= 0"),
     ({"val_fraction": 1.0}, "val_fraction in [0, 1)"),
     ({"patience": -1}, "patience to be an int >= 0"),
     ({"flow_kwargs": {"dim": 3}}, "flow_kwargs without ['dim']")],
    ids=["contamination-high", "contamination-str", "coupling", "steps", "batch-size",
         "hidden", "lr", "weight-decay", "weight-decay-str", "clip-grad", "val-fraction",
         "patience", "flow-kwargs"],
)
def test_invalid_parameters_are_named_at_fit(params: dict, message: str) -> None:
    est = tiny(**params)  # __init__ never validates, as scikit-learn requires
    with pytest.raises(ValueError, match="Expected " + re.escape(message)):
        est.fit(gaussian(20))


# ------------------------------------------------------------------ scores and outliers

def test_score_samples_are_log_densities_in_data_units() -> None:
    """One feature: a RealNVP with dim=1 is a learned Gaussian; compare with the true density."""
    X = gaussian(2000, dim=1, scale=10.0)
    est = tiny(steps=100).fit(X)
    truth = -0.5 * math.log(2 * math.pi * 100.0) - 0.5  # mean log N(x; 0, 10^2)
    assert est.score(X) == pytest.approx(truth, abs=0.05)
    scores = est.score_samples(X[:5])
    assert scores.dtype == np.float64 and scores.shape == (5,)
    assert est.score(X[:5]) == pytest.approx(scores.mean())


def test_decision_function_and_predict_conventions(fitted: RealNVPDensity) -> None:
    X = pd.DataFrame(gaussian(100, seed=1), columns=["height", "weight"])
    decision = fitted.decision_function(X)
    np.testing.assert_array_equal(decision, fitted.score_samples(X) - fitted.offset_)
    labels = fitted.predict(X)
    assert labels.dtype.kind == "i" and set(np.unique(labels)) <= {-1, 1}
    np.testing.assert_array_equal(labels, np.where(decision >= 0, 1, -1))
    far = pd.DataFrame([[0.0, 0.0], [9.0, -9.0]], columns=["height", "weight"])
    np.testing.assert_array_equal(fitted.predict(far), [1, -1])


@pytest.mark.parametrize("contamination", [0.02, 0.1, 0.25])
def test_float_contamination_flags_that_fraction_of_the_training_rows(
    contamination: float,
) -> None:
    X = gaussian(400)
    labels = tiny(contamination=contamination).fit_predict(X)
    assert np.mean(labels == -1) == pytest.approx(contamination, abs=1 / 400)


def test_auto_contamination_flags_about_one_percent_of_new_rows() -> None:
    """"auto": the 1st percentile of held-out rows, a false-alarm rate on new data."""
    est = tiny(steps=100, val_fraction=0.2).fit(gaussian(2000))
    new = gaussian(20000, seed=5)
    assert AUTO_QUANTILE == 0.01
    assert 0.002 < np.mean(est.predict(new) == -1) < 0.03


def test_auto_contamination_without_held_out_rows_uses_all_rows() -> None:
    X = gaussian(200)
    est = tiny(val_fraction=0.0).fit(X)
    assert est.offset_ == pytest.approx(np.quantile(est.score_samples(X), AUTO_QUANTILE))


def test_tiny_inputs_and_one_feature() -> None:
    for X in (gaussian(3), gaussian(2, dim=1), gaussian(9, dim=3)):
        est = tiny().fit(X)
        assert np.isfinite(est.score_samples(X)).all()
        assert est.sample(4, random_state=0).shape == (4, X.shape[1])


# ------------------------------------------------------------------ determinism and sampling

def test_same_random_state_same_model_and_global_rng_untouched() -> None:
    X = gaussian(200)
    state = torch.random.get_rng_state()
    a = tiny(random_state=3).fit(X).score_samples(X)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = tiny(random_state=3).fit(X).score_samples(X)
    c = tiny(random_state=4).fit(X).score_samples(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample(fitted: RealNVPDensity) -> None:
    x = fitted.sample(50, random_state=1)
    assert x.shape == (50, 2) and x.dtype == np.float64
    np.testing.assert_array_equal(x, fitted.sample(50, random_state=1))
    assert not np.array_equal(x, fitted.sample(50, random_state=2))
    assert fitted.sample().shape == (1, 2)
    with pytest.raises(ValueError, match="n_samples >= 1"):
        fitted.sample(0)


# ------------------------------------------------------------------ composition

def test_in_a_pipeline() -> None:
    X = gaussian(200) * [1.0, 100.0] + [0.0, 1000.0]
    pipe = make_pipeline(StandardScaler(), tiny()).fit(X)
    assert pipe.score_samples(X).shape == (200,)
    assert set(np.unique(pipe.predict(X))) <= {-1, 1}
    assert np.isfinite(pipe.score(X))


def test_grid_search_scores_by_held_out_log_likelihood() -> None:
    search = GridSearchCV(tiny(), {"n_layers": [1, 2]}, cv=2).fit(gaussian(120))
    assert search.best_params_["n_layers"] in (1, 2)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_score_ == max(search.cv_results_["mean_test_score"])
    assert hasattr(search.best_estimator_, "flow_")


# ------------------------------------------------------------------ saving and loading

def test_save_load_round_trip(tmp_path: Path, fitted: RealNVPDensity) -> None:
    path = realnvp.save(fitted, tmp_path / "model")
    loaded = RealNVPDensity.load(path)
    X = pd.DataFrame(gaussian(50, seed=2), columns=["height", "weight"])
    np.testing.assert_array_equal(loaded.score_samples(X), fitted.score_samples(X))
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert loaded.offset_ == fitted.offset_ and loaded.n_iter_ == fitted.n_iter_
    assert loaded.get_params() == fitted.get_params()
    assert list(loaded.feature_names_in_) == ["height", "weight"]
    pd.testing.assert_frame_equal(loaded.history_, fitted.history_)
    np.testing.assert_array_equal(loaded.sample(5, random_state=0),
                                  fitted.sample(5, random_state=0))
    flow = realnvp.load(path)  # the library's load gives the flow itself
    assert isinstance(flow, realnvp.Flow) and flow.dim == 2


def test_pickle_round_trip(fitted: RealNVPDensity) -> None:
    X = gaussian(20, seed=3)
    clone = pickle.loads(pickle.dumps(fitted))
    with pytest.warns(UserWarning, match="feature names"):
        np.testing.assert_array_equal(clone.score_samples(X), fitted.score_samples(X))


def test_load_a_bare_flow_file(tmp_path: Path) -> None:
    flow = realnvp.RealNVP(dim=3, n_layers=2, hidden=(8,), permutation="reverse")
    est = RealNVPDensity.load(realnvp.save(flow, tmp_path / "flow"))
    assert est.n_layers == 2 and est.hidden == (8,)
    # RealNVP's own bound (3) differs from the estimator's default (2): kept, for refits
    assert est.flow_kwargs == {"permutation": "reverse", "scale_bound": 3.0}
    assert est.n_features_in_ == 3 and not hasattr(est, "feature_names_in_")
    assert math.isfinite(est.offset_) and est.n_iter_ == 0
    X = gaussian(30, dim=3)
    expected = flow.double().log_prob(torch.as_tensor(X)).detach().numpy()
    np.testing.assert_allclose(est.score_samples(X), expected, rtol=1e-12)


def test_load_a_run_folder_from_realnvp_train(tmp_path: Path) -> None:
    from realnvp.cli import main

    out = tmp_path / "run"
    main(["train", "--data", "moons", "--n-train", "300", "--steps", "20", "--layers", "2",
          "--hidden", "8", "--no-plots", "--quiet", "--seed", "7", "--out", str(out)])
    est = RealNVPDensity.load(out)
    assert list(est.feature_names_in_) == ["x", "y"]  # config.json's columns
    assert est.n_layers == 2 and est.hidden == (8,) and est.steps == 20
    assert est.random_state == 7
    val_scores = np.load(out / "val_log_prob.npy")
    assert est.offset_ == pytest.approx(np.quantile(val_scores, AUTO_QUANTILE))
    assert est.n_iter_ == 20 and len(est.history_) > 0
    data = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 2)), columns=["x", "y"])
    flow = realnvp.load(out).double()
    expected = flow.log_prob(torch.tensor(data.to_numpy())).detach().numpy()
    np.testing.assert_allclose(est.score_samples(data), expected, rtol=1e-12)
    refit = est.__class__(**est.get_params()).set_params(steps=5).fit(data)
    assert refit.n_features_in_ == 2
    alone = RealNVPDensity.load(out / "model.safetensors")  # the model file's own metadata
    assert list(alone.feature_names_in_) == ["x", "y"]


@pytest.mark.parametrize(("given", "used"), [("auto", 3 / 180), (0.0, 0.0), (1e-3, 1e-3)])
def test_weight_decay_reaches_the_training(
    monkeypatch: pytest.MonkeyPatch, given: object, used: float
) -> None:
    import realnvp.estimator as module

    seen: list[float] = []

    def recording_fit(*args: object, **kwargs: object) -> object:
        history = realnvp.fit(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(history.weight_decay)
        return history

    monkeypatch.setattr(module, "fit", recording_fit)
    tiny(weight_decay=given).fit(gaussian(200))  # 180 training rows
    assert seen == [pytest.approx(used)]


def test_the_defaults_are_the_cli_default_recipe() -> None:
    from realnvp.estimator import DEFAULT_SCALE_BOUND
    from realnvp.training import TrainConfig

    c, est = TrainConfig(), RealNVPDensity()
    assert (est.n_layers, tuple(est.hidden), est.steps, est.batch_size, est.lr,
            est.weight_decay, est.clip_grad, est.patience, est.val_fraction) == (
        c.layers, c.hidden, c.steps, c.batch_size, c.lr, c.weight_decay, c.clip_grad,
        c.patience, c.val_fraction)
    assert c.scale_bound == DEFAULT_SCALE_BOUND and est.coupling == c.coupling
