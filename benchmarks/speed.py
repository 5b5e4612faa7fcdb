"""Speed of realnvp against zuko, nflows, normflows and plain PyTorch, in one process.

Every library builds the same RealNVP (see ``benchmarks/peers.py``). Measurements run
interleaved: in each of R rounds every library runs the same timed block in turn (the
order rotates each round), so load from other processes hits all of them alike; the
tables give the median and interquartile range over rounds, and ratios of medians
realnvp / fastest peer. Every block also records this process's CPU time, and the
ratio by CPU time is printed too: it moves less when other processes hold the cores.
Nothing here asserts a timing.

Measured:
  * training steps/s (Adam, mean NLL) at batch 512 and 4096, plus ``realnvp.fit`` timed
    end to end (its clipping, schedule and checks included) as an extra row;
  * ``log_prob`` and ``sample`` points/s under ``torch.inference_mode()``;
  * matmul FLOPs per sample (counted from the weights), achieved GFLOP/s, and the fraction
    of the machine's peak, estimated from a large float32 matmul on the same threads;
  * peak memory of training and scoring, and import time, each in fresh subprocesses;
  * training steps/s against dimension (2, 8, 32, 64) and batch size (128, 512, 4096).

Usage (from the repository root)::

    .venv/bin/python benchmarks/speed.py --quick --json /tmp/speed_quick.json
    .venv/bin/python benchmarks/speed.py --json /tmp/speed_full.json

``--quick`` takes about 2-3 minutes on 2 cores, the full run about 10. Peers that are not
installed (``pip install -e '.[bench]'``) are skipped with a note.
"""

from __future__ import annotations

import os

# A busy-waiting OpenMP runtime makes 2-thread torch ~20x slower while another process
# holds a core; this must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import LIBRARIES, PEERS, Model, available, build, linear_flops  # noqa: E402

DEVICE = torch.device("cpu")
"""Where models and data live (``--device``); timed blocks wait for the device to finish."""


def _sync() -> None:
    """Wait for queued device work, so a timed block includes it (no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)

__all__ = ["Settings", "main"]

TARGETS = {"train": 3.0, "log_prob": 2.0, "sample": 2.0}
"""The issue's targets: realnvp / fastest peer."""


@dataclass(frozen=True)
class Settings:
    """How long and how much to measure (``--quick`` or full)."""

    rounds: int = 9
    """Interleaved rounds per measurement (median and IQR are over these)."""
    block_s: float = 0.5
    """Target duration of one library's timed block in one round."""
    scaling_rounds: int = 5
    """Rounds for each cell of the dimension x batch scaling grid."""
    scaling_block_s: float = 0.3
    """Block duration in the scaling grid."""
    scaling_all: bool = True
    """Scale every library (full) or only realnvp, plain and the fastest peer (quick)."""
    import_repeats: int = 7
    """Fresh interpreters per library for the import time."""
    eval_batch: int = 8192
    """Points per ``log_prob`` call and per ``sample`` call."""


QUICK = Settings(rounds=5, block_s=0.25, scaling_rounds=3, scaling_block_s=0.15,
                 scaling_all=False, import_repeats=2)
FULL = Settings()

TRAIN_BATCHES = (512, 4096)
FIT = "realnvp.fit"
"""Row name of ``realnvp.fit`` timed end to end, next to the per-step comparison."""
SCALING_DIMS = (2, 8, 32, 64)
SCALING_BATCHES = (128, 512, 4096)


# --- timing ----------------------------------------------------------------------------


@dataclass
class Task:
    """``run(k)`` does k iterations and returns the units done (steps or points)."""

    name: str
    run: Callable[[int], int]
    k: int = 1


def calibrate(task: Task, block_s: float, warmup: int) -> None:
    """Warm ``task`` up, then choose its iterations per block so a block lasts ``block_s``."""
    task.run(warmup)
    start = time.perf_counter()
    task.run(1)
    once = max(time.perf_counter() - start, 1e-6)
    task.k = max(1, round(block_s / once))


@dataclass
class Rates:
    """Per-round throughput of each task: by wall clock, and by this process's CPU time.

    Wall-clock rates are what a user sees; CPU-time rates (units per CPU second, all
    threads together) leave out the time the process waited for a core, so they move
    less when other processes load the machine.
    """

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def interleaved(tasks: Sequence[Task], rounds: int, block_s: float, warmup: int = 3) -> Rates:
    """Rates (units/s) of every task in each round, tasks taking turns in a rotating order."""
    for task in tasks:
        calibrate(task, block_s, warmup)
    rates = Rates({task.name: [] for task in tasks}, {task.name: [] for task in tasks})
    for r in range(rounds):
        shift = r % len(tasks)
        for task in [*tasks[shift:], *tasks[:shift]]:
            start, cpu = time.perf_counter(), time.process_time()
            units = task.run(task.k)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            rates.wall[task.name].append(units / wall)
            rates.cpu[task.name].append(units / max(cpu, 1e-9))
    return rates


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and count of ``values``."""
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "n": len(values)}


def data_pool(dim: int, batch: int, n_batches: int = 8, seed: int = 0) -> list[Tensor]:
    """Fixed batches of a 2-component Gaussian mixture, cycled through by training."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * batch, dim, generator=g, device="cpu")
    sign = torch.randint(0, 2, (n_batches * batch, 1), generator=g, device="cpu") * 2 - 1
    return list((x * 0.5 + sign * 1.5).to(DEVICE).split(batch))



def train_task(model: Model, dim: int, batch: int, label: str) -> Task:
    pool = data_pool(dim, batch)

    def run(k: int) -> int:
        for i in range(k):
            model.train_step(pool[i % len(pool)])
        _sync()
        return k

    return Task(label, run)


def fit_task(dim: int, batch: int) -> Task | None:
    """``realnvp.fit`` end to end for k steps (its defaults: clipping, schedule, checks)."""
    try:
        import realnvp
    except ImportError:
        return None
    if not hasattr(realnvp, "fit"):
        return None
    data = torch.cat(data_pool(dim, 4096, n_batches=5, seed=2))
    flow = realnvp.RealNVP(dim, n_layers=8, hidden=(64, 64))

    def run(k: int) -> int:
        realnvp.fit(flow, data, steps=k, batch_size=batch, lr=1e-3, val_fraction=0.0,
                    eval_every=k, warmup=0, progress=False, device=DEVICE)
        _sync()
        return k

    return Task(FIT, run)


def log_prob_task(model: Model, dim: int, n: int) -> Task:
    x = data_pool(dim, n, n_batches=1, seed=1)[0]

    def run(k: int) -> int:
        with torch.inference_mode():
            for _ in range(k):
                model.log_prob(x)
        _sync()
        return k * n

    return Task(model.name, run)


def sample_task(model: Model, n: int) -> Task:
    def run(k: int) -> int:
        with torch.inference_mode():
            for _ in range(k):
                model.sample(n)
        _sync()
        return k * n

    return Task(model.name, run)


def peak_gflops(threads: int, size: int = 2048, repeats: int = 7) -> float:
    """Float32 matmul GFLOP/s on ``threads`` threads (or the device), best of ``repeats``."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    if DEVICE.type != "cpu":
        size *= 4
    a, b = torch.randn(size, size, device=DEVICE), torch.randn(size, size, device=DEVICE)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        torch.mm(a, b)
        _sync()
        times.append(time.perf_counter() - start)
    torch.set_num_threads(before)
    return 2 * size**3 / min(times) / 1e9


# --- subprocess: import time and peak memory ---------------------------------------------

_IMPORTS = {
    "torch": "import torch",
    "realnvp": "import realnvp",
    "zuko": "import zuko",
    "nflows": "import nflows.flows, nflows.transforms, nflows.distributions",
    "normflows": "import normflows",
    "plain": "import torch",
}
"""What a user of each library imports; ``torch`` alone is the baseline."""

# Runs in a fresh interpreter: the import is timed before anything else is loaded.
_CHILD = """
import json, sys, time
start, cpu = time.perf_counter(), time.process_time()
{statement}
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
sys.path.insert(0, {root!r})
from benchmarks.speed import child_memory
memory = child_memory({library!r}, {memory}, {dim}, {batch})
print(json.dumps({{"import_s": elapsed, "import_cpu_s": cpu, **memory}}))
"""

# Large blocks are mmapped and returned to the system at once, so the resident set
# follows live tensors instead of glibc's retained heap.
_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_kib(field: str) -> int | None:
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_during(work: Callable[[], None]) -> float | None:
    """MiB by which the resident set peaked above its level just before ``work``."""
    if not _reset_peak():
        return None
    before = _status_kib("VmRSS")
    work()
    peak = _status_kib("VmHWM")
    return None if before is None or peak is None else (peak - before) / 1024


def child_memory(library: str, memory: bool, dim: int, eval_batch: int) -> dict:
    """Peak RSS growth of 5 training steps (batch 4096, Adam state created) and one log_prob."""
    if not memory or library == "torch":
        return {}
    model = build(library, dim)
    x = data_pool(dim, TRAIN_BATCHES[-1], n_batches=1)[0]
    points = data_pool(dim, eval_batch, n_batches=1, seed=1)[0]

    def train() -> None:
        for _ in range(5):
            model.train_step(x)

    def score() -> None:
        with torch.inference_mode():
            model.log_prob(points)

    return {"train_peak_mib": _peak_during(train), "log_prob_peak_mib": _peak_during(score),
            "rss_mib": (_status_kib("VmRSS") or 0) / 1024}


def _run_child(library: str, memory: bool, dim: int, eval_batch: int) -> dict:
    code = _CHILD.format(statement=_IMPORTS[library], root=str(ROOT), library=library,
                         memory=memory, dim=dim, batch=eval_batch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, env={**os.environ, **_CHILD_ENV})
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def subprocess_measurements(libraries: Sequence[str], repeats: int, dim: int, eval_batch: int,
                            ) -> dict[str, dict]:
    """Import time (median over fresh interpreters) and peak memory (first run), interleaved."""
    runs: dict[str, list[dict]] = {lib: [] for lib in ["torch", *libraries]}
    for r in range(repeats):
        for lib in runs:
            if lib == "plain" and r > 0:  # its import is torch's; run once, for memory
                continue
            runs[lib].append(_run_child(lib, r == 0, dim, eval_batch))
    result: dict[str, dict] = {}
    for lib, items in runs.items():
        ok = [i for i in items if "import_s" in i]
        if not ok:
            result[lib] = {"error": items[0].get("error")}
            continue
        result[lib] = {"import_s": summary([i["import_s"] for i in ok]),
                       "import_cpu_s": summary([i["import_cpu_s"] for i in ok]),
                       "import_statement": _IMPORTS[lib]}
        result[lib].update({k: v for k, v in ok[0].items() if not k.startswith("import")})
    return result


# --- the benchmark ---------------------------------------------------------------------


def machine() -> dict:
    """What this ran on: CPU, cores, torch and library versions, threads."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = match.group(1).strip() if match else cpu
    versions = {}
    for lib in ("torch", "numpy", *PEERS, "realnvp"):
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": versions,
    }


def build_all(libraries: Sequence[str], dim: int) -> dict[str, Model]:
    with DEVICE:  # parameters, buffers and optimiser state are created on the device
        return {lib: build(lib, dim) for lib in libraries}


def fastest_peer(results: dict[str, dict], peers: Sequence[str]) -> str | None:
    present = [p for p in peers if p in results]
    return max(present, key=lambda p: results[p]["median"]) if present else None


def compare(both: Rates) -> dict:
    """Summaries per library and realnvp's ratio to the fastest peer and to plain PyTorch."""
    rates = both.wall
    out: dict = {"libraries": {lib: summary(v) for lib, v in rates.items()},
                 "cpu_time_rates": {lib: summary(v) for lib, v in both.cpu.items()}}
    libs = out["libraries"]
    best = fastest_peer(libs, PEERS)
    if "realnvp" in libs and best is not None:
        out["fastest_peer"] = best
        out["ratio_vs_fastest_peer"] = libs["realnvp"]["median"] / libs[best]["median"]
        per_round = [a / b for a, b in zip(rates["realnvp"], rates[best], strict=True)]
        out["ratio_per_round"] = summary(per_round)
        cpu = out["cpu_time_rates"]
        best_cpu = fastest_peer(cpu, PEERS)
        out["cpu_time_ratio_vs_fastest_peer"] = cpu["realnvp"]["median"] / cpu[best_cpu]["median"]
    if "realnvp" in libs and "plain" in libs:
        out["ratio_vs_plain"] = libs["realnvp"]["median"] / libs["plain"]["median"]
    if FIT in libs and best is not None:
        out["fit_ratio_vs_fastest_peer"] = libs[FIT]["median"] / libs[best]["median"]
    return out


def main_table(models: dict[str, Model], dim: int, s: Settings) -> dict:
    """Training, log_prob and sample throughput, interleaved."""
    table: dict = {}
    for batch in TRAIN_BATCHES:
        tasks = [train_task(m, dim, batch, m.name) for m in models.values()]
        fit = fit_task(dim, batch) if "realnvp" in models else None
        tasks += [fit] if fit is not None else []
        table[f"train_b{batch}"] = compare(interleaved(tasks, s.rounds, s.block_s))
        _progress(f"train batch {batch}", table[f"train_b{batch}"])
    tasks = [log_prob_task(m, dim, s.eval_batch) for m in models.values()]
    table["log_prob"] = compare(interleaved(tasks, s.rounds, s.block_s))
    _progress("log_prob", table["log_prob"])
    tasks = [sample_task(m, s.eval_batch) for m in models.values()]
    table["sample"] = compare(interleaved(tasks, s.rounds, s.block_s))
    _progress("sample", table["sample"])
    return table


def flops(models: dict[str, Model], table: dict, peak: float) -> dict:
    """FLOPs per sample and achieved GFLOP/s (fraction of ``peak``) for every measurement."""
    out: dict = {}
    for lib, model in models.items():
        fwd = linear_flops(model.module)
        row = {"forward_flops_per_sample": fwd, "train_flops_per_sample": 3 * fwd}
        for key, entry in table.items():
            if lib not in entry["libraries"]:
                continue
            rate = entry["libraries"][lib]["median"]
            work = 3 * fwd * int(key[len("train_b"):]) if key.startswith("train") else fwd
            row[f"{key}_gflops"] = rate * work / 1e9
            row[f"{key}_fraction_of_peak"] = rate * work / 1e9 / peak
        out[lib] = row
    return out


def scaling(libraries: Sequence[str], s: Settings) -> dict:
    """Training steps/s on the dimension x batch grid, interleaved within each cell."""
    grid: dict = {}
    for dim in SCALING_DIMS:
        models = build_all(libraries, dim)
        for batch in SCALING_BATCHES:
            tasks = [train_task(m, dim, batch, m.name) for m in models.values()]
            cell = compare(interleaved(tasks, s.scaling_rounds, s.scaling_block_s))
            grid[f"d{dim}_b{batch}"] = {"dim": dim, "batch": batch, **cell}
            _progress(f"scaling dim {dim} batch {batch}", cell)
    return grid


def cost_model(grid: dict) -> dict:
    """Fit ``ms per step = fixed + per_sample * batch`` for each library and dimension."""
    out: dict = {}
    for dim in SCALING_DIMS:
        cells = [c for c in grid.values() if c["dim"] == dim]
        for lib in cells[0]["libraries"]:
            xs = [c["batch"] for c in cells]
            ys = [1e3 / c["libraries"][lib]["median"] for c in cells]
            slope, intercept = _line(xs, ys)
            out.setdefault(lib, {})[f"d{dim}"] = {"fixed_ms": intercept,
                                                  "us_per_sample": 1e3 * slope}
    return out


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


# --- printing ----------------------------------------------------------------------------


def _progress(label: str, entry: dict) -> None:
    ratio = entry.get("ratio_vs_fastest_peer")
    text = f"ratio vs {entry['fastest_peer']} {ratio:.2f}x" if ratio else ""
    print(f"  done: {label} {text}", file=sys.stderr, flush=True)


def _fmt(x: float) -> str:
    if x >= 1e5:
        return f"{x / 1e3:,.0f}k"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}"


def print_report(result: dict) -> None:
    m = result["machine"]
    print(f"\nMachine: {m['cpu']}, {m['usable_cores']} cores, torch {m['versions']['torch']}, "
          f"{m['torch_threads']} threads, OMP_WAIT_POLICY={m['OMP_WAIT_POLICY']}, "
          f"load average at start {m['load_average']}")
    print(f"Device: {result['device']}")
    print("Architecture: RealNVP, {dim}-D, {n_layers} affine couplings, conditioner "
          "kept -> 64 -> 64 -> 2*transformed (ReLU), standard normal base".format(
              **result["architecture"]))
    print("\nParameters and matmul FLOPs per sample (forward):")
    for lib, info in result["models"].items():
        print(f"  {lib:10s} {info['n_params']:>8,d} params  {info['forward_flops']:>8,d} FLOPs"
              f"  {info['note']}")
    for lib, why in result["skipped"].items():
        print(f"  {lib:10s} skipped: {why}")
    units = {"train_b512": "steps/s", "train_b4096": "steps/s", "log_prob": "points/s",
             "sample": "points/s"}
    table = result["throughput"]
    keys = list(table)
    print(f"\nThroughput: median [interquartile range] over {result['settings']['rounds']} "
          "interleaved rounds")
    print(f"  {'':24s}" + "".join(f"{k:>24s}" for k in keys))
    print(f"  {'':24s}" + "".join(f"{units[k]:>24s}" for k in keys))
    for lib in [*result["models"], FIT]:
        cells = [table[k]["libraries"].get(lib) for k in keys]
        if not any(cells):
            continue
        print(f"  {lib:24s}" + "".join(
            (f"{_fmt(c['median'])} [{_fmt(c['q1'])}-{_fmt(c['q3'])}]" if c else "-").rjust(24)
            for c in cells))
    rows = {
        "realnvp / fastest peer":
            lambda e: f"{e['ratio_vs_fastest_peer']:.2f}x {e['fastest_peer']}",
        "  per-round IQR": lambda e: "{q1:.2f}-{q3:.2f}".format(**e["ratio_per_round"]),
        "realnvp / plain PyTorch": lambda e: f"{e['ratio_vs_plain']:.2f}x",
        "by CPU time / fastest": lambda e: f"{e['cpu_time_ratio_vs_fastest_peer']:.2f}x",
        f"{FIT} / fastest peer": lambda e: f"{e['fit_ratio_vs_fastest_peer']:.2f}x",
    }
    for label, cell in rows.items():
        texts = []
        for k in keys:
            try:
                texts.append(cell(table[k]))
            except KeyError:
                texts.append("-")
        print(f"  {label:24s}" + "".join(f"{t:>24s}" for t in texts))
    verdicts = []
    for k in keys:
        target = TARGETS["train" if k.startswith("train") else k]
        ratio = table[k].get("ratio_vs_fastest_peer")
        verdict = "-" if ratio is None else ("met" if ratio >= target else "missed")
        verdicts.append(f">= {target:.0f}x: {verdict}")
    print(f"  {'target vs fastest peer':24s}" + "".join(f"{v:>24s}" for v in verdicts))
    print(f"\nMachine peak (float32 2048x2048 matmul, best of 7, {m['torch_threads']} threads): "
          f"{result['peak_gflops']:.1f} GFLOP/s; 1 thread: {result['peak_gflops_1thread']:.1f}")
    print("Achieved matmul GFLOP/s (fraction of peak):")
    for lib, row in result["flops"].items():
        cells = [f"{k[:-7]} {row[k]:.2f} ({row[k[:-7] + '_fraction_of_peak']:.1%})"
                 for k in row if k.endswith("_gflops")]
        print(f"  {lib:10s} " + "  ".join(cells))
    print("\nFresh interpreter: import time (median s) and peak RSS growth "
          f"(VmHWM, MiB; train batch {TRAIN_BATCHES[-1]}, log_prob of "
          f"{result['settings']['eval_batch']} points):")
    for lib, info in result["subprocess"].items():
        if "error" in info:
            print(f"  {lib:10s} error: {info['error']}")
            continue
        train, score = info.get("train_peak_mib"), info.get("log_prob_peak_mib")
        mem = (f"train {train:6.1f}  log_prob {score:6.1f}" if train is not None
               else "n/a" if lib != "torch" else "")
        print(f"  {lib:10s} import {info['import_s']['median']:.2f} s "
              f"(CPU {info['import_cpu_s']['median']:.2f} s)  {mem}")
    if result.get("scaling"):
        print("\nTraining steps/s vs dimension and batch (median; ratio = realnvp / fastest peer)")
        grid_libs = list(next(iter(result["scaling"].values()))["libraries"])
        print(f"  {'dim':>4s} {'batch':>6s}" + "".join(f"{lib:>11s}" for lib in grid_libs)
              + f"{'ratio':>8s}")
        for cell in result["scaling"].values():
            row = f"  {cell['dim']:>4d} {cell['batch']:>6d}"
            row += "".join(f"{_fmt(cell['libraries'][lib]['median']):>11s}" for lib in grid_libs)
            ratio = cell.get("ratio_vs_fastest_peer")
            print(row + (f"{ratio:>7.2f}x" if ratio else ""))
        print("  cost model ms/step = fixed + per-sample * batch (least squares over batches):")
        for lib, dims in result["cost_model"].items():
            cells = "  ".join(f"d{d[1:]}: {v['fixed_ms']:.2f} ms + {v['us_per_sample']:.2f} us/pt"
                              for d, v in dims.items())
            print(f"  {lib:10s} {cells}")
    print(f"\nTotal benchmark time {result['elapsed_s']:.0f} s")


# --- entry point -----------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run, about 2-3 minutes on 2 cores")
    p.add_argument("--json", type=Path, help="also write every number to this JSON file")
    p.add_argument("--dim", type=int, default=2, help="features of the main comparison")
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES,
                   help="libraries to run (default: all that are installed)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (then no subprocess part)")
    p.add_argument("--rounds", type=int, help="override the number of interleaved rounds")
    p.add_argument("--eval-batch", type=int, help="points per log_prob / sample call")
    p.add_argument("--no-scaling", action="store_true", help="skip the dimension x batch grid")
    p.add_argument("--no-subprocess", action="store_true",
                   help="skip import time and peak memory")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else FULL
    changes = {}
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.eval_batch:
        changes["eval_batch"] = args.eval_batch
    return Settings(**{**s.__dict__, **changes})


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type != "cpu":
        args.no_subprocess = True  # import time and RSS say nothing about device memory
    if args.threads:
        torch.set_num_threads(args.threads)
    s = settings_from(args)
    start = time.perf_counter()
    libraries = [lib for lib in args.libraries if available(lib)]
    skipped = {lib: "not installed (pip install -e '.[bench]')"
               for lib in args.libraries if lib not in libraries}
    result: dict = {"machine": machine(), "settings": s.__dict__, "skipped": skipped,
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "device": str(DEVICE) if DEVICE.type == "cpu" else
                    torch.cuda.get_device_name(DEVICE),
                    "architecture": {"dim": args.dim, "n_layers": 8, "hidden": [64, 64]}}
    print(f"threads {torch.get_num_threads()}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}", file=sys.stderr)
    models = build_all(libraries, args.dim)
    result["models"] = {lib: {"n_params": m.n_params, "forward_flops": linear_flops(m.module),
                              "note": m.note} for lib, m in models.items()}
    result["throughput"] = main_table(models, args.dim, s)
    result["peak_gflops"] = peak_gflops(torch.get_num_threads())
    result["peak_gflops_1thread"] = peak_gflops(1)
    result["flops"] = flops(models, result["throughput"], result["peak_gflops"])
    if not args.no_subprocess:
        result["subprocess"] = subprocess_measurements(libraries, s.import_repeats, args.dim,
                                                       s.eval_batch)
    else:
        result["subprocess"] = {}
    if not args.no_scaling:
        best = result["throughput"]["train_b512"].get("fastest_peer")
        grid_libs = libraries if s.scaling_all else [
            lib for lib in libraries if lib in ("realnvp", "plain", best)]
        result["scaling"] = scaling(grid_libs, s)
        result["cost_model"] = cost_model(result["scaling"])
    result["elapsed_s"] = time.perf_counter() - start
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
