"""The training step's forward and backward pass in C, compiled on first use.

The TorchScript training step (:mod:`realnvp.training.fast`) runs about 60 ATen operations
per coupling. At the sizes of low-dimensional flows each is a few microseconds of
dispatch and allocation around less than a microsecond of arithmetic, and each elementwise
step is its own pass over the activations. ``_native.c`` does the same arithmetic in plain
loops, one pass per coupling for the elementwise steps, and hands the products of wide
layers to the BLAS that torch itself links (its ``sgemm_``), on one thread per row part.

The C file ships with the package and is compiled with the system's C compiler the first
time a process needs it (about a second), into a per-user cache keyed by the source, the
compiler and the CPU: ``$REALNVP_CACHE_DIR``, else ``$XDG_CACHE_HOME/realnvp``, else
``~/.cache/realnvp``. Without a compiler, without torch's ``sgemm_`` (a torch build that
does not export it), with ``REALNVP_NATIVE=0`` in the environment or :data:`USE_NATIVE` set
False, the TorchScript step runs instead: same results up to float32 rounding.

Only float32 CPU flows of ReLU affine or rational-quadratic spline couplings and
permutations, with or without a leading standardisation, take this path; the gradients are
checked against autograd in ``tests/test_native.py``. Spline couplings have no TorchScript
step: without this one they train through autograd, 6-10x slower
(``benchmarks/step_time.py --coupling spline --compare native``).

For a spline coupling the C step evaluates each transformed feature's spline over a block
of rows at a time: the softmax bin sizes, their cumulative sums (the knots) and the softplus
knot derivatives, the bin of each input, the value and ``log dy/dx``; the backward pass
computes the same again and takes the gradients through the bin's two knots, the cumulative
sums and the softmax, in closed form.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from realnvp.bijections._kernels import PERMUTE, SPLINE

__all__ = ["USE_NATIVE", "NativeChain", "library"]

USE_NATIVE = os.environ.get("REALNVP_NATIVE", "1").strip() not in ("0", "false", "no", "off")
"""Use the compiled training step where it applies (``REALNVP_NATIVE=0`` turns it off)."""

SOURCE = Path(__file__).with_name("_native.c")
FLAGS = ["-O3", "-fopenmp-simd", "-fPIC", "-shared", "-std=c99"]
"""Compiler flags; ``-march=native`` is added first and dropped if the compiler refuses it."""

_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []

_I64P = ctypes.POINTER(ctypes.c_int64)
_F32P = ctypes.POINTER(ctypes.c_float)


def library() -> ctypes.CDLL | None:
    """The compiled step, built and loaded once per process; None where it cannot be."""
    if not USE_NATIVE:
        return None
    if not _loaded:
        with _lock:
            if not _loaded:
                try:
                    _loaded.append(_load())
                except (OSError, AttributeError, subprocess.SubprocessError):
                    _loaded.append(None)  # e.g. a platform without os.getuid or dlopen
    return _loaded[0]


def _load() -> ctypes.CDLL | None:
    blas = _torch_blas()
    if blas is None:
        return None
    path = _build()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    lib.rnvp_set_blas.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.rnvp_set_blas.restype = None
    lib.rnvp_work_floats.argtypes = [_I64P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _I64P]
    lib.rnvp_work_floats.restype = ctypes.c_int64
    lib.rnvp_train_part.argtypes = [
        _I64P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _I64P, _I64P, _F32P,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_float, ctypes.POINTER(ctypes.c_double)]
    lib.rnvp_train_part.restype = ctypes.c_int
    lib.rnvp_set_blas(*blas)
    return lib


def _torch_blas() -> tuple[int, int | None] | None:
    """Addresses of ``sgemm_`` and (MKL) ``MKL_Set_Num_Threads_Local`` in torch's own
    library, already loaded in this process; None when it exports no ``sgemm_``."""
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        if (lib_dir / name).exists():
            try:
                lib = ctypes.CDLL(str(lib_dir / name))
                sgemm = ctypes.cast(lib.sgemm_, ctypes.c_void_p).value
            except (OSError, AttributeError):
                return None
            threads = getattr(lib, "MKL_Set_Num_Threads_Local", None)  # C interface
            return sgemm, (ctypes.cast(threads, ctypes.c_void_p).value if threads else None)
    return None


def _compiler() -> str | None:
    names = [os.environ.get("CC", ""), (sysconfig.get_config_var("CC") or "").split(" ")[0],
             "cc", "gcc", "clang"]
    for name in names:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu() -> str:
    """The CPU's model and feature flags (``-march=native`` code runs only where built)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def cache_dir() -> Path | None:
    """This user's directory for the compiled library (made if missing), or None."""
    env = os.environ.get("REALNVP_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME")
    options = [Path(env)] if env else []
    options.append(Path(xdg) / "realnvp" if xdg else Path.home() / ".cache" / "realnvp")
    options.append(Path(tempfile.gettempdir()) / f"realnvp-{os.getuid()}")
    for path in options:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.stat().st_uid == os.getuid() and os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    return None


def _build() -> Path | None:
    """The compiled library's path, compiling it first if this cache has none yet."""
    cc = _compiler()
    where = cache_dir()
    if cc is None or where is None:
        return None
    what = [SOURCE.read_bytes(), cc.encode(), _cpu().encode(), platform.platform().encode()]
    for flags in (["-march=native", *FLAGS], FLAGS):
        key = hashlib.sha256(b"\0".join([*what, " ".join(flags).encode()]))
        target = where / f"realnvp_native_{key.hexdigest()[:20]}.so"
        if target.exists():
            return target
        partial = where / f".{target.name}.{os.getpid()}.{threading.get_ident()}"
        try:
            done = subprocess.run([cc, *flags, str(SOURCE), "-o", str(partial), "-lm"],
                                  capture_output=True, timeout=300, check=False)
            if done.returncode == 0:
                os.replace(partial, target)  # atomic: another process may build it too
                return target
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            partial.unlink(missing_ok=True)
    return None


class NativeChain:
    """A gathered chain (``realnvp.training.fast._Chain``'s columns) as the C step takes it.

    Raises ``ValueError`` when a layer is not one it can do (a tanh conditioner, a float64
    or non-CPU parameter, an unexpected shape).
    """

    def __init__(self, lib: ctypes.CDLL, columns: list[list[Any]], dim: int) -> None:
        kinds, kept, transformed, _, _, params, input_bounds, scale_bounds, extra, relus = columns
        meta: list[int] = []
        index: list[int] = []
        widths: list[int] = []
        bounds: list[float] = []
        self.params: list[Tensor] = []
        for i, kind in enumerate(kinds):
            index += kept[i].tolist() + transformed[i].tolist()
            if kind == PERMUTE:
                meta += [PERMUTE, 0, 0, 0, 0]
                continue
            if not relus[i]:
                raise ValueError("the compiled step takes ReLU conditioners only")
            layer = params[i]
            bins = int(extra[i]) if kind == SPLINE else 0  # a spline's entry holds its bins
            meta += [kind, kept[i].numel(), transformed[i].numel(), len(layer) // 2, bins]
            for k in range(len(layer) // 2):
                widths += list(layer[2 * k].shape)
            bounds += [input_bounds[i], scale_bounds[i]]
            self.params += layer
        self.lib, self.dim, self.n_layers = lib, dim, len(kinds)
        self.meta = (ctypes.c_int64 * len(meta))(*meta)
        self.index = (ctypes.c_int64 * max(1, len(index)))(*index)
        self.widths = (ctypes.c_int64 * max(1, len(widths)))(*widths)
        self.bounds = (ctypes.c_float * max(1, len(bounds)))(*bounds)
        self.shapes = [tuple(p.shape) for p in self.params]
        self._pointers: dict[int, tuple[list[int], Any]] = {}
        self._check(self.params)

    def _check(self, tensors: list[Tensor]) -> None:
        for t, shape in zip(tensors, self.shapes, strict=True):
            if (t.dtype != torch.float32 or t.device.type != "cpu" or tuple(t.shape) != shape
                    or not t.is_contiguous()):
                raise ValueError("the compiled step takes contiguous float32 CPU tensors")

    def pointers(self, tensors: list[Tensor]) -> Any:
        """A C array of the tensors' data pointers (validated again when one has moved)."""
        addresses = list(map(Tensor.data_ptr, tensors))
        kept = self._pointers.get(id(tensors))
        if kept is None or kept[0] != addresses:
            self._check(tensors)
            kept = (addresses, (ctypes.c_void_p * max(1, len(addresses)))(*addresses))
            self._pointers[id(tensors)] = kept
        return kept[1]

    def work_floats(self, rows: int) -> int:
        """Floats of workspace one call on ``rows`` rows needs."""
        return int(self.lib.rnvp_work_floats(self.meta, self.n_layers, self.dim, rows,
                                             self.widths))

    def run(self, x: Tensor, loc: Tensor | None, scale: Tensor | None, grads: list[Tensor],
            work: Tensor, batch: int) -> float:
        """Forward and backward of rows ``x`` of a batch of ``batch`` rows: writes their
        share of the mean NLL's gradient into ``grads`` (flat, in parameter order) and
        returns their summed loss, less the constant terms."""
        loss = ctypes.c_double()
        status = self.lib.rnvp_train_part(
            self.meta, self.n_layers, self.dim, x.shape[0], self.index, self.widths,
            self.bounds, self.pointers(self.params), self.pointers(grads), x.data_ptr(),
            None if loc is None else loc.data_ptr(), None if scale is None else scale.data_ptr(),
            work.data_ptr(), 1.0 / batch, ctypes.byref(loss))
        if status == -2:
            raise MemoryError("the compiled training step ran out of memory")
        if status != 0:
            raise RuntimeError("the compiled training step has no BLAS")
        return loss.value
