"""Stress: many seeded ``realnvp train`` runs across the eight toys; no NaN, no crash.

Each run goes through the whole command (``realnvp.cli.main``, in this process): data,
validation, ``fit`` with checkpoints, saving, metrics. Then it checks what the run left:
finite validation/test NLL and KL gap, a model that loads and gives finite ``log_prob`` on
fresh toy samples and finite samples, a checkpoint without a NaN, no temporary files.
Runs cycle through the toys; run ``i`` uses seed ``i``, and every third run an aggressive
learning rate (1e-2) and a small batch, to push the numerics.

    .venv/bin/python benchmarks/stress.py                 # 30 runs x 1000 steps, ~10 min
    .venv/bin/python benchmarks/stress.py --runs 8 --steps 200 --json /tmp/stress.json

Exit status 1 if any run fails a check.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import realnvp
import realnvp.cli
from realnvp.datasets import TOYS, get_toy


def one_run(folder: Path, toy: str, seed: int, steps: int, lr: float, batch: int) -> dict[str, Any]:
    """Train one run into ``folder`` and check it; returns a record (``problems`` empty if ok)."""
    record: dict[str, Any] = {"toy": toy, "seed": seed, "lr": lr, "batch": batch, "problems": []}
    problems = record["problems"]
    argv = ["train", "--data", toy, "--seed", str(seed), "--steps", str(steps), "--lr", str(lr),
            "--batch-size", str(batch), "--device", "cpu", "--checkpoint-every", "100",
            "--no-plots", "--quiet", "--out", str(folder)]
    started = time.perf_counter()
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            realnvp.cli.main(argv)
    except SystemExit as e:  # main() exits only on an error
        problems.append(f"exit status {e.code}: {output.getvalue().strip()[-300:]}")
    except Exception as e:  # noqa: BLE001 - a crash is what this script looks for
        problems.append(f"crash: {type(e).__name__}: {e}")
    record["seconds"] = round(time.perf_counter() - started, 1)
    if problems:
        return record
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("val_nll", "test_nll", "kl_gap"):
        record[key] = metrics.get(key)
        if not isinstance(metrics.get(key), (int, float)) or not math.isfinite(metrics[key]):
            problems.append(f"{key} is {metrics.get(key)!r}")
    record["skipped_steps"] = metrics.get("skipped_steps")
    flow = realnvp.load(folder)
    x, _ = get_toy(toy).sample(20000, seed=seed + 10_000)
    with torch.inference_mode():
        log_prob = flow.log_prob(x.to(torch.float32))
        samples = flow.sample(5000, generator=torch.Generator().manual_seed(seed))
    if not bool(torch.isfinite(log_prob).all()):
        problems.append(f"{int((~torch.isfinite(log_prob)).sum())} non-finite log_prob values")
    if not bool(torch.isfinite(samples).all()):
        problems.append(f"{int((~torch.isfinite(samples).any(1)).sum())} non-finite samples")
    checkpoint = load_file(folder / "checkpoint.safetensors")
    bad = [k for k, v in checkpoint.items() if v.is_floating_point() and
           not bool(torch.isfinite(v).all())]
    if bad:
        problems.append(f"non-finite checkpoint tensors: {', '.join(bad[:3])}")
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    if leftovers:
        problems.append(f"temporary files left: {', '.join(leftovers)}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="number of runs (default 30)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the records here")
    args = parser.parse_args(argv)
    toys = sorted(TOYS)
    records = []
    with tempfile.TemporaryDirectory(prefix="realnvp-stress-") as tmp:
        for i in range(args.runs):
            aggressive = i % 3 == 2
            record = one_run(Path(tmp) / f"run{i:02d}", toys[i % len(toys)], seed=i,
                             steps=args.steps, lr=1e-2 if aggressive else 2e-3,
                             batch=128 if aggressive else 512)
            records.append(record)
            status = "ok" if not record["problems"] else "FAIL: " + "; ".join(record["problems"])
            print(f"{i:2d} {record['toy']:<12} seed {record['seed']:2d} lr {record['lr']:<6g} "
                  f"batch {record['batch']:<4d} {record['seconds']:6.1f} s  "
                  f"val {record.get('val_nll', math.nan):7.4f}  "
                  f"KL gap {record.get('kl_gap', math.nan):7.4f}  "
                  f"skipped {record.get('skipped_steps', '-')}  {status}", flush=True)
    failed = [r for r in records if r["problems"]]
    print(f"\n{len(records) - len(failed)}/{len(records)} runs passed every check; "
          f"{sum(r.get('skipped_steps') or 0 for r in records)} steps skipped in all; "
          f"{sum(r['seconds'] for r in records):.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
