"""The training loop as a library function: ``fit(flow, data) -> History``."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from realnvp._validation import as_float_tensor
from realnvp.bijections import ActNorm
from realnvp.bijections._blocks import flushing_denormals
from realnvp.flow import Flow
from realnvp.mixture import FlowMixture
from realnvp.training.fast import fast_step_for, split_rows

__all__ = ["AUTO_DECAY_MAX_ROWS", "AUTO_DECAY_ROWS", "SUBNORMAL_EVERY", "VALIDATION_ROWS",
           "History", "NonFiniteLossError", "TrainStep", "fit", "lattice_steps",
           "make_train_step", "mean_nll", "resolve_device", "resolve_weight_decay",
           "validation_rows"]

Callback = Callable[[int, Flow], None]


class NonFiniteLossError(RuntimeError):
    """Training met too many non-finite losses in a row to continue."""


@dataclass
class History:
    """What happened during :func:`fit`: one record per validation, plus the outcome.

    Each record holds ``step``, ``train_nll`` (mean over the steps since the previous
    record), ``val_nll`` (NaN without a validation set), ``lr`` and ``seconds``.
    """

    records: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_val_nll: float = math.inf
    stopped: str = ""
    skipped_steps: list[int] = field(default_factory=list)
    dequantized: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    weight_decay: float = 0.0

    def to_frame(self) -> Any:
        """The records as a pandas DataFrame."""
        import pandas as pd

        columns = ["step", "train_nll", "val_nll", "lr", "seconds"]
        return pd.DataFrame(self.records, columns=columns)

    def state(self) -> dict[str, Any]:
        return {
            "records": self.records, "best_step": self.best_step,
            "best_val_nll": self.best_val_nll, "stopped": self.stopped,
            "skipped_steps": self.skipped_steps, "seconds": self.seconds,
            "dequantized": {str(k): v for k, v in self.dequantized.items()},
            "weight_decay": self.weight_decay,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> History:
        state = dict(state)
        state["dequantized"] = {int(k): float(v) for k, v in state.get("dequantized", {}).items()}
        return cls(**state)


AUTO_DECAY_ROWS = 3.0
"""``weight_decay="auto"`` is this many over the number of training rows..."""

AUTO_DECAY_MAX_ROWS = 5000
"""...up to this many training rows, and 0 above."""


SUBNORMAL_EVERY = 10
""":class:`TrainStep` clears subnormal weights and moments every this many steps."""


def resolve_weight_decay(weight_decay: float | str, n_train: int) -> float:
    r"""The Adam weight decay to train with: a number as it is; for ``"auto"``,
    :data:`AUTO_DECAY_ROWS` / ``n_train`` up to :data:`AUTO_DECAY_MAX_ROWS` training rows
    and 0 above.

    Adam's (coupled) weight decay :math:`\lambda` adds :math:`\frac\lambda2\|\theta\|^2`
    to the mean NLL: a Gaussian prior on the weights with variance :math:`1/(\lambda n)`
    for ``n`` training rows, here with standard deviation 0.58. On a few hundred rows the
    default flow otherwise overfits within 100 steps, and the 30-90 validation rows then
    sometimes pick weights that put next to no density where unseen rows fall: test NLL
    5.85 against 0.61 nats on 300 rows of two moons (and 44,938 against 0.47 on 1000),
    -13.1 against -35.1 on scikit-learn's breast-cancer table
    (``benchmarks/small_data.py``; every figure in ``benchmarks/README.md``). The prior
    also blunts sharp features (the pinwheel's arms: 2.6-2.8 against 3.0-3.1 on 500 rows),
    and with Adam its pull does not vanish on large data (8gaussians: 2.88 against 2.91 on
    10,000 rows), so it stops at 5000 rows.

    Example:
        >>> resolve_weight_decay("auto", 300), resolve_weight_decay("auto", 90000)
        (0.01, 0.0)
    """
    if isinstance(weight_decay, str):
        if weight_decay != "auto":
            raise ValueError(f"Expected weight_decay >= 0 or 'auto'; got {weight_decay!r}")
        n = max(int(n_train), 1)
        return AUTO_DECAY_ROWS / n if n <= AUTO_DECAY_MAX_ROWS else 0.0
    value = float(weight_decay) if not isinstance(weight_decay, bool) else math.nan
    if not 0 <= value < math.inf:
        raise ValueError(f"Expected weight_decay >= 0 or 'auto'; got {weight_decay!r}")
    return value


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device must exist."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"Unknown device {device!r}; expected cpu, cuda, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} requested, but CUDA is not available here")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(f"Device {device!r} requested, but MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Unknown device {device!r}; expected cpu, cuda, mps or auto")
    return dev


def mean_nll(flow: Flow | FlowMixture, x: Tensor, chunk: int = 65536) -> float:
    """Mean negative log-likelihood of the rows of ``x`` (evaluated in chunks, no grad)."""
    total = 0.0
    with torch.inference_mode():
        for start in range(0, x.shape[0], chunk):
            xb = x[start : start + chunk]
            if isinstance(flow, Flow):  # the bijection itself: no input checks per call
                z, log_det = flow.bijection(xb)
                total -= float((flow.base.log_prob(z) + log_det).sum())
            else:
                total -= float(flow.log_prob(xb).sum())
    return total / x.shape[0]


def split(
    data: Tensor, val_fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor | None]:
    """Random train/validation split of the rows (no validation below 10 rows)."""
    n = data.shape[0]
    n_val = int(round(n * val_fraction))
    if n < 10 or n_val < 1:
        return data, None
    order = torch.randperm(n, generator=generator)
    return data[order[n_val:]], data[order[:n_val]]


VALIDATION_ROWS = 20000
"""Validations score at most this many held-out rows (the first ones)."""


def validation_rows(val: Tensor | None, noise: Tensor | None, seed: int) -> Tensor | None:
    """The rows :func:`fit` validates on: the first :data:`VALIDATION_ROWS` of ``val``, with
    dequantisation noise of width ``noise`` per column (rounded columns) drawn once from
    ``seed``, so that every validation scores the same points."""
    if val is None:
        return None
    rows = val[:VALIDATION_ROWS]
    if noise is None:
        return rows
    fixed = torch.rand(rows.shape, generator=torch.Generator().manual_seed(int(seed)),
                       dtype=rows.dtype)
    return rows + (fixed.to(rows.device) - 0.5) * noise.to(rows.device, rows.dtype)


def lattice_steps(x: Tensor, max_unique_fraction: float = 0.25, min_step: float = 0.02
                  ) -> Tensor:
    """Per column: the grid step ``h`` of coarsely rounded values, or 0 for other columns.

    A column counts as rounded when it has at most ``max_unique_fraction`` distinct values
    per row (values repeat), every gap between sorted distinct values is a whole multiple
    of the smallest gap ``h`` (to 1e-3 of ``h``: float32 rounding of decimals), and ``h`` is
    at least ``min_step`` standard deviations, so that a flow could otherwise spike on the
    grid (finer rounding is left alone: it is below what the flow resolves).

    Example:
        >>> lattice_steps(torch.tensor([[0.0, 0.13], [0.5, 2.71], [0.5, 0.5], [1.0, 1.1],
        ...                             [0.0, 0.7], [1.0, 0.9], [0.5, 1.3], [0.0, 1.9]]),
        ...               max_unique_fraction=0.5).tolist()
        [0.5, 0.0]
    """
    out = torch.zeros(x.shape[1], dtype=x.dtype)
    for j in range(x.shape[1]):
        values = torch.unique(x[:, j].detach().cpu())
        if values.numel() < 2 or values.numel() > max_unique_fraction * x.shape[0]:
            continue
        gaps = values.diff()
        h = gaps.min()
        if h < min_step * x[:, j].std():
            continue
        ratio = gaps / h
        if bool(((ratio - ratio.round()).abs() <= 1e-3).all()):
            out[j] = h
    return out


def check_not_constant(x: Tensor, columns: Sequence[str] | None = None) -> None:
    """Refuse constant columns: a density over them is degenerate (a point mass)."""
    if x.shape[0] < 2:
        raise ValueError(f"Expected at least 2 rows to fit a density; got {x.shape[0]} sample")
    spread = x.max(0).values - x.min(0).values
    constant = (spread == 0).nonzero().reshape(-1).tolist()
    if constant:
        j = constant[0]
        name = repr(columns[j]) if columns else str(j)
        raise ValueError(
            f"Column {name} is constant (every value is {float(x[0, j]):g}): its density is a "
            "point mass, which no continuous model can fit; drop the column"
        )


def check_representable(x: Tensor, dtype: torch.dtype,
                        columns: Sequence[str] | None = None) -> Tensor:
    """``x`` cast to ``dtype``; refuse values that the cast turns infinite (1e300 in float32)."""
    y = x.to(dtype)
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        row, j = (int(i) for i in bad.nonzero()[0])
        name = repr(columns[j]) if columns else str(j)
        raise ValueError(
            f"Column {name} holds {float(x[row, j]):g} (row {row}), beyond the range of "
            f"{str(dtype).removeprefix('torch.')} (±{torch.finfo(dtype).max:.3g}); rescale "
            "the column, or train a float64 flow"
        )
    return y


def _lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class _FlatParameters:
    """All trainable parameters as views into one flat buffer, their gradients likewise.

    Adam, gradient clipping and zeroing then run as a few kernels on one tensor instead of
    a Python loop over every weight and bias: per step, that is most of the optimiser's
    cost at the sizes of low-dimensional flows. The module keeps its parameters (now views),
    so ``state_dict``, saving and loading are unchanged.
    """

    def __init__(self, flow: Flow) -> None:
        params = [p for p in flow.parameters() if p.requires_grad]
        dtype, device = params[0].dtype, params[0].device
        total = sum(p.numel() for p in params)
        self.value = torch.nn.Parameter(torch.empty(total, dtype=dtype, device=device))
        self.value.grad = torch.zeros(total, dtype=dtype, device=device)
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                self.value[offset : offset + n].copy_(p.reshape(-1))
                p.data = self.value.data[offset : offset + n].view_as(p)
                p.grad = self.value.grad[offset : offset + n].view_as(p)
                offset += n

    def zero_grad(self) -> None:
        assert self.value.grad is not None
        self.value.grad.zero_()

    def clip(self, max_norm: float) -> Tensor:
        """Scale the gradient to norm ``max_norm`` at most; returns the norm before."""
        assert self.value.grad is not None
        norm = torch.linalg.vector_norm(self.value.grad)
        self.value.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
        return norm


def _make_optimizer(params: _FlatParameters, lr: float, weight_decay: float) -> Any:
    try:
        return torch.optim.Adam([params.value], lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam([params.value], lr=lr, weight_decay=weight_decay, foreach=True)


class TrainStep:
    """One Adam step on the mean negative log-likelihood of a batch: ``step(x) -> (loss, why)``.

    ``why`` is None when the step was taken, else why it was skipped (a non-finite loss or
    gradient; the parameters are then left unchanged). Uses the hand-derived backward pass
    of :mod:`realnvp.training.fast` when the flow allows it, autograd otherwise, and keeps
    all parameters in one flat buffer so Adam, clipping and zeroing are single kernels.

    Example:
        >>> import realnvp
        >>> flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
        >>> step = TrainStep(flow, lr=1e-3)
        >>> loss, why = step(torch.randn(16, 2))
        >>> why is None
        True
    """

    def __init__(self, flow: Flow, lr: float = 2e-3, weight_decay: float = 0.0,
                 clip_grad: float = 10.0) -> None:
        self.flow = flow
        self.flat = _FlatParameters(flow)
        self.optimizer = _make_optimizer(self.flat, lr, weight_decay)
        self.fast = fast_step_for(flow)
        self.clip_grad = clip_grad
        self._steps = 0

    def __call__(self, x: Tensor) -> tuple[Tensor, str | None]:
        # The fast path computes the loss and writes the gradients into the flat buffer.
        loss = self.fast(x) if self.fast is not None else None
        fast = loss is not None
        if loss is None:
            loss = _loss(self.flow, x)
        if not torch.isfinite(loss):
            self.flat.zero_grad()
            return loss.detach(), f"non-finite loss ({float(loss)})"
        if not fast:
            self.flat.zero_grad()
            loss.backward()
        if self.clip_grad > 0:
            norm = self.flat.clip(self.clip_grad)
            if not torch.isfinite(norm):
                self.flat.zero_grad()
                return loss.detach(), "non-finite gradient"
        self.optimizer.step()
        self._steps += 1
        if self._steps % SUBNORMAL_EVERY == 0:
            self.flush_subnormals()
        return loss.detach(), None

    @torch.no_grad()
    def flush_subnormals(self) -> None:
        """Set the weights and Adam moments below float's smallest normal number to zero.

        :func:`flushing_denormals` covers the calling thread and the training workers, but
        not torch's own intra-op threads, which run the optimiser step on large flows when
        training uses several threads. Weight decay would let values decay into the slow
        subnormal range there; clearing them every :data:`SUBNORMAL_EVERY` steps keeps them
        out, whatever thread touched them.
        """
        tensors = [self.flat.value, *(v for v in self.optimizer.state[self.flat.value].values()
                                      if isinstance(v, Tensor) and v.is_floating_point()
                                      and v.shape == self.flat.value.shape)]
        for t in tensors:
            t.masked_fill_(t.abs() < torch.finfo(t.dtype).tiny, 0.0)


def make_train_step(flow: Flow, lr: float = 2e-3, clip_grad: float = 10.0
                    ) -> Callable[[Tensor], Tensor]:
    """``step(x) -> loss``: the optimisation step :func:`fit` runs, for benchmarks and loops."""
    step = TrainStep(flow, lr=lr, clip_grad=clip_grad)
    flow.train()

    def run(x: Tensor) -> Tensor:
        with single_thread_for(x.shape[0], x.device, step.fast is not None):
            return step(x)[0]

    return run


@contextlib.contextmanager
def single_thread_for(batch_size: int, device: torch.device, fast: bool = False
                      ) -> Iterator[None]:
    """One CPU thread for batches of up to 1024 rows, restored afterwards.

    At these sizes each kernel is a few microseconds of work, and splitting it over threads
    costs more than it gains; with a busy-waiting OpenMP runtime and another process on a
    core, two threads were about 3x slower here. Larger batches keep torch's setting, and so
    do batches that the ``fast`` step splits into row parts, one per thread (see
    :func:`realnvp.training.fast.split_rows`).
    """
    threads = torch.get_num_threads()
    single = (device.type == "cpu" and batch_size <= 1024 and threads > 1
              and not (fast and split_rows(batch_size, device)))
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(threads)


class _Batches:
    """Shuffled epochs of row indices from a seeded generator (state can be saved)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self.order = torch.randperm(n, generator=generator)
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos + self.batch_size > self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def fit(
    flow: Flow,
    data: Any,
    *,
    val_data: Any = None,
    steps: int = 3000,
    batch_size: int = 512,
    lr: float = 5e-3,
    weight_decay: float | str = "auto",
    warmup: int = 100,
    min_lr_ratio: float = 0.01,
    clip_grad: float = 10.0,
    val_fraction: float = 0.1,
    eval_every: int = 100,
    patience: int = 0,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    max_bad_steps: int = 20,
    columns: Sequence[str] | None = None,
    dequantize: bool | str = "auto",
    stop_event: threading.Event | None = None,
) -> History:
    r"""Fit ``flow`` to the rows of ``data`` by maximum likelihood; returns the :class:`History`.

    Minimises the mean negative log-likelihood :math:`-\frac1B\sum_i \log p(x_i)` with Adam,
    a linear warm-up then cosine decay of the learning rate, gradient-norm clipping and a
    guard that skips any step whose loss or gradient is not finite (and stops after
    ``max_bad_steps`` in a row). A ``val_fraction`` of the rows (or ``val_data``) is held out;
    the weights with the best validation NLL, the starting ones included, are restored at
    the end, and ``patience``
    validations without improvement stop early. The flow's :class:`Standardize` layer is set
    from the training rows first, so ``log_prob`` stays in the data's units. Subnormal
    floats are flushed to zero while it trains (see :func:`flushing_denormals`), and
    ``weight_decay="auto"`` regularises small data sets (see :func:`resolve_weight_decay`).
    Deterministic for a given ``seed`` and thread count on the CPU; with ``checkpoint_dir``
    a resumable checkpoint is written atomically every ``checkpoint_every`` steps and at
    the end.

    Rounded data: with ``dequantize="auto"`` a column whose values sit on a grid of step
    ``h`` with many repeats (see :func:`lattice_steps`) gets uniform noise on
    ``[-h/2, h/2]`` added to every batch (Theis et al. 2016), so the flow learns a smooth
    density instead of spikes on the grid; ``log_prob`` at a grid point then approximates
    ``P(bin) / h``. ``history.dequantized`` lists those columns; ``False`` turns it off.

    ``stop_event``, set from another thread, ends the run as a first Ctrl-C does: the current
    step finishes, a checkpoint is saved (with ``checkpoint_dir``) and ``KeyboardInterrupt``
    is raised; a first Ctrl-C sets it. (Ctrl-C is caught only when ``fit`` runs in the main
    thread.)

    Example:
        >>> import torch, realnvp
        >>> flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
        >>> history = realnvp.fit(flow, torch.randn(200, 2), steps=20, progress=False)
        >>> len(history.records) > 0
        True
    """
    from realnvp.training import checkpoint as ckpt

    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"Expected steps >= 1; got {steps}")
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1; got {batch_size}")
    dev = resolve_device(device)
    dtype = flow.base._anchor.dtype
    x = check_representable(as_float_tensor(data, flow.dim), dtype, columns)
    generator = torch.Generator().manual_seed(int(seed))
    if val_data is not None:
        val = check_representable(as_float_tensor(val_data, flow.dim, "validation data"),
                                  dtype, columns)
        train = x
    else:
        train, val = split(x, val_fraction, generator)
    check_not_constant(train, columns)
    decay = resolve_weight_decay(weight_decay, train.shape[0])
    steps_h = lattice_steps(train) if dequantize else torch.zeros(flow.dim, dtype=dtype)
    flow.to(dev)
    train, val = train.to(dev), (val.to(dev) if val is not None else None)

    train_step = TrainStep(flow, lr, decay, clip_grad)
    optimizer = train_step.optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(warmup, steps, min_lr_ratio)
    )
    batches = _Batches(train.shape[0], batch_size, generator)
    history = History()
    best_state: dict[str, Tensor] | None = None
    start_step = 0
    if resume and checkpoint_dir is not None:
        restored = ckpt.load_checkpoint(checkpoint_dir, flow, optimizer, scheduler)
        for stale in Path(checkpoint_dir).glob(f".{ckpt.CHECKPOINT_FILE}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a process killed mid-write
        start_step, history, best_state = restored.step, restored.history, restored.best_state
        decay = float(optimizer.param_groups[0]["weight_decay"])  # resumed as it was run
        if history.stopped.startswith("early stopping"):
            steps = start_step  # it stopped for good: nothing is left to run
        else:
            history.stopped = ""
        generator.set_state(restored.generator_state)
        batches.order, batches.pos = restored.batch_order.to(torch.long), restored.batch_pos
    else:
        _initialize(flow, train)
    history.dequantized = {j: float(h) for j, h in enumerate(steps_h.tolist()) if h > 0}
    history.weight_decay = decay
    if checkpoint_dir is not None and not resume:  # resumable from the very first step
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ckpt.save_checkpoint(checkpoint_dir, flow, optimizer, scheduler, generator, batches,
                             0, history, None)
    noise = steps_h.to(dev) if history.dequantized else None
    val_eval = validation_rows(val, noise, seed)

    if start_step == 0 and val_eval is not None:
        # The starting flow (a Gaussian fitted by the standardisation) is a candidate too:
        # on a few dozen rows every later weight may fit the validation rows worse.
        flow.eval()
        start_nll = mean_nll(flow, val_eval)
        if math.isfinite(start_nll):
            history.best_val_nll, history.best_step = start_nll, 0
            best_state = _snapshot(flow)
    bar = _progress_bar(steps, start_step, progress)
    flow.train()
    t0 = time.perf_counter() - history.seconds
    running, count, bad_in_row = 0.0, 0, 0
    step = start_step

    def checkpoint(at: int) -> None:
        if checkpoint_dir is not None:
            ckpt.save_checkpoint(checkpoint_dir, flow, optimizer, scheduler, generator, batches,
                                 at, history, best_state)

    interrupt = _DeferredInterrupt(stop_event)
    try:
        with interrupt, flushing_denormals(), single_thread_for(
                batches.batch_size, dev, train_step.fast is not None):
            for step in range(start_step + 1, steps + 1):
                xb = train.index_select(0, batches.next().to(dev))
                if noise is not None:
                    u = torch.rand(xb.shape, generator=generator, dtype=dtype).to(dev)
                    xb = xb + (u - 0.5) * noise
                loss, problem = train_step(xb)
                scheduler.step()
                if problem is not None:
                    bad_in_row = _skip(history, step, bar, problem, bad_in_row, max_bad_steps)
                else:
                    bad_in_row = 0
                    running = running + loss  # a tensor: no device sync per step
                    count += 1
                    for callback in callbacks:
                        callback(step, flow)
                stop = False
                if step % eval_every == 0 or step == steps:
                    best_state, stop = _evaluate(flow, val_eval, history, step,
                                                 float(running) / max(count, 1),
                                                 scheduler, t0, best_state, patience, bar)
                    running, count = 0.0, 0
                if stop:
                    history.stopped = f"early stopping at step {step}"
                    break
                if step % checkpoint_every == 0:
                    checkpoint(step)
                if bar is not None:
                    bar.update(1)
                if interrupt.requested:  # Ctrl-C or stop_event: finish the step, save, stop
                    history.stopped = f"interrupted at step {step}"
                    history.seconds = time.perf_counter() - t0
                    checkpoint(step)
                    raise KeyboardInterrupt
    finally:
        if bar is not None:
            bar.close()
    history.seconds = time.perf_counter() - t0
    if not history.stopped:
        history.stopped = f"completed {steps} steps"
    if best_state is not None:
        flow.load_state_dict(best_state)
    elif val is None:
        history.best_step, history.best_val_nll = step, math.nan
    checkpoint(step)
    flow.eval()
    return history


class _DeferredInterrupt:
    """Within ``with``: a first Ctrl-C only sets ``event`` (the training loops watching it
    then save a checkpoint at the end of their step and stop); a second one interrupts at
    once. Only in the main thread, where Python delivers signals; elsewhere it installs
    nothing, and :attr:`requested` still reports ``event``, which another thread may set."""

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event if event is not None else threading.Event()
        self._previous: Any = None

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _initialize(flow: Flow, train: Tensor) -> None:
    """Set the standardisation from the training rows and run data-dependent inits."""
    if flow.standardize is not None and not bool(flow.standardize.initialized):
        flow.standardize.fit(train)
    if any(isinstance(m, ActNorm) for m in flow.modules()):
        flow.train()
        with torch.no_grad():
            flow.bijection(train[:4096])


def _snapshot(flow: Flow) -> dict[str, Tensor]:
    """A copy of the flow's weights and buffers (the best ones so far)."""
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _loss(flow: Flow, xb: Tensor) -> Tensor:
    z, log_det = flow.bijection(xb)
    return -(flow.base.log_prob(z) + log_det).mean()


def _skip(history: History, step: int, bar: Any, why: str, bad_in_row: int, limit: int) -> int:
    history.skipped_steps.append(step)
    message = f"step {step}: {why}; step skipped"
    if bar is not None:
        bar.write(message)
    else:
        print(message, file=sys.stderr)
    if bad_in_row + 1 >= limit:
        raise NonFiniteLossError(
            f"step {step}: {limit} non-finite steps in a row; stopping. Try a lower --lr or "
            "check the data for extreme values"
        )
    return bad_in_row + 1


def _evaluate(
    flow: Flow, val: Tensor | None, history: History, step: int, train_nll: float,
    scheduler: Any, t0: float, best_state: dict[str, Tensor] | None, patience: int, bar: Any,
) -> tuple[dict[str, Tensor] | None, bool]:
    stop = False
    val_nll = math.nan
    if val is not None:
        flow.eval()
        val_nll = mean_nll(flow, val)
        flow.train()
        if math.isfinite(val_nll) and val_nll < history.best_val_nll:
            history.best_val_nll, history.best_step = val_nll, step
            best_state = _snapshot(flow)
        elif patience and 1 + sum(r["step"] > history.best_step for r in history.records) >= (
            patience
        ):
            stop = True
    history.records.append({
        "step": step, "train_nll": train_nll, "val_nll": val_nll,
        "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t0,
    })
    if bar is not None:
        bar.set_postfix(nll=f"{train_nll:.3f}", val=f"{val_nll:.3f}", refresh=False)
    return best_state, stop


def _progress_bar(total: int, initial: int, progress: bool | None) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", mininterval=0.5,
                dynamic_ncols=True)


