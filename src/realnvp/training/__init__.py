"""Training: configuration, the fit loop, checkpoints."""

from realnvp.training.config import PRESETS, TrainConfig
from realnvp.training.ensemble import fit_ensemble
from realnvp.training.fit import (
    History,
    NonFiniteLossError,
    TrainStep,
    fit,
    make_train_step,
    mean_nll,
    resolve_device,
)

__all__ = ["PRESETS", "History", "NonFiniteLossError", "TrainConfig", "TrainStep", "fit",
           "fit_ensemble", "make_train_step", "mean_nll", "resolve_device"]
