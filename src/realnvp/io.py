"""Saving and loading flows: safetensors weights plus a JSON config, never pickle."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from realnvp import __version__
from realnvp.flow import ARCHITECTURES, Flow
from realnvp.mixture import FlowMixture

__all__ = [
    "MODEL_FILE",
    "ModelFileError",
    "atomic_open",
    "atomic_write_bytes",
    "load",
    "resolve_model_path",
    "save",
]

MODEL_FILE = "model.safetensors"
FORMAT = "realnvp-flow"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


class ModelFileError(ValueError):
    """A model file is missing, unreadable, corrupt, foreign or does not match its config."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, flush, fsync, rename.

    A crash at any moment leaves either the old file or the new one, never a mix.
    """
    with atomic_open(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it to ``path``.

    On any error (or Ctrl-C) the temporary file is removed and ``path`` is left as it was,
    so a reader never sees a half-written file.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_open(target) as f:
        ...     _ = f.write("hello")
        >>> target.read_text()
        'hello'
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only or virtual folder (/proc): name the user's path
        raise OSError(f"{path}: cannot write there ({e.strerror})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def to_bytes(flow: Flow | FlowMixture, extra: dict[str, Any] | None = None) -> bytes:
    """Serialise ``flow`` (weights, buffers, config) to safetensors bytes.

    A :class:`~realnvp.mixture.FlowMixture` is stored as its members' configs, under
    ``"mixture"``, and their weights, under ``members.<k>.``.
    """
    members = list(flow.members) if isinstance(flow, FlowMixture) else [flow]
    if any(m.spec is None or m.spec.get("architecture") not in ARCHITECTURES for m in members):
        raise ValueError(
            "Expected a flow built by a registered architecture (e.g. realnvp.RealNVP); "
            "got a hand-assembled Flow, which cannot be rebuilt from a config"
        )
    state = {k: v.detach().cpu().clone() for k, v in flow.state_dict().items()}
    dtype = next((str(v.dtype).removeprefix("torch.") for v in state.values()
                  if v.is_floating_point()), "float32")
    config = {"format": FORMAT, "realnvp_version": __version__, "dtype": dtype, **flow.spec}
    metadata = {"realnvp": json.dumps(config)}
    if extra:
        metadata["extra"] = json.dumps(extra)
    return st_save(state, metadata=metadata)


def save(flow: Flow | FlowMixture | Any, path: str | os.PathLike[str],
         extra: dict[str, Any] | None = None) -> Path:
    """Save ``flow`` to one safetensors file, atomically; returns the path written.

    ``path`` may be a file (``.safetensors`` is appended when it has no suffix) or an
    existing folder (then ``model.safetensors`` inside it). The JSON config that rebuilds
    the flow, and the realnvp version, are stored in the file's header.

    ``flow`` may also be a fitted :class:`realnvp.RealNVPDensity`: its flow is saved, with
    its parameters, ``offset_`` and feature names in ``extra``
    (``realnvp.RealNVPDensity.load`` rebuilds it; :func:`load` gives its flow).

    Example:
        >>> import tempfile, realnvp
        >>> folder = tempfile.mkdtemp()
        >>> p = realnvp.save(realnvp.RealNVP(dim=2), folder + "/model")
        >>> realnvp.load(p).dim
        2
    """
    # --- RealNVPDensity (estimator.py): save its flow_, its own state in ``extra`` ---
    if not isinstance(flow, (Flow, FlowMixture)) and hasattr(flow, "_realnvp_extra"):
        extra = {**flow._realnvp_extra(), **(extra or {})}
        flow = flow.flow_
    # --- end RealNVPDensity ---
    target = Path(path)
    if target.is_dir():
        target = target / MODEL_FILE
    elif target.suffix == "":
        target = target.with_suffix(".safetensors")
    if not target.parent.is_dir():
        raise ModelFileError(f"{target.parent}: folder does not exist")
    atomic_write_bytes(target, to_bytes(flow, extra))
    return target


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """The model file behind ``path``: a file, ``path.safetensors``, or a run folder's model."""
    p = Path(path)
    if p.is_dir():
        folder = p
        p = folder / MODEL_FILE
        if not p.exists() and (folder / "checkpoint.safetensors").is_file():
            p = folder / "checkpoint.safetensors"  # an unfinished run: its latest checkpoint
        elif not p.exists() and (folder / "members").is_dir():
            raise ModelFileError(f"{folder}: an unfinished ensemble run (no {MODEL_FILE} yet); "
                                 f"finish it with: realnvp train --resume {folder}")
    elif not p.exists() and p.suffix == "" and p.with_suffix(".safetensors").exists():
        p = p.with_suffix(".safetensors")
    if not p.exists():
        raise ModelFileError(f"{p}: no such model file")
    if not p.is_file():
        raise ModelFileError(f"{p}: not a regular file")
    return p


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
         ) -> Flow | FlowMixture:
    """Load a flow saved by :func:`save` (a file, or a run folder written by ``realnvp train``);
    a mixture of flows (``realnvp train --ensemble K``) loads as a
    :class:`~realnvp.mixture.FlowMixture`.

    Only safetensors files are read: a pickle or ``torch.save`` file is refused, and no
    code from the file ever runs. Any problem raises :class:`ModelFileError` naming the file.
    """
    flow, _ = load_with_extra(path, map_location)
    return flow


def load_with_extra(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[Flow | FlowMixture, dict[str, Any]]:
    """Like :func:`load`, also returning the ``extra`` metadata saved with the flow."""
    p = resolve_model_path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{p}: cannot read ({e.strerror or e})") from None
    flow, extra = from_bytes(data, str(p))
    return flow.to(map_location), extra


def from_bytes(data: bytes, name: str = "<bytes>") -> tuple[Flow | FlowMixture, dict[str, Any]]:
    """Rebuild a flow from bytes written by :func:`to_bytes`."""
    if not data:
        raise ModelFileError(f"{name}: empty file, not a realnvp model")
    looks_safetensors = len(data) > 8 and data[8:9] == b"{"
    if not looks_safetensors and (data[:1] == b"\x80" or data[:4] == b"PK\x03\x04"):
        raise ModelFileError(
            f"{name}: looks like a pickle or torch.save file; realnvp only loads safetensors "
            "files and never unpickles (pickles can run code)"
        )
    try:
        state = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        metadata = header.get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise ModelFileError(f"{name}: not a valid safetensors file ({_first_line(e)})") from None
    if "checkpoint" in metadata:  # a training checkpoint: its model's weights
        state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    if "realnvp" not in metadata:
        raise ModelFileError(f"{name}: a safetensors file, but not a realnvp model (no config)")
    try:
        config = json.loads(metadata["realnvp"])
        extra = json.loads(metadata.get("extra", "{}"))
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{name}: corrupt config ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFileError(f"{name}: not a realnvp model (format {config.get('format')!r})")
    dtype = _DTYPES.get(config.get("dtype", "float32"), torch.float32)
    specs = config.get("mixture")
    if specs is None:
        flow: Flow | FlowMixture = _build(config, state, name, dtype)
    else:
        if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
            raise ModelFileError(f"{name}: corrupt mixture config (expected a list of flows)")
        prefixes = tuple(f"members.{k}." for k in range(len(specs)))
        stray = [key for key in state if not key.startswith(prefixes)]
        if stray:
            raise ModelFileError(f"{name}: weights do not match the config (unexpected {stray[0]})")
        flow = FlowMixture([
            _build(spec, {key[len(prefix):]: v for key, v in state.items()
                          if key.startswith(prefix)}, name, dtype)
            for spec, prefix in zip(specs, prefixes, strict=True)])
    flow.eval()
    return flow, extra if isinstance(extra, dict) else {}


def _build(config: dict[str, Any], state: dict[str, torch.Tensor], name: str,
           dtype: torch.dtype) -> Flow:
    """The flow a (member's) config describes, with ``state`` loaded and checked finite."""
    arch, kwargs = config.get("architecture"), config.get("kwargs")
    if arch not in ARCHITECTURES or not isinstance(kwargs, dict):
        raise ModelFileError(f"{name}: unknown architecture {arch!r}")
    _check_sizes(kwargs, state, name)
    try:
        flow = ARCHITECTURES[arch](**kwargs)
    except (TypeError, ValueError, RuntimeError, MemoryError, OverflowError) as e:
        raise ModelFileError(f"{name}: config does not build a flow ({e})") from None
    flow = flow.to(dtype)
    try:
        flow.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(
            f"{name}: weights do not match the config ({_first_line(e, 300)})"
        ) from None
    for key, value in flow.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{name}: non-finite values in {key}")
    return flow


def _check_sizes(kwargs: dict[str, Any], state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse a config that asks for more than the file's weights hold, before building it.

    Every size a realnvp config names (dim, hidden widths, bins, context features) is a
    dimension of some stored tensor, and every layer stores at least one tensor; a crafted
    header asking for more would otherwise allocate gigabytes before the mismatch shows.
    """
    limit = max([len(state), *(max(v.shape, default=1) for v in state.values())])
    for key, value in kwargs.items():
        if key == "seed":
            continue
        for n in value if isinstance(value, list) else [value]:
            if isinstance(n, int) and not isinstance(n, bool) and n > limit:
                raise ModelFileError(f"{name}: config asks for {key}={n}, more than the file's "
                                     f"weights hold (largest dimension {limit})")


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")
