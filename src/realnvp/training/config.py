"""Training configuration: every field documented, presets for good recipes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRESETS", "TrainConfig"]


def _doc(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class TrainConfig:
    """Everything that defines a training run; each field's ``help`` becomes ``--help`` text.

    Example:
        >>> TrainConfig(steps=100).steps
        100
    """

    # Model
    layers: int = _doc(32, "Number of coupling layers.")
    hidden: tuple[int, ...] = _doc((32, 32), "Hidden sizes of each coupling's network.")
    coupling: str = _doc("affine", "Coupling type: affine (RealNVP), additive (NICE) or spline.")
    activation: str = _doc("relu", "Activation of the coupling networks.")
    scale_bound: float = _doc(2.0, "Bound c on each log-scale: s = c*tanh(s/c).")
    permutation: str = _doc("none", "Between couplings: none, reverse, random or lu.")
    actnorm: bool = _doc(False, "Put an ActNorm layer before each coupling.")
    bins: int = _doc(8, "Bins of each spline (coupling=spline).")
    spline_bound: float = _doc(5.0, "Splines act on [-B, B] in standardised units, identity "
                               "outside (coupling=spline).")
    ensemble: int = _doc(1, "Train this many flows (seeds seed, seed+1, ...) on the same rows "
                         "and keep their equal-weight mixture.")
    # Optimisation
    steps: int = _doc(4500, "Number of optimisation steps (upper bound with early stopping).")
    batch_size: int = _doc(512, "Rows per step.")
    lr: float = _doc(5e-3, "Peak learning rate of Adam.")
    weight_decay: float | str = _doc(
        "auto", "Adam weight decay; auto: 3 / (training rows) up to 5000 training rows, "
        "0 above (a prior on the weights against overfitting small data).")
    warmup: int = _doc(100, "Linear warm-up steps before the cosine decay.")
    min_lr_ratio: float = _doc(0.01, "Final learning rate as a fraction of the peak.")
    clip_grad: float = _doc(3.0, "Clip the gradient norm to this value (0 disables).")
    # Validation
    val_fraction: float = _doc(0.1, "Fraction of the data held out for validation.")
    eval_every: int = _doc(100, "Validate every this many steps.")
    patience: int = _doc(0, "Stop after this many validations without improvement (0: never).")
    # Run
    seed: int = _doc(0, "Random seed (data split, initialisation, batches).")
    device: str = _doc("auto", "Device: cpu, cuda, mps or auto.")
    n_train: int = _doc(100000, "Rows drawn from a toy data set (ignored for files).")

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def fields_help(cls) -> dict[str, str]:
        """Field name -> help text."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build a config from a dict, rejecting unknown keys and wrong types clearly."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; "
                             f"expected some of: {', '.join(known)}")
        clean: dict[str, Any] = {}
        for name, value in values.items():
            default = known[name].default
            clean[name] = _coerce(name, value, default, source)
        return dataclasses.replace(cls(), **clean)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first invalid field."""
        positive = ("layers", "steps", "batch_size", "eval_every", "n_train", "ensemble")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1; got {getattr(self, name)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"Expected positive hidden sizes; got {list(self.hidden)}")
        if not self.lr > 0:
            raise ValueError(f"Expected lr > 0; got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"Expected 0 <= val_fraction < 1; got {self.val_fraction}")
        if self.warmup < 0 or self.patience < 0 or self.clip_grad < 0:
            raise ValueError("Expected warmup, patience and clip_grad >= 0")
        if self.bins < 2:
            raise ValueError(f"Expected bins >= 2; got {self.bins}")
        if not self.spline_bound > 0:
            raise ValueError(f"Expected spline_bound > 0; got {self.spline_bound}")
        decay = self.weight_decay
        if isinstance(decay, str) and decay.strip().lower() == "auto":
            self.weight_decay = "auto"
        elif isinstance(decay, bool) or not isinstance(decay, (int, float)) \
                or not 0 <= decay < math.inf:
            raise ValueError(f"Expected weight_decay >= 0 or auto; got {decay!r}")
        if not self.scale_bound > 0:
            raise ValueError(f"Expected scale_bound > 0; got {self.scale_bound}")
        if self.coupling not in ("affine", "additive", "spline"):
            raise ValueError(f"Expected coupling affine, additive or spline; got {self.coupling!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith(
            "cuda:"
        ):
            raise ValueError(f"Unknown device {self.device!r}; expected cpu, cuda, mps or auto")
        return self


def _coerce(name: str, value: Any, default: Any, source: str) -> Any:
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v for v in value.replace("x", ",").split(",") if v.strip()]
            return tuple(int(v) for v in value)
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if name == "weight_decay":  # a number, or "auto"
            if isinstance(value, str) and value.strip().lower() == "auto":
                return "auto"
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = "a number or auto" if name == "weight_decay" else type(default).__name__
        if isinstance(default, tuple):
            kind = "comma-separated whole numbers such as 64,64"
            value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        raise ValueError(f"{source}: option {name} expects {kind}; got {value!r}") from None


# Recipes chosen by measurement (benchmarks/quality.py; figures in benchmarks/README.md).
# Each preset pins the settings it was measured with, so later changes to the defaults
# leave it as measured.
PRESETS: dict[str, dict[str, Any]] = {
    # 12-14 s of training with the compiled step; moons KL gap 0.014-0.034 over seeds 0-3
    # (mean 0.022; 1500 steps, its earlier length: 0.017-0.045, mean 0.028).
    "fast": {"layers": 8, "hidden": (64, 64), "steps": 2500, "batch_size": 512, "lr": 3e-3,
             "scale_bound": 3.0, "clip_grad": 10.0, "n_train": 20000},
    # 32 narrow couplings (32-32), log-scales bounded by 2, gradient norm clipped at 3, 4500
    # steps: ~30 s of training on one core with the compiled training step; 8gaussians KL
    # gap 0.0248 on average over seeds 0-7 (0.0228-0.0280), against 0.034 for the previous
    # 24 couplings x 3000 steps. Depth is what 8gaussians needs: 8 x 64-64 gave 0.067, 16
    # gave 0.041, 24 x 32-32 0.033 (benchmarks/README.md).
    "default": {},
    # An ensemble of 2 flows of 8 rational-quadratic spline couplings (32 bins, 64-64), each
    # 12000 steps of 2048 rows, on 1M toy rows, validated every 250 steps; the members train
    # at once, one thread each. 8 min 0 s for checkerboard on 2 cores. On all eight toys:
    # HDR deviation <= 0.008 (16 bins left checkerboard at 0.023: sharper edges shrink the
    # blur every member shares), ahead of the KernelDensity on 8/8 and the GaussianMixture
    # on 7/8 (not on 8gaussians, a Gaussian mixture, by 0.0009 nats). benchmarks/README.md,
    # tenth session.
    "accurate": {"coupling": "spline", "layers": 8, "hidden": (64, 64), "bins": 32,
                 "steps": 12000, "batch_size": 2048, "lr": 3e-3, "clip_grad": 10.0,
                 "n_train": 1_000_000, "ensemble": 2, "eval_every": 250},
}
