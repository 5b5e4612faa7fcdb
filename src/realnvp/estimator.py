"""A scikit-learn estimator over RealNVP: fit, score, sample and flag anomalies."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, DensityMixin, OutlierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from realnvp.flow import Flow, RealNVP
from realnvp.io import from_bytes, load_with_extra, to_bytes
from realnvp.training import History, fit

__all__ = ["AUTO_QUANTILE", "DEFAULT_SCALE_BOUND", "RealNVPDensity"]

AUTO_QUANTILE = 0.01
"""``contamination="auto"`` flags rows below this quantile of the held-out log-densities."""

DEFAULT_SCALE_BOUND = 2.0
"""The log-scale bound of the estimator's affine couplings unless ``flow_kwargs`` sets one."""

_COUPLINGS = ("affine", "additive", "spline")
_RESERVED = ("dim", "n_layers", "hidden", "coupling", "seed", "context_features")
_CHUNK = 65536
_SEED_LIMIT = np.iinfo(np.int32).max


class RealNVPDensity(OutlierMixin, DensityMixin, BaseEstimator):
    r"""RealNVP density estimator and outlier detector with the scikit-learn API.

    Fits :func:`realnvp.RealNVP` by maximum likelihood with :func:`realnvp.fit` (mean NLL,
    Adam, a held-out validation split, early stopping, best weights restored), then scores
    rows by their exact log-density :math:`\log p(x)` in the data's units. A thin layer over
    the library: ``flow_`` is an ordinary :class:`realnvp.Flow`. Low density means anomalous,
    with the conventions of :class:`~sklearn.ensemble.IsolationForest`:
    ``decision_function(X) = score_samples(X) - offset_`` and ``predict`` gives +1 (inlier)
    or -1 (outlier). Training runs in float32 on ``device``; the fitted flow is kept on the
    CPU in float64, so how rows are batched (or whether a conditioner is read from its piece
    tables) moves scores only by float64 rounding, about 1e-15 relative.

    Args:
        n_layers: coupling layers.
        hidden: hidden sizes of each coupling's network.
        coupling: ``"affine"`` (RealNVP), ``"additive"`` (NICE) or ``"spline"``.
        steps: optimisation steps (an upper bound with early stopping). ``"auto"`` takes
            20 epochs of the training rows, at least 1,000 and at most 10,000 steps.
            The defaults are ``realnvp train``'s measured recipe (32 couplings of 32-32,
            log-scales bounded by 2 unless ``flow_kwargs`` says otherwise, 4500 steps, lr
            5e-3, gradients clipped at 3; ``benchmarks/README.md``).
        batch_size: rows per step (capped at the number of training rows).
        lr: peak learning rate of Adam (linear warm-up, then cosine decay).
        weight_decay: Adam weight decay; ``"auto"`` is 3 / (training rows) up to 5000
            training rows and 0 above (see :func:`realnvp.training.fit.resolve_weight_decay`).
        clip_grad: clip the gradient norm to this value (0: no clipping).
        val_fraction: fraction of the rows held out for validation, early stopping and the
            ``"auto"`` threshold; no rows are held out below 10 rows or when 0.
        patience: stop after this many validations without improvement (one validation per
            ``steps // 10`` steps, at most 100); 0 (default) trains all ``steps``. The
            weights with the best validation NLL are kept.
        contamination: how the outlier threshold ``offset_`` is set.
            ``"auto"`` (default): the 1st percentile (:data:`AUTO_QUANTILE`) of the
            log-densities of the held-out validation rows, so about 1% of new rows from the
            training distribution are flagged: a false-alarm rate that the flow's fit to its
            own training rows does not bias. This is the threshold of
            ``realnvp score --contamination 0.01``. Without held-out rows, all rows are used.
            It is only as precise as the held-out rows are many: with 20 of them (200 rows
            and the default 10%) expect anywhere from 0 to 20% false alarms; on small data
            raise ``val_fraction`` or choose the threshold yourself.
            A float in (0, 0.5]: scikit-learn's meaning, the proportion of outliers in the
            rows given to ``fit``; ``offset_`` is that quantile of their ``score_samples``,
            so exactly that fraction of them is flagged (barring ties).
        flow_kwargs: further arguments of :func:`realnvp.RealNVP` (``permutation``,
            ``activation``, ``actnorm``, ``scale_bound``, ...).
        device: where to train: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
        random_state: seeds the split, the initial weights and the batches; an int gives
            the same model on every run (on the CPU).
        verbose: show a progress bar while training.

    Attributes:
        flow_: the fitted :class:`realnvp.Flow` (CPU, float64, eval mode); a
            :class:`realnvp.FlowMixture` when :meth:`load` opens an ensemble run.
        offset_: threshold on ``score_samples``; rows below it are outliers.
        n_features_in_: number of features seen in ``fit``.
        feature_names_in_: column names, when ``fit`` was given a DataFrame of string names.
        history_: a DataFrame with one row per validation (step, train_nll, val_nll, lr,
            seconds).
        n_iter_: optimisation steps run (fewer than ``steps`` after early stopping).

    Save with ``realnvp.save(estimator, path)`` and reopen with :meth:`load`, which also
    opens a run folder written by ``realnvp train``.

    Example:
        >>> import numpy as np
        >>> from realnvp import RealNVPDensity
        >>> X = np.random.default_rng(0).normal(size=(300, 2))
        >>> est = RealNVPDensity(n_layers=2, hidden=(16,), steps=100, random_state=0).fit(X)
        >>> est.score_samples(X[:4]).shape
        (4,)
        >>> est.predict([[0.0, 0.0], [6.0, -6.0]])
        array([ 1, -1])
        >>> est.sample(5, random_state=0).shape
        (5, 2)
    """

    def __init__(
        self,
        n_layers: int = 32,
        hidden: Sequence[int] = (32, 32),
        coupling: str = "affine",
        steps: int | str = 4500,
        batch_size: int = 512,
        lr: float = 5e-3,
        weight_decay: float | str = "auto",
        clip_grad: float = 3.0,
        val_fraction: float = 0.1,
        patience: int = 0,
        contamination: float | str = "auto",
        flow_kwargs: dict[str, Any] | None = None,
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
    ) -> None:
        self.n_layers = n_layers
        self.hidden = hidden
        self.coupling = coupling
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.clip_grad = clip_grad
        self.val_fraction = val_fraction
        self.patience = patience
        self.contamination = contamination
        self.flow_kwargs = flow_kwargs
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------------------- fitting

    def fit(self, X: Any, y: Any = None) -> RealNVPDensity:
        """Train a flow on the rows of ``X`` (``y`` is ignored); returns ``self``."""
        self._check_params()
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        seed = int(check_random_state(self.random_state).randint(_SEED_LIMIT))
        train, val = _split(X, float(self.val_fraction), seed)
        flow = self._build_flow(X.shape[1], seed)
        history = self._train(flow, train, val, seed)
        self.flow_ = flow.to(device="cpu", dtype=torch.float64).eval()
        self.history_ = history.to_frame()
        self.n_iter_ = int(history.records[-1]["step"]) if history.records else 0
        self.offset_ = self._threshold(X, val)
        return self

    def _train(self, flow: Flow, train: np.ndarray, val: np.ndarray | None, seed: int) -> History:
        steps = int(self.steps) if self.steps != "auto" else \
            _auto_steps(train.shape[0], int(self.batch_size))
        names = getattr(self, "feature_names_in_", None)
        return fit(
            flow, train, val_data=val, steps=steps, batch_size=int(self.batch_size),
            lr=float(self.lr), weight_decay=self.weight_decay, warmup=min(100, steps // 10),
            clip_grad=float(self.clip_grad), eval_every=max(1, min(100, steps // 10)),
            patience=int(self.patience) if val is not None else 0, seed=seed,
            device=self.device, progress=bool(self.verbose),
            columns=None if names is None else [str(c) for c in names],
        )

    def _threshold(self, X: np.ndarray, val: np.ndarray | None) -> float:
        """``offset_``: see ``contamination`` in the class docstring."""
        if self.contamination == "auto":
            reference = self._log_prob(val if val is not None else X)
            return float(np.quantile(reference, AUTO_QUANTILE))
        return float(np.percentile(self._log_prob(X), 100 * self.contamination))

    def _build_flow(self, dim: int, seed: int) -> Flow:
        """The untrained flow, its initial weights drawn from ``seed`` (global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            kwargs = {"scale_bound": DEFAULT_SCALE_BOUND, **(self.flow_kwargs or {})}
            flow = RealNVP(dim, n_layers=int(self.n_layers), hidden=tuple(self.hidden),
                           coupling=self.coupling, seed=seed, **kwargs)
        return flow.to(torch.float32)

    def _check_params(self) -> None:
        _check_int("n_layers", self.n_layers, 1)
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, Sequence) or \
                not all(isinstance(h, Integral) and h >= 1 for h in self.hidden):
            raise ValueError(f"Expected hidden to be a tuple of positive ints; got {self.hidden!r}")
        if self.coupling not in _COUPLINGS:
            raise ValueError(f"Expected coupling in {list(_COUPLINGS)}; got {self.coupling!r}")
        if self.steps != "auto":
            _check_int("steps", self.steps, 1, "'auto' or ")
        _check_int("batch_size", self.batch_size, 1)
        if not _is_real(self.lr) or not self.lr > 0:
            raise ValueError(f"Expected lr > 0; got {self.lr!r}")
        if self.weight_decay != "auto" and not (
            _is_real(self.weight_decay) and 0 <= self.weight_decay < math.inf
        ):
            raise ValueError(f"Expected weight_decay 'auto' or >= 0; got {self.weight_decay!r}")
        if not _is_real(self.clip_grad) or not 0 <= self.clip_grad < math.inf:
            raise ValueError(f"Expected clip_grad >= 0; got {self.clip_grad!r}")
        if not _is_real(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise ValueError(f"Expected val_fraction in [0, 1); got {self.val_fraction!r}")
        _check_int("patience", self.patience, 0)
        if self.contamination != "auto" and not (
            _is_real(self.contamination) and 0 < self.contamination <= 0.5
        ):
            raise ValueError(
                f"Expected contamination 'auto' or a float in (0, 0.5]; got {self.contamination!r}"
            )
        if self.flow_kwargs is not None:
            if not isinstance(self.flow_kwargs, dict):
                raise ValueError(f"Expected flow_kwargs to be a dict; got {self.flow_kwargs!r}")
            clash = sorted(set(self.flow_kwargs) & set(_RESERVED))
            if clash:
                raise ValueError(f"Expected flow_kwargs without {clash} (set by the estimator)")

    # ----------------------------------------------------------------------------- scoring

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of each row of ``X`` in the data's units, shape ``(n_samples,)``."""
        check_is_fitted(self)
        return self._log_prob(validate_data(self, X, reset=False, dtype=np.float64))

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood of the rows of ``X`` (higher is better; ``y`` is ignored)."""
        return float(np.mean(self.score_samples(X)))

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers, positive for inliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers (``decision_function(X) < 0``)."""
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """Draw ``n_samples`` rows from the fitted density, shape ``(n_samples, n_features)``."""
        check_is_fitted(self)
        seed = int(check_random_state(random_state).randint(_SEED_LIMIT))
        generator = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            return self.flow_.sample(n_samples, generator=generator).numpy()

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape[0], dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, X.shape[0], _CHUNK):
                rows = torch.tensor(X[start : start + _CHUNK], dtype=torch.float64)
                out[start : start + _CHUNK] = self.flow_.log_prob(rows).numpy()
        return out

    # ----------------------------------------------------------------------------- saving

    def __getstate__(self) -> dict[str, Any]:
        """Pickle ``flow_`` as safetensors bytes (rebuilt from its config, like :meth:`load`)."""
        state = dict(super().__getstate__())
        if isinstance(state.get("flow_"), Flow):
            state["flow_"] = to_bytes(state["flow_"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("flow_"), bytes):
            state = {**state, "flow_": from_bytes(state["flow_"], "pickled RealNVPDensity")[0]}
        super().__setstate__(state)

    def _realnvp_extra(self) -> dict[str, Any]:
        """What :func:`realnvp.save` stores beside ``flow_`` so :meth:`load` can rebuild this."""
        check_is_fitted(self)
        params = self.get_params()
        if not isinstance(params["random_state"], (Integral, type(None))):
            params["random_state"] = None  # a RandomState instance is not JSON
        names = getattr(self, "feature_names_in_", None)
        return {"estimator": {
            "class": type(self).__name__, "params": _jsonable(params), "offset_": self.offset_,
            "n_iter_": self.n_iter_, "history_": self.history_.to_dict(orient="list"),
            "feature_names_in_": None if names is None else [str(c) for c in names],
        }}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RealNVPDensity:
        """Reopen a fitted estimator saved by ``realnvp.save(estimator, path)``.

        Also opens any realnvp model file or run folder (``realnvp train``): the parameters
        come from the flow's config (and the run's ``config.json``), the feature names from
        its ``columns``, ``offset_`` from the held-out scores ``val_log_prob.npy`` at the
        ``contamination`` quantile (1% for ``"auto"``) and ``history_`` from ``metrics.csv``.
        A bare model file has no held-out scores: ``offset_`` is then that quantile of the
        log-density of 10,000 of the flow's own samples (its 99% highest-density region), a
        rough threshold: a flow's tails are often too light, so it tends to flag more than
        that fraction of new data.

        Example:
            >>> import numpy as np, tempfile, realnvp
            >>> X = np.random.default_rng(0).normal(size=(100, 2))
            >>> est = realnvp.RealNVPDensity(n_layers=2, hidden=(8,), steps=20).fit(X)
            >>> path = realnvp.save(est, tempfile.mkdtemp() + "/model")
            >>> loaded = realnvp.RealNVPDensity.load(path)
            >>> np.array_equal(loaded.score_samples(X), est.score_samples(X))
            True
        """
        flow, extra = load_with_extra(path)
        flow = flow.to(torch.float64).eval()
        saved = extra.get("estimator")
        if isinstance(saved, dict) and saved.get("class") == cls.__name__:
            return cls._from_saved(flow, saved)
        return cls._from_flow(flow, Path(path), extra)

    @classmethod
    def _from_saved(cls, flow: Flow, saved: dict[str, Any]) -> RealNVPDensity:
        known = set(cls._get_param_names())
        params = {k: v for k, v in saved.get("params", {}).items() if k in known}
        if isinstance(params.get("hidden"), list):
            params["hidden"] = tuple(params["hidden"])
        est = cls(**params)
        est._set_fitted(flow, saved.get("feature_names_in_"),
                        pd.DataFrame(saved.get("history_") or History().to_frame()),
                        int(saved.get("n_iter_", 0)))
        est.offset_ = float(saved["offset_"])
        return est

    @classmethod
    def _from_flow(cls, flow: Flow, path: Path, extra: dict[str, Any]) -> RealNVPDensity:
        from realnvp import runs

        kwargs = dict((flow.spec or {}).get("kwargs", {}))
        defaults = {name: p.default for name, p in inspect.signature(RealNVP).parameters.items()}
        defaults["scale_bound"] = DEFAULT_SCALE_BOUND  # what the estimator builds unless told
        params: dict[str, Any] = {"n_layers": kwargs.get("n_layers", defaults["n_layers"]),
                                  "hidden": tuple(kwargs.get("hidden", defaults["hidden"])),
                                  "coupling": kwargs.get("coupling", defaults["coupling"])}
        extra_kwargs = {k: v for k, v in kwargs.items()
                        if k not in _RESERVED and _jsonable(defaults.get(k)) != v}
        params["flow_kwargs"] = extra_kwargs or None
        folder = path if path.is_dir() else None
        record = runs.read_config(folder) if folder and (folder / runs.CONFIG_FILE).is_file() \
            else {}
        config = record.get("config", {})
        for ours, theirs in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"),
                             ("weight_decay", "weight_decay"), ("clip_grad", "clip_grad"),
                             ("val_fraction", "val_fraction"), ("patience", "patience"),
                             ("random_state", "seed"), ("device", "device")):
            if theirs in config:
                params[ours] = config[theirs]
        est = cls(**params)
        columns = record.get("columns", extra.get("columns"))  # a model file alone has them
        names = columns if isinstance(columns, list) and len(columns) == flow.dim and all(
            isinstance(c, str) for c in columns) else None
        history = History().to_frame()
        if folder is not None and (folder / runs.METRICS_FILE).is_file():
            history = pd.read_csv(folder / runs.METRICS_FILE)
        n_iter = int(history["step"].iloc[-1]) if len(history) else 0
        est._set_fitted(flow, names, history, n_iter)
        q = AUTO_QUANTILE if est.contamination == "auto" else float(est.contamination)
        scores_file = folder / "val_log_prob.npy" if folder is not None else None
        if scores_file is not None and scores_file.is_file():
            reference = np.load(scores_file, allow_pickle=False)
        else:
            generator = torch.Generator().manual_seed(0)
            with torch.inference_mode():
                _, reference = flow.sample_and_log_prob(10_000, generator=generator)
            reference = reference.numpy()
        est.offset_ = float(np.quantile(reference, q))
        return est

    def _set_fitted(self, flow: Flow, names: list[str] | None, history: pd.DataFrame,
                    n_iter: int) -> None:
        self.flow_ = flow
        self.n_features_in_ = flow.dim
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        self.history_ = history
        self.n_iter_ = n_iter


def _split(X: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Random train/validation rows, as :func:`realnvp.fit` splits (none below 10 rows)."""
    n = X.shape[0]
    n_val = int(round(n * val_fraction))
    if n < 10 or n_val < 1:
        return np.array(X), None
    order = np.random.default_rng(seed).permutation(n)
    return X[order[n_val:]], X[order[:n_val]]


def _auto_steps(n_train: int, batch_size: int) -> int:
    """20 epochs, at least 1,000 and at most 10,000 steps."""
    return min(10_000, max(1_000, math.ceil(20 * n_train / min(batch_size, n_train))))


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, also: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"Expected {name} to be {also}an int >= {low}; got {value!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
