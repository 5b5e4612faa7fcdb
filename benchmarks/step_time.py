"""realnvp alone, no peers: milliseconds per training step, and scoring with/without row blocks.

Absolute times on a shared machine move by tens of percent between minutes, so compare
versions by alternating them: export an older commit's sources and run the same command
against each in turn, e.g. (from the repository root)::

    git archive <commit> src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/step_time.py --layers 24 --hidden 32
    .venv/bin/python benchmarks/step_time.py --layers 24 --hidden 32

``--score`` times ``log_prob`` of ``--points`` rows instead (for the same alternation
between commits). ``--compare FEATURE`` alternates a feature on and off in one process and
prints the medians: ``blocks`` (scoring and sampling ``--points`` rows in the row blocks of
:mod:`realnvp.bijections._blocks`), ``workspace`` (the same with and without the reused
activation buffers of :func:`realnvp.bijections._kernels.workspace`), ``split`` (training
steps of ``--batch`` rows on ``--threads`` threads, split into row parts or whole:
:mod:`realnvp.training.fast`), ``tables`` (scoring and sampling with the tables of
:mod:`realnvp.bijections._pieces` or without), ``train-buffers`` (training steps of
``--batch`` rows with each row part's activations in buffers kept between steps, or fresh:
:data:`realnvp.training.fast.TRAIN_WORKSPACE`), ``native`` (training steps of ``--batch``
rows through the compiled C step of :mod:`realnvp.training.native`, or the TorchScript
one; with ``--coupling spline``, the C step or autograd). ``--blocks`` is ``--compare
blocks``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import realnvp  # noqa: E402
from realnvp.bijections import _blocks, _kernels, _pieces  # noqa: E402
from realnvp.training import fast, native  # noqa: E402
from realnvp.training.fit import TrainStep  # noqa: E402

SWITCHES = {  # feature -> (module, setting, value that turns the feature off)
    "blocks": (_blocks, "BLOCK_ROWS", 10**12),
    "workspace": (_kernels, "WORKSPACE_BYTES", 0),
    "split": (fast, "SPLIT_ROWS", 10**12),
    "tables": (_pieces, "USE_TABLES", False),
    "train-buffers": (fast, "TRAIN_WORKSPACE", False),
    "native": (native, "USE_NATIVE", False),
}


def best_ms(fn, calls: int, repeats: int = 5) -> float:  # noqa: ANN001
    """Best mean time of ``calls`` calls, over ``repeats`` tries, in milliseconds."""
    for _ in range(max(1, calls // 10)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times) * 1e3


def moved_flow(layers: int, hidden: int, coupling: str = "affine", bins: int = 8
               ) -> realnvp.Flow:
    flow = realnvp.RealNVP(2, n_layers=layers, hidden=(hidden, hidden), coupling=coupling,
                           bins=bins)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the identity start, as after training
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return flow


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--coupling", choices=["affine", "spline"], default="affine",
                   help="spline: rational-quadratic couplings (--compare native: the C step "
                   "against autograd)")
    p.add_argument("--bins", type=int, default=8, help="bins of each spline")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 1 for a TrainStep alone, else torch's)")
    p.add_argument("--blocks", action="store_true", help="same as --compare blocks")
    p.add_argument("--compare", choices=sorted(SWITCHES), help="a feature on and off")
    p.add_argument("--score", action="store_true",
                   help="time log_prob of --points rows instead of a TrainStep")
    p.add_argument("--points", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    flow = moved_flow(args.layers, args.hidden, args.coupling, args.bins)
    feature = "blocks" if args.blocks else args.compare
    if args.threads is None:
        args.threads = 1 if feature is None and not args.score else torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if feature is None and args.score:
        x = torch.randn(args.points, 2, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ms = best_ms(lambda: flow.log_prob(x), calls=max(20, 20000 // args.points))
        print(f"log_prob {args.layers} x {args.hidden}-{args.hidden}, {args.points} points, "
              f"{args.threads} thread(s): {ms:.2f} ms")
        return
    if feature is None:
        step = TrainStep(flow, lr=1e-3)
        x = torch.randn(args.batch, 2, generator=torch.Generator().manual_seed(1))
        ms = best_ms(lambda: step(x), calls=300)
        print(f"TrainStep {args.layers} x {args.hidden}-{args.hidden}, batch {args.batch}, "
              f"{args.threads} thread(s): {ms:.2f} ms")
        return
    training = feature in ("split", "train-buffers", "native")
    if training:
        step = TrainStep(flow, lr=1e-6)
        x = torch.randn(args.batch, 2, generator=torch.Generator().manual_seed(1))
        work = {"training step": lambda: step(x)}
        per = f"per step of {args.batch} rows, {args.threads} thread(s)"
    else:
        x = torch.randn(args.points, 2, generator=torch.Generator().manual_seed(1))
        work = {"log_prob": lambda: flow.log_prob(x), "sample": lambda: flow.sample(args.points)}
        per = f"per {args.points} points"
    module, name, off = SWITCHES[feature]
    on = getattr(module, name)
    times: dict[str, list[float]] = {}
    with torch.inference_mode(not training):
        for _ in range(args.rounds):
            for label, value in ((f"{feature} on", on), (f"{feature} off", off)):
                setattr(module, name, value)
                for what, fn in work.items():
                    times.setdefault(f"{what}, {label}", []).append(
                        best_ms(fn, calls=20, repeats=1))
    setattr(module, name, on)
    for key, values in times.items():
        print(f"{key:28s} {statistics.median(values):6.2f} ms {per} "
              f"(median of {args.rounds})")

if __name__ == "__main__":
    main()
