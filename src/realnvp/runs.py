"""Run folders: where a training run keeps its model, config, metrics and pictures."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realnvp.flow import Flow, RealNVP
from realnvp.io import atomic_open, atomic_write_bytes, load
from realnvp.mixture import FlowMixture
from realnvp.training import History, TrainConfig

__all__ = ["CONFIG_FILE", "Data", "build_flow", "load_data", "prepare_run_dir",
           "read_config", "reload_data", "toy_test_data", "write_history", "write_json"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"


@dataclass
class Data:
    """Rows to train on, with optional labels (for colouring) and where they came from."""

    x: np.ndarray
    labels: np.ndarray | None
    columns: list[str]
    source: dict[str, Any]

    @property
    def toy(self) -> Any:
        """The toy distribution the rows were drawn from, or None for a file."""
        if self.source.get("kind") != "toy":
            return None
        from realnvp.datasets import get_toy

        return get_toy(self.source["name"])


def load_data(spec: str, columns: Any = None, n: int = 20000, seed: int = 0,
              n_columns: int | None = None) -> Data:
    """A toy name (``moons``...) or a table file (CSV, TSV, NPY, Parquet) as float64 rows."""
    from realnvp.datasets import get_toy

    if is_toy_name(spec):
        if columns:
            raise ValueError(f"--columns applies to files; {spec!r} is a toy data set")
        x, labels = get_toy(spec).sample(int(n), seed=int(seed))
        source = {"kind": "toy", "name": spec, "n": int(n), "seed": int(seed)}
        return Data(x.numpy(), labels.numpy(), ["x", "y"], source)
    path = Path(spec)
    looks_like_file = path.suffix or "/" in spec or path.exists()
    if not looks_like_file:
        get_toy(spec)  # raises "Unknown toy ...; expected one of ..."
    from realnvp.datasets.files import load_table

    table = load_table(path, columns=columns, n_columns=n_columns)
    source = {"kind": "file", "path": str(path.resolve()), "columns": table.columns}
    return Data(table.data, None, list(table.columns), source)


def is_toy_name(spec: str) -> bool:
    """Whether ``spec`` names a toy data set (and no file of that name exists)."""
    from realnvp.datasets import TOYS

    return spec in TOYS and not Path(spec).exists()


def reload_data(source: dict[str, Any], config: TrainConfig) -> Data:
    """The rows a run was trained on, from the ``data`` entry of its ``config.json``."""
    if source["kind"] == "toy":
        return load_data(source["name"], None, source.get("n", config.n_train),
                         source.get("seed", config.seed))
    return load_data(source["path"], source.get("columns"))


def toy_test_data(data: Data, n: int = 20000) -> tuple[np.ndarray, np.ndarray] | None:
    """Fresh samples of the same toy (another seed) and their true log-density."""
    toy = data.toy
    if toy is None:
        return None
    x, _ = toy.sample(n, seed=int(data.source["seed"]) + 10_000)
    return x.numpy(), toy.log_prob(x).numpy()


def build_flow(config: TrainConfig, dim: int) -> Flow | FlowMixture:
    """The flow a config describes, for ``dim`` features: with ``ensemble`` K > 1, a
    mixture of K such flows seeded ``seed``, ``seed + 1``, ..."""
    members = [RealNVP(
        dim=dim, n_layers=config.layers, hidden=tuple(config.hidden), coupling=config.coupling,
        activation=config.activation, scale_bound=config.scale_bound,
        permutation=config.permutation, actnorm=config.actnorm, seed=config.seed + k,
        bins=config.bins, spline_bound=config.spline_bound,
    ) for k in range(config.ensemble)]
    return members[0] if config.ensemble == 1 else FlowMixture(members)


def prepare_run_dir(out: Path, force: bool, data_file: Path | None = None) -> Path:
    """Check that ``out`` may be written: refuse an existing run unless ``force``, and never
    replace a non-empty folder that is not a run (no ``config.json``) or that holds
    ``data_file``, the data being trained on: ``--force`` removes the old folder."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not force:
                raise ValueError(f"{out}: run folder already exists; use --force to overwrite "
                                 "it or --out to choose another")
            if out.resolve() == Path.cwd().resolve():
                raise ValueError(f"{out}: is the current folder; --force will not replace it, "
                                 "so choose another --out")
            if not (out / CONFIG_FILE).is_file():
                raise ValueError(f"{out}: not a realnvp run folder (no {CONFIG_FILE}); --force "
                                 "only replaces runs, so choose another --out")
            if data_file is not None and out.resolve() in data_file.resolve().parents:
                raise ValueError(f"{out}: holds the data file {data_file}; --force would "
                                 "delete it, so choose another --out")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{parent}: not a folder")
    return out


def create_run_dir(out: Path, force: bool) -> Path:
    """Create the (empty) run folder, removing an old run first when ``force``."""
    if out.exists() and force:
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out}: cannot create run folder ({e.strerror or e})") from None
    return out


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (NaN becomes null)."""
    atomic_write_bytes(path, json.dumps(_clean(obj), indent=2).encode() + b"\n")


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_history(path: Path, history: History | list[History]) -> None:
    """``metrics.csv``: step, train NLL, validation NLL, learning rate, elapsed seconds; for
    an ensemble's list of histories, a ``member`` column first (0, 1, ...)."""
    histories = history if isinstance(history, list) else [history]
    several = len(histories) > 1
    with atomic_open(path, "w", newline="") as f:
        f.write(("member," if several else "") + "step,train_nll,val_nll,lr,seconds\n")
        for k, h in enumerate(histories):
            for r in h.records:
                f.write((f"{k}," if several else "") + f"{r['step']},{r['train_nll']:.6f},"
                        f"{r['val_nll']:.6f},{r['lr']:.6g},{r['seconds']:.3f}\n")


def read_config(run: Path) -> dict[str, Any]:
    """The resolved config a run was trained with."""
    path = run / CONFIG_FILE
    if not run.is_dir():
        raise ValueError(f"{run}: no such run folder")
    if not path.is_file():
        raise ValueError(f"{run}: not a run folder (no {CONFIG_FILE})")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable config ({e})") from None
    data = record.get("data") if isinstance(record, dict) else None
    if not (isinstance(data, dict) and isinstance(record.get("config"), dict) and (
            (data.get("kind") == "toy" and isinstance(data.get("name"), str))
            or (data.get("kind") == "file" and isinstance(data.get("path"), str)))):
        raise ValueError(f"{path}: not a realnvp run config (expected 'config' and 'data' "
                         "entries, as `realnvp train` writes)")
    return record


def load_run(run: Path) -> tuple[Flow | FlowMixture, dict[str, Any]]:
    """The trained flow of a run folder and its config."""
    config = read_config(run)
    return load(run), config  # the final model, or the latest checkpoint of an unfinished run


def read_history(run: Path) -> Any:
    """The run's ``metrics.csv`` as a DataFrame, or None."""
    import pandas as pd

    path = run / METRICS_FILE
    return pd.read_csv(path) if path.is_file() else None


def as_tensor(x: np.ndarray, flow: Flow | FlowMixture) -> torch.Tensor:
    """Rows as a tensor in the flow's dtype and device."""
    anchor = flow._anchor()
    return torch.as_tensor(x).to(device=anchor.device, dtype=anchor.dtype)
