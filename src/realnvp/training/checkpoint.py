"""Crash-safe training checkpoints: one safetensors file, written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from realnvp.flow import Flow
from realnvp.io import FORMAT, ModelFileError, atomic_write_bytes
from realnvp.training.fit import History, NonFiniteLossError

__all__ = ["CHECKPOINT_FILE", "Restored", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class Restored:
    """Training state read back from a checkpoint."""

    step: int
    history: History
    best_state: dict[str, Tensor] | None
    generator_state: Tensor
    batch_order: Tensor
    batch_pos: int


def save_checkpoint(
    folder: str | Path, flow: Flow, optimizer: Any, scheduler: Any, generator: torch.Generator,
    batches: Any, step: int, history: History, best_state: dict[str, Tensor] | None,
) -> Path:
    """Write model, optimizer, scheduler, RNG, data order, step, history and best weights.

    The file is written to a temporary name, fsynced and renamed, so a crash at any moment
    leaves the previous complete checkpoint in place. It also holds the flow's config, so
    ``realnvp.load`` can open it as a model.
    """
    tensors: dict[str, Tensor] = {}
    for k, v in flow.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().clone()
    if best_state is not None:
        for k, v in best_state.items():
            tensors[f"best.{k}"] = v.detach().cpu().clone()
    opt_state = optimizer.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    bad = next((k for k, v in tensors.items()
                if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise NonFiniteLossError(f"step {step}: non-finite values in {bad}; checkpoint not "
                                 "written (the previous one is kept)")
    tensors["rng.generator"] = generator.get_state()
    tensors["batches.order"] = batches.order.cpu().contiguous()
    dtype = str(next(iter(flow.state_dict().values())).dtype).removeprefix("torch.")
    floating = [v for v in flow.state_dict().values() if v.is_floating_point()]
    if floating:
        dtype = str(floating[0].dtype).removeprefix("torch.")
    meta = {
        "step": step,
        "history": history.state(),
        "batch_pos": batches.pos,
        "param_groups": opt_state["param_groups"],
        "scheduler": scheduler.state_dict(),
        "has_best": best_state is not None,
    }
    config = {"format": FORMAT, "dtype": dtype, "checkpoint": True, **(flow.spec or {})}
    metadata = {"realnvp": json.dumps(config), "checkpoint": json.dumps(meta)}
    path = Path(folder) / CHECKPOINT_FILE
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))
    return path


def load_checkpoint(folder: str | Path, flow: Flow, optimizer: Any, scheduler: Any) -> Restored:
    """Restore ``flow``, ``optimizer`` and ``scheduler`` in place; return the rest."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: no checkpoint to resume from")
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        meta = json.loads(header["__metadata__"]["checkpoint"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: corrupt checkpoint ({e})") from None
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        flow.load_state_dict(model)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: checkpoint does not match this model ({e})") from None
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    if best is not None:
        device = next(iter(flow.state_dict().values())).device
        best = {k: v.to(device) for k, v in best.items()}
    return Restored(
        step=int(meta["step"]),
        history=History.from_state(meta["history"]),
        best_state=best,
        generator_state=tensors["rng.generator"],
        batch_order=tensors["batches.order"],
        batch_pos=int(meta["batch_pos"]),
    )
