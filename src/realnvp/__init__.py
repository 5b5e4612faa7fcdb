"""realnvp: exact, fast density estimation with RealNVP normalizing flows.

Example:
    >>> import torch, realnvp
    >>> flow = realnvp.RealNVP(dim=2)
    >>> flow.log_prob(torch.zeros(1, 2)).shape
    torch.Size([1])
"""

__version__ = "0.1.0"

from realnvp.flow import ARCHITECTURES, Flow, RealNVP, architecture  # noqa: E402
from realnvp.io import ModelFileError, load, save  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "Flow",
    "ModelFileError",
    "RealNVP",
    "__version__",
    "architecture",
    "load",
    "save",
]
