"""realnvp alone, no peers: milliseconds per training step, and scoring with/without row blocks.

Absolute times on a shared machine move by tens of percent between minutes, so compare
versions by alternating them: export an older commit's sources and run the same command
against each in turn, e.g. (from the repository root)::

    git archive <commit> src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/step_time.py --layers 24 --hidden 32
    .venv/bin/python benchmarks/step_time.py --layers 24 --hidden 32

``--blocks`` instead alternates scoring and sampling of ``--points`` rows with the row blocks
of :mod:`realnvp.bijections._blocks` on and off, in one process, and prints the medians.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import realnvp  # noqa: E402
from realnvp.training.fit import TrainStep  # noqa: E402


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


def moved_flow(layers: int, hidden: int) -> realnvp.Flow:
    flow = realnvp.RealNVP(2, n_layers=layers, hidden=(hidden, hidden))
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
    p.add_argument("--threads", type=int, default=1, help="torch threads for training steps")
    p.add_argument("--blocks", action="store_true", help="row blocks on/off instead")
    p.add_argument("--points", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    flow = moved_flow(args.layers, args.hidden)
    if not args.blocks:
        torch.set_num_threads(args.threads)
        step = TrainStep(flow, lr=1e-3)
        x = torch.randn(args.batch, 2, generator=torch.Generator().manual_seed(1))
        ms = best_ms(lambda: step(x), calls=300)
        print(f"TrainStep {args.layers} x {args.hidden}-{args.hidden}, batch {args.batch}, "
              f"{args.threads} thread(s): {ms:.2f} ms")
        return
    from realnvp.bijections import _blocks

    x = torch.randn(args.points, 2, generator=torch.Generator().manual_seed(1))
    on_rows = _blocks.BLOCK_ROWS
    times: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for label, rows in (("blocks", on_rows), ("whole batch", 10**12)):
                _blocks.BLOCK_ROWS = rows
                times.setdefault(f"log_prob, {label}", []).append(
                    best_ms(lambda: flow.log_prob(x), calls=20, repeats=1))
                times.setdefault(f"sample, {label}", []).append(
                    best_ms(lambda: flow.sample(args.points), calls=20, repeats=1))
    for name, values in times.items():
        print(f"{name:24s} {statistics.median(values):6.2f} ms per {args.points} points "
              f"(median of {args.rounds})")


if __name__ == "__main__":
    main()
