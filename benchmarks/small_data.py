"""Small data sets: the default flow with weight decay ``k / n_train``, against the baselines.

With a few hundred rows the default flow (32 x 32-32, lr 5e-3) overfits within 100 steps.
This probe splits each data set into train / validation / test rows, fits ``realnvp.fit``
with Adam weight decay ``k / n_train`` for each ``--decay`` factor ``k`` (a Gaussian prior
on the weights whose pull fades as the data grows; ``k = 0`` is no decay), fits the
validation-tuned GaussianMixture and KernelDensity on the same train / validation rows,
and prints the test NLL in nats of each.

Data sets: ``toy:n`` draws ``n`` rows of a toy (test: 20,000 fresh rows); ``iris``,
``wine``, ``cancer`` (breast cancer) and ``diabetes`` are scikit-learn's bundled tables,
shuffled per seed and split 75 / 25 into fit / test rows. Of the fit rows 10% validate,
as in ``realnvp train``. Usage (from the repository root; about a minute per fit on one
thread)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/small_data.py moons:300 cancer wine \\
        --decay 0 3 --seeds 0 1

``--estimator '{}'`` fits the scikit-learn estimator ``RealNVPDensity`` with its defaults
(or the parameters given as JSON) on the same fit rows instead; it holds out its own 10%.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import realnvp
from realnvp.baselines import fit_gaussian_mixture, fit_kernel_density
from realnvp.datasets import get_toy
from realnvp.training import TrainConfig

TABLES = ("iris", "wine", "cancer", "diabetes")


DEFAULTS = TrainConfig()


def data(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit rows, test rows)`` of a data set named as in the module docstring."""
    if name in TABLES:
        from sklearn import datasets

        loader = {"iris": datasets.load_iris, "wine": datasets.load_wine,
                  "cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}
        x = loader[name]().data.astype(np.float32)
        order = np.random.default_rng(seed).permutation(len(x))
        k = int(0.75 * len(x))
        return x[order[:k]], x[order[k:]]
    toy_name, n = name.split(":")
    toy = get_toy(toy_name)
    train, _ = toy.sample(int(n), seed=1 + seed)
    test, _ = toy.sample(20000, seed=100)
    return train.numpy().astype(np.float32), test.numpy().astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="*", default=["moons:300", "cancer", "wine"])
    p.add_argument("--decay", type=float, nargs="+", default=[0.0, 3.0],
                   help="weight decay factors k (decay = k / training rows)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    p.add_argument("--layers", type=int, default=DEFAULTS.layers,
                   help="couplings (default: the default's)")
    p.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    p.add_argument("--estimator", default=None, metavar="JSON",
                   help="instead, fit RealNVPDensity(**JSON) on the fit rows (its own split); "
                        "'{}' for its defaults")
    args = p.parse_args()
    torch.set_num_threads(1)
    for name in args.datasets:
        for seed in args.seeds:
            fit_rows, test = data(name, seed)
            if args.estimator is not None:
                params = {"random_state": seed, **json.loads(args.estimator)}
                start = time.perf_counter()
                est = realnvp.RealNVPDensity(**params).fit(fit_rows)
                print(f"{name:14s} seed {seed}: RealNVPDensity {-est.score(test):8.3f} "
                      f"({est.n_iter_} steps, {time.perf_counter() - start:.0f} s)", flush=True)
                continue
            order = torch.randperm(len(fit_rows), generator=torch.Generator().manual_seed(seed))
            n_val = int(round(0.1 * len(fit_rows)))
            val, train = fit_rows[order[:n_val].numpy()], fit_rows[order[n_val:].numpy()]
            cells = []
            for k in args.decay:
                flow = realnvp.RealNVP(dim=train.shape[1], n_layers=args.layers,
                                       hidden=tuple(args.hidden), scale_bound=2.0)
                start = time.perf_counter()
                history = realnvp.fit(flow, train, val_data=val, steps=args.steps,
                                      clip_grad=3.0, weight_decay=k / len(train), seed=seed,
                                      progress=False)
                with torch.no_grad():
                    nll = -flow.log_prob(torch.as_tensor(test)).mean().item()
                cells.append(f"k={k:g} {nll:8.3f} (step {history.best_step}, "
                             f"{time.perf_counter() - start:.0f} s)")
            for baseline in (fit_gaussian_mixture(train, val, seed=seed),
                             fit_kernel_density(train, val, seed=seed)):
                nll = -float(np.mean(baseline.score_samples(test)))
                cells.append(f"{baseline.name} {nll:8.3f}")
            print(f"{name:14s} n={len(train)} seed {seed}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
