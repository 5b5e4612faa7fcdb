"""Training an ensemble: every member of a :class:`~realnvp.FlowMixture` fitted on the same rows."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from realnvp._validation import as_float_tensor
from realnvp.mixture import FlowMixture
from realnvp.training.checkpoint import CHECKPOINT_FILE
from realnvp.training.fit import (
    Callback,
    History,
    _DeferredInterrupt,
    fit,
    resolve_device,
    split,
)

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
    workers: int | None = None,
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
    rerun). Other keyword arguments go to :func:`~realnvp.fit` unchanged.

    On the CPU, ``workers`` members train at once, each on one thread (default: all ``K``,
    the operating system sharing the cores among them): one small flow's step does not keep
    several cores busy, whole members do. With ``workers`` > 1 each member trains on one
    thread, so its result does not depend on how many run at once; ``workers=1`` trains
    them one after the other with torch's threads, as on an accelerator. A Ctrl-C stops
    every member after its current step, with its checkpoint saved. ``progress`` shows
    member 0's progress bar (on a terminal by default).

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
    device = resolve_device(kwargs.get("device", "cpu"))
    n = len(mixture)
    if workers is None:
        workers = n if device.type == "cpu" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"Expected workers >= 1; got {workers!r}")
    workers = min(workers, n) if device.type == "cpu" else 1
    stop = threading.Event()

    def member(k: int) -> History:
        if stop.is_set():  # stopped before this member began: nothing to save
            raise KeyboardInterrupt
        folder = None if checkpoint_dir is None else Path(checkpoint_dir) / MEMBERS_FOLDER / str(k)
        return fit(
            mixture.members[k], train, val_data=val, seed=seed + k,
            callbacks=callbacks if k == 0 else (), checkpoint_dir=folder,
            resume=resume and folder is not None and (folder / CHECKPOINT_FILE).is_file(),
            progress=progress if k == 0 or workers == 1 else False, stop_event=stop, **kwargs)

    if progress or (progress is None and sys.stderr.isatty()):
        at_once = f", {workers} at a time on one thread each" if workers > 1 else ""
        print(f"training {n} flows (seeds {seed}..{seed + n - 1}){at_once}", file=sys.stderr)
    if workers == 1:
        return [member(k) for k in range(n)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _DeferredInterrupt(stop), ThreadPoolExecutor(workers, "realnvp-member") as pool:
            futures = [pool.submit(member, k) for k in range(n)]
            for future in futures:  # a member that fails stops the others after their step
                future.add_done_callback(lambda f: f.exception() is not None and stop.set())
            wait(futures)
    finally:
        torch.set_num_threads(threads)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:  # the failure itself, rather than the interruptions it caused
        raise next((e for e in errors if not isinstance(e, KeyboardInterrupt)), errors[0])
    return [f.result() for f in futures]
