"""How good are realnvp's densities? Every toy, against the truth and tuned baselines.

For each toy (exact log-density known) every model is fitted on the same rows and scored
on the same fresh test set:

  * the flows are built exactly as ``realnvp train --preset P`` builds them: the preset's
    entry of ``PRESETS`` on top of ``TrainConfig``, then ``runs.build_flow`` and
    ``realnvp.fit`` with the config's optimisation settings; each trains on the number of
    rows its config says (``n_train``), split into train/validation as ``fit`` splits;
  * ``gmm`` and ``kde`` are the validation-tuned baselines of :mod:`realnvp.baselines`,
    fitted on the train/validation split of the largest flow's rows, so they see the data
    of the most data-hungry preset (smaller presets use a prefix of the same draw).

Scores (:mod:`realnvp.metrics`): held-out NLL and KL gap to the truth, each with its
standard error; the largest HDR-coverage deviation; energy distance (model samples vs
test); wall and CPU seconds of the fit. Where a flow and a baseline are compared, the
difference of their KL gaps comes with the standard error of the paired difference.

Usage (from the repository root)::

    .venv/bin/python benchmarks/quality.py --quick --json /tmp/quality_quick.json
    .venv/bin/python benchmarks/quality.py --json /tmp/quality_full.json
    .venv/bin/python benchmarks/quality.py --toys checkerboard rings --models accurate kde \\
        --set steps=2000

``--quick`` (moons and 8gaussians, the default recipe's target toys; fast, default and both
baselines; 5k test points) takes about 4 minutes on 2 busy cores. The full run (every toy,
every model, 20k test points) is dominated by the accurate preset (an ensemble of two
32-bin spline flows, about 8 minutes each on one core), so well over two hours on one
core. ``--set KEY=VALUE`` overrides a config field of every flow (for recipe searches);
``--model NAME=JSON`` adds a flow whose config is ``TrainConfig`` updated with the JSON
object.
"""

from __future__ import annotations

import os

# A busy-waiting OpenMP runtime makes 2-thread torch much slower while another process
# holds a core; this must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from realnvp import metrics  # noqa: E402
from realnvp.baselines import fit_gaussian_mixture, fit_kernel_density  # noqa: E402
from realnvp.datasets import TOYS, get_toy  # noqa: E402
from realnvp.mixture import FlowMixture  # noqa: E402
from realnvp.runs import build_flow  # noqa: E402
from realnvp.training import PRESETS, TrainConfig, fit, fit_ensemble  # noqa: E402
from realnvp.training.fit import split  # noqa: E402

__all__ = ["FLOW_MODELS", "BASELINES", "Settings", "main"]

FLOW_MODELS: dict[str, dict[str, Any]] = {
    "fast": dict(PRESETS["fast"]),
    "default": dict(PRESETS["default"]),
    "accurate": dict(PRESETS["accurate"]),
    "spline": {"coupling": "spline", "layers": 8, "hidden": (64, 64)},
}
"""Flow name -> ``TrainConfig`` overrides: the CLI's presets, plus ``spline``, the default's
optimisation with 8 spline couplings of 64-64 (the size that fits the default's time)."""

BASELINES = ("gmm", "kde")
"""Validation-tuned GaussianMixture and KernelDensity."""

TARGETS = {"default_kl": 0.03, "hdr": 0.02}
"""The issue's targets: default KL gap on moons and 8gaussians; accurate HDR deviation."""


@dataclass(frozen=True)
class Settings:
    """What to run and how many points to score (``--quick`` or full)."""

    toys: tuple[str, ...] = tuple(TOYS)
    models: tuple[str, ...] = (*FLOW_MODELS, *BASELINES)
    n_test: int = 20000
    """Fresh test points per toy (seed + 10000, as ``realnvp train`` draws them)."""
    n_samples: int = 20000
    """Samples drawn from each model for HDR calibration and the energy distance."""
    seed: int = 0
    device: str = "cpu"
    """Where the flows train (``cpu`` or ``cuda``); they are scored on the CPU."""


QUICK = Settings(toys=("moons", "8gaussians"),
                 models=("fast", "default", *BASELINES), n_test=5000, n_samples=5000)


def flow_config(overrides: dict[str, Any], extra: dict[str, Any], seed: int,
                device: str = "cpu") -> TrainConfig:
    """``TrainConfig`` <- model overrides <- ``--set`` values, validated, ``device``, ``seed``."""
    values = {**overrides, **extra, "seed": seed, "device": device}
    return TrainConfig.from_dict(values, source="benchmark config").validate()


def fit_flow(config: TrainConfig, rows: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Build and train the flow ``config`` describes, as ``realnvp train`` does."""
    flow = build_flow(config, rows.shape[1])
    wall, cpu = time.perf_counter(), time.process_time()
    train = fit_ensemble if isinstance(flow, FlowMixture) else fit
    history = train(
        flow, rows, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, warmup=config.warmup,
        min_lr_ratio=config.min_lr_ratio, clip_grad=config.clip_grad,
        val_fraction=config.val_fraction, eval_every=config.eval_every,
        patience=config.patience, seed=config.seed, device=config.device, progress=False,
    )
    histories = history if isinstance(history, list) else [history]
    info = {"fit_seconds": time.perf_counter() - wall, "fit_cpu_seconds": time.process_time() - cpu,
            "best_step": min(h.best_step for h in histories), "stopped": histories[0].stopped}
    return flow.to("cpu").eval(), info


def score_flow(flow: Any, test: np.ndarray, log_p: np.ndarray, settings: Settings
               ) -> tuple[dict[str, Any], np.ndarray]:
    scores = metrics.evaluate_flow(flow, test, log_p, settings.n_samples, settings.seed)
    with torch.inference_mode():
        log_q = flow.log_prob(torch.as_tensor(test)).to(torch.float64).numpy()
    return scores, log_q


def fit_baseline(name: str, train: np.ndarray, val: np.ndarray, test: np.ndarray,
                 log_p: np.ndarray, settings: Settings
                 ) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the chosen k or bandwidth is in the "chosen" column
        if name == "gmm":
            model = fit_gaussian_mixture(train, val, seed=settings.seed)
        else:
            model = fit_kernel_density(train, val, seed=settings.seed)
    info = {"fit_seconds": time.perf_counter() - wall,
            "fit_cpu_seconds": time.process_time() - cpu, "chosen": model.name}
    samples = model.sample(settings.n_samples, settings.seed)
    log_q = model.score_samples(test)
    scores = metrics.evaluate_scores(test, log_q, samples, model.score_samples(samples), log_p,
                                     settings.seed)
    return scores, log_q, info


def run_toy(toy_name: str, settings: Settings, extra: dict[str, Any],
            custom: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model on one toy; one result row per model."""
    toy = get_toy(toy_name)
    flows = {**FLOW_MODELS, **custom}
    configs = {m: flow_config(flows[m], extra, settings.seed, settings.device)
               for m in settings.models if m in flows}
    n_rows = max([c.n_train for c in configs.values()] or [TrainConfig().n_train])
    rows = toy.sample(n_rows, seed=settings.seed)[0].numpy()
    x_test, _ = toy.sample(settings.n_test, seed=settings.seed + 10_000)
    log_p = toy.log_prob(x_test).numpy()
    test = x_test.numpy()
    results, log_qs = [], {}
    for model in settings.models:
        if model in configs:
            config = configs[model]
            flow, info = fit_flow(config, rows[:config.n_train])
            scores, log_q = score_flow(flow, test, log_p, settings)
            info.update(n_train=config.n_train, config=config.to_dict())
        else:
            val_fraction = min((c.val_fraction for c in configs.values()), default=0.1)
            generator = torch.Generator().manual_seed(settings.seed)
            train, val = split(torch.as_tensor(rows), val_fraction, generator)
            scores, log_q, info = fit_baseline(model, train.numpy(), val.numpy(), test, log_p,
                                               settings)
            info["n_train"] = n_rows
        log_qs[model] = log_q
        results.append(_row(toy_name, model, scores, info))
        print(f"  {toy_name:12s} {model:10s} KL {results[-1]['kl_gap']:.4f} "
              f"HDR {results[-1]['hdr_max_deviation']:.3f} "
              f"{results[-1]['fit_seconds']:.0f} s", file=sys.stderr, flush=True)
    for row in results:  # paired KL differences against each baseline
        for base in BASELINES:
            if base in log_qs and row["model"] != base:
                diff = log_qs[base] - log_qs[row["model"]]  # = KL(model) - KL(base) per point
                row[f"kl_minus_{base}"] = float(diff.mean())
                row[f"kl_minus_{base}_stderr"] = float(diff.std(ddof=1) / math.sqrt(diff.size))
    return results


def _row(toy: str, model: str, scores: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    return {"toy": toy, "model": model, "nll": scores["nll"].value,
            "nll_stderr": scores["nll"].stderr, "kl_gap": scores["kl_gap"].value,
            "kl_gap_stderr": scores["kl_gap"].stderr,
            "hdr_max_deviation": scores["hdr"].max_deviation,
            "energy_distance": scores["energy_distance"], **info}


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per toy and model."""
    head = ("| toy | model | n_train | test NLL | KL gap | KL - KDE | KL - GMM | HDR max dev "
            "| energy | fit s |")
    lines = [head, "|---" * 10 + "|"]
    for r in rows:
        lines.append(
            f"| {r['toy']} | {r.get('chosen', r['model'])} | {r['n_train']} "
            f"| {_pm(r['nll'], r['nll_stderr'])} | {_pm(r['kl_gap'], r['kl_gap_stderr'])} "
            f"| {_pm(r.get('kl_minus_kde'), r.get('kl_minus_kde_stderr'))} "
            f"| {_pm(r.get('kl_minus_gmm'), r.get('kl_minus_gmm_stderr'))} "
            f"| {r['hdr_max_deviation']:.3f} | {r['energy_distance']:.4f} "
            f"| {r['fit_seconds']:.0f} |")
    return "\n".join(lines)


def _pm(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "-"
    return str(metrics.Estimate(value, stderr if stderr is not None else math.nan))


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target of the issue that these rows can decide."""
    by = {(r["toy"], r["model"]): r for r in rows}
    toys = sorted({r["toy"] for r in rows}, key=list(TOYS).index)
    lines = []
    for toy in ("moons", "8gaussians"):
        if (toy, "default") in by:
            kl = by[toy, "default"]["kl_gap"]
            ok = "met" if kl <= TARGETS["default_kl"] else "MISSED"
            lines.append(f"default KL on {toy}: {kl:.4f} (<= {TARGETS['default_kl']}): {ok}")
    for model in [m for m in dict.fromkeys(r["model"] for r in rows) if m not in BASELINES]:
        mine = [by[t, model] for t in toys if (t, model) in by]
        for base, need in (("kde", len(TOYS)), ("gmm", 6)):
            compared = [r for r in mine if f"kl_minus_{base}" in r]
            if compared:
                won = [r["toy"] for r in compared if r[f"kl_minus_{base}"] < 0]
                lines.append(f"{model} beats {base} on {len(won)}/{len(compared)} toys "
                             f"(target {need}/{len(TOYS)}): {', '.join(won) or '-'}")
        worst = max(mine, key=lambda r: r["hdr_max_deviation"])
        lines.append(f"{model} largest HDR deviation: {worst['hdr_max_deviation']:.3f} on "
                     f"{worst['toy']} (target <= {TARGETS['hdr']})")
    return lines


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average": os.getloadavg()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="moons and 8gaussians; fast, default and baselines; 5k test points")
    p.add_argument("--toys", nargs="+", choices=list(TOYS), help="toys to run (default: all)")
    p.add_argument("--models", nargs="+", help=f"models among {[*FLOW_MODELS, *BASELINES]} "
                   "and --model names")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field of every flow, e.g. steps=2000")
    p.add_argument("--model", action="append", default=[], metavar="NAME=JSON",
                   help='add a flow: TrainConfig overrides, e.g. w128=\'{"hidden": [128, 128]}\'')
    p.add_argument("--n-test", type=int, help="test points per toy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="train the flows here (cpu, cuda); scoring runs on the CPU")
    p.add_argument("--json", help="write the rows, settings and machine here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    custom = {}
    for spec in args.model:
        name, _, text = spec.partition("=")
        custom[name] = json.loads(text)
    extra = {}
    for spec in args.set:
        key, _, value = spec.partition("=")
        literal = value[:1] in "[{" or value in ("true", "false")
        extra[key] = json.loads(value) if literal else value
    base = QUICK if args.quick else Settings()
    known = {*FLOW_MODELS, *BASELINES, *custom}
    models = tuple(args.models) if args.models else base.models + tuple(custom)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise SystemExit(f"Unknown model(s) {unknown}; expected some of {sorted(known)}")
    n_test = args.n_test or base.n_test
    settings = Settings(toys=tuple(args.toys or base.toys), models=models, n_test=n_test,
                        n_samples=n_test, seed=args.seed, device=args.device)
    info = machine()
    print(f"quality: {len(settings.toys)} toys x {len(models)} models on {info['cores']} cores, "
          f"load {info['load_average'][0]:.1f}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    rows = [row for toy in settings.toys for row in run_toy(toy, settings, extra, custom)]
    info["load_average_end"] = os.getloadavg()
    info["total_seconds"] = time.perf_counter() - started
    print(format_table(rows))
    print()
    print("\n".join(check_targets(rows)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings.__dict__, "set": extra, "custom": custom,
                       "machine": info, "rows": rows}, f, indent=2, default=str)
    return rows


if __name__ == "__main__":
    main()
