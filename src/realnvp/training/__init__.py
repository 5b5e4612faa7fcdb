"""Training: configuration, the fit loop, checkpoints."""

from realnvp.training.config import PRESETS, TrainConfig
from realnvp.training.fit import History, NonFiniteLossError, fit, mean_nll, resolve_device

__all__ = ["PRESETS", "History", "NonFiniteLossError", "TrainConfig", "fit", "mean_nll",
           "resolve_device"]
