"""realnvp: exact, fast density estimation with RealNVP normalizing flows.

Example:
    >>> import torch, realnvp
    >>> flow = realnvp.RealNVP(dim=2)
    >>> flow.log_prob(torch.zeros(1, 2)).shape
    torch.Size([1])
"""

import os as _os

# A busy-waiting OpenMP runtime collapses 2-thread torch when another process holds a core
# (measured ~3x slower training here); passive waiting costs nothing when the machine is idle.
# Only a default: set OMP_WAIT_POLICY yourself to override, before importing torch.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from realnvp.flow import ARCHITECTURES, Flow, RealNVP, architecture  # noqa: E402
from realnvp.io import ModelFileError, load, save  # noqa: E402
from realnvp.mixture import FlowMixture  # noqa: E402
from realnvp.training import History, TrainConfig, fit, fit_ensemble  # noqa: E402

# --- RealNVPDensity (estimator.py): imported on first use, because scikit-learn adds seconds
# to ``import realnvp`` (and so to every CLI command) ---


def __getattr__(name: str) -> object:
    if name == "RealNVPDensity":
        from realnvp.estimator import RealNVPDensity

        return RealNVPDensity
    raise AttributeError(f"module 'realnvp' has no attribute {name!r}")


# --- end RealNVPDensity ---

__all__ = [
    "ARCHITECTURES",
    "Flow",
    "FlowMixture",
    "History",
    "ModelFileError",
    "RealNVP",
    "RealNVPDensity",
    "TrainConfig",
    "__version__",
    "architecture",
    "fit",
    "fit_ensemble",
    "load",
    "save",
]
