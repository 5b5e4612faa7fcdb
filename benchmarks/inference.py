"""Scoring and sampling only: ``log_prob`` and ``sample`` of realnvp against the peers.

The same interleaved measurement as ``speed.py`` (rotating order, medians over rounds), on
flows moved off their identity start so every library computes a real map, for more rounds
than ``speed.py --quick`` affords. Usage (from the repository root)::

    .venv/bin/python benchmarks/inference.py --rounds 21 --points 8192
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.peers import LIBRARIES, available  # noqa: E402
from benchmarks.speed import (  # noqa: E402
    build_all,
    compare,
    interleaved,
    log_prob_task,
    sample_task,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--points", type=int, default=8192)
    p.add_argument("--block", type=float, default=0.25, help="seconds per timed block")
    args = p.parse_args()
    libraries = [lib for lib in LIBRARIES if available(lib)]
    models = build_all(libraries, 2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in models.values():
            for param in model.module.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=g, dtype=param.dtype))
    for name, make in [("log_prob", lambda m: log_prob_task(m, 2, args.points)),
                       ("sample", lambda m: sample_task(m, args.points))]:
        result = compare(interleaved([make(m) for m in models.values()], args.rounds,
                                     args.block))
        for lib, stats in result["libraries"].items():
            print(f"{name:9s} {lib:10s} {stats['median'] / 1e3:8.0f}k points/s "
                  f"[{stats['q1'] / 1e3:.0f}k-{stats['q3'] / 1e3:.0f}k]")
        ratio = result.get("ratio_vs_fastest_peer", float("nan"))
        print(f"{name:9s} realnvp / fastest peer: {ratio:.2f}x ({result.get('fastest_peer')})\n")


if __name__ == "__main__":
    main()
