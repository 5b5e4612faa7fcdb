"""Where ``log_prob`` and ``sample`` spend their time, by operator (torch.profiler).

    python benchmarks/profile_inference.py --device cuda --points 8192

Prints the operators that take the most time (on the device, where there is one, and on
the CPU, which issues the work) for a trained-looking 2-D RealNVP of the benchmark's size.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import realnvp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--points", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    device = torch.device(args.device)
    flow = realnvp.RealNVP(2).to(device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # leave the identity start, as training would
        for param in flow.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g).to(device))
    x = torch.randn(args.points, 2, generator=g).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name, work in [("log_prob", lambda: flow.log_prob(x)),
                       ("sample", lambda: flow.sample(args.points))]:
        with torch.inference_mode():
            for _ in range(5):
                work()
            sync()
            start = time.perf_counter()
            for _ in range(args.repeats):
                work()
            sync()
            per_call = (time.perf_counter() - start) / args.repeats
            with profile(activities=activities) as prof:
                for _ in range(args.repeats):
                    work()
                sync()
        print(f"\n== {name}: {per_call * 1e3:.3f} ms per call of {args.points} points "
              f"({args.points / per_call / 1e6:.2f} M points/s)")
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15))
        if device.type == "cuda":
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
