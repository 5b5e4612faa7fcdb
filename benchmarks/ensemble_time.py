"""Wall-clock of training an ensemble: members at once (one thread each) or one after another.

Trains the ``--preset``'s flow (default: ``accurate``) as an ensemble of ``--members`` flows
for ``--steps`` steps on a toy, with :func:`realnvp.fit_ensemble`, alternately with
``workers=1`` (members in turn, each with torch's threads: row parts on every thread) and
``workers=K`` (all members at once, one thread each), ``--rounds`` times, and prints each
round's seconds and the median ratio. Both arrangements run in the same process on the
same machine, so the ratio survives the machine's load better than either time does.

Usage (from the repository root)::

    .venv/bin/python benchmarks/ensemble_time.py --members 2 --steps 1500 --rounds 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import realnvp  # noqa: E402
from realnvp.datasets import get_toy  # noqa: E402
from realnvp.runs import build_flow  # noqa: E402
from realnvp.training import PRESETS, TrainConfig  # noqa: E402


def _once(config: TrainConfig, x: torch.Tensor, workers: int) -> float:
    mixture = build_flow(config, x.shape[1])
    assert isinstance(mixture, realnvp.FlowMixture)
    start = time.perf_counter()
    realnvp.fit_ensemble(mixture, x, steps=config.steps, batch_size=config.batch_size,
                         lr=config.lr, clip_grad=config.clip_grad, eval_every=config.eval_every,
                         seed=config.seed, progress=False, workers=workers)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="accurate", choices=list(PRESETS))
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--toy", default="checkerboard")
    p.add_argument("--rows", type=int, default=100_000)
    args = p.parse_args(argv)
    values = {**PRESETS[args.preset], "ensemble": args.members, "steps": args.steps}
    config = TrainConfig.from_dict(values).validate()
    x = get_toy(args.toy).sample(args.rows, seed=0)[0].float()
    print(f"{args.preset}: {args.members} members x {args.steps} steps of "
          f"{config.batch_size} rows, {torch.get_num_threads()} torch threads, "
          f"load {os.getloadavg()[0]:.1f}")
    _once(TrainConfig.from_dict({**values, "steps": 5}), x, args.members)  # warm-up: build, load
    times: dict[int, list[float]] = {1: [], args.members: []}
    for r in range(args.rounds):
        for workers in (1, args.members) if r % 2 == 0 else (args.members, 1):
            times[workers].append(_once(config, x, workers))
            print(f"  round {r + 1}: workers={workers}: {times[workers][-1]:.1f} s", flush=True)
    in_turn, at_once = statistics.median(times[1]), statistics.median(times[args.members])
    print(f"median: in turn {in_turn:.1f} s, at once {at_once:.1f} s: "
          f"{in_turn / at_once:.2f}x faster at once")


if __name__ == "__main__":
    main()
