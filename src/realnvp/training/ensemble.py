"""Training an ensemble: every member of a :class:`~realnvp.FlowMixture` fitted on the same rows."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from realnvp._validation import as_float_tensor
from realnvp.mixture import FlowMixture
from realnvp.training.checkpoint import CHECKPOINT_FILE
from realnvp.training.fit import Callback, History, fit, split

__all__ = ["MEMBERS_FOLDER", "fit_ensemble"]

MEMBERS_FOLDER = "members"
"""Under ``checkpoint_dir``, member ``k`` keeps its checkpoints in ``members/<k>/``."""


def fit_ensemble(
    mixture: FlowMixture,
    data: Any,
    *,
    val_data: Any = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    **kwargs: Any,
) -> list[History]:
    r"""Fit each member of ``mixture`` with :func:`~realnvp.fit`; returns their histories.

    The rows are split once, as :func:`~realnvp.fit` splits them for one flow with this
    ``seed`` (or ``val_data`` is held out), so every member trains on the same rows and
    keeps the weights that do best on the same validation rows; member ``k`` draws its
    batches with seed ``seed + k`` (its initial weights come from how it was built, e.g.
    ``RealNVP(seed=seed + k)``). The members' errors then differ only through their
    initialisation and batches, and the mixture
    :math:`\frac1K\sum_k p_k` averages them. ``callbacks`` watch member 0. With
    ``checkpoint_dir``, member ``k`` checkpoints to ``checkpoint_dir/members/<k>``, and
    ``resume`` continues each member that has a checkpoint there (a finished one is not
    rerun). With ``progress`` (on a terminal by default) each member's start is announced
    above its progress bar. Other keyword arguments go to :func:`~realnvp.fit` unchanged.

    Example:
        >>> import torch, realnvp
        >>> mix = realnvp.FlowMixture([realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,), seed=k)
        ...                            for k in range(2)])
        >>> histories = realnvp.fit_ensemble(mix, torch.randn(200, 2), steps=20, progress=False)
        >>> len(histories)
        2
    """
    if not isinstance(mixture, FlowMixture):
        raise TypeError(f"Expected a realnvp.FlowMixture; got {type(mixture).__name__}")
    x = as_float_tensor(data, mixture.dim)
    if val_data is None:
        train, val = split(x, val_fraction, torch.Generator().manual_seed(int(seed)))
    else:
        train, val = x, as_float_tensor(val_data, mixture.dim, "validation data")
    histories = []
    for k, member in enumerate(mixture.members):
        folder = None if checkpoint_dir is None else Path(checkpoint_dir) / MEMBERS_FOLDER / str(k)
        if progress or (progress is None and sys.stderr.isatty()):
            print(f"member {k + 1} of {len(mixture)} (seed {seed + k})", file=sys.stderr)
        histories.append(fit(
            member, train, val_data=val, seed=seed + k,
            callbacks=callbacks if k == 0 else (), checkpoint_dir=folder,
            resume=resume and folder is not None and (folder / CHECKPOINT_FILE).is_file(),
            progress=progress, **kwargs))
    return histories
