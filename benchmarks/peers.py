"""The same RealNVP in realnvp, zuko, nflows, normflows and plain PyTorch, behind one interface.

Every builder makes ``n_layers`` affine couplings that alternate which half of the
features they transform, each with its own conditioner MLP
``kept -> hidden[0] -> hidden[1] -> 2 * transformed`` (ReLU), on a standard normal base,
trained with Adam (lr 1e-3) on the mean negative log-likelihood. What each library does
inside a coupling (how the log-scale is bounded, how halves are split) is its own; the
network sizes, and so the matmul FLOPs, are the same. The plain PyTorch model is written
the way notebooks write it, multiplying by the mask: its conditioner sees all ``dim``
features (half of them zeroed) and emits ``2 * dim`` values, so it has a few more
parameters (``n_params`` says how many).

A library that is not installed is reported by :func:`available` and skipped.

Example:
    >>> import torch
    >>> from benchmarks.peers import build
    >>> model = build("plain", dim=2)
    >>> model.train_step(torch.randn(16, 2))
    >>> model.log_prob(torch.randn(3, 2)).shape
    torch.Size([3])
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["LIBRARIES", "PEERS", "Model", "available", "build", "linear_flops"]

LIBRARIES = ("realnvp", "zuko", "nflows", "normflows", "plain")
"""Everything :func:`build` can make; ``plain`` is hand-written PyTorch."""

PEERS = ("zuko", "nflows", "normflows")
"""The published libraries realnvp is compared against."""

_MODULE = {"realnvp": "realnvp", "zuko": "zuko", "nflows": "nflows", "normflows": "normflows",
           "plain": "torch"}


@dataclass
class Model:
    """One library's flow behind the interface the benchmark times.

    ``train_step(x)`` is one optimiser step on the mean NLL of batch ``x``;
    ``log_prob(x)`` and ``sample(n)`` are called the way a user calls them, and the
    benchmark wraps them in ``torch.inference_mode()``.
    """

    name: str
    module: nn.Module
    train_step: Callable[[Tensor], None]
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def available(name: str) -> bool:
    """True when library ``name`` can be imported."""
    return importlib.util.find_spec(_MODULE[name]) is not None


def linear_flops(module: nn.Module) -> int:
    """Matmul FLOPs of one forward pass per sample: ``2 * in * out`` summed over all weights.

    Each weight matrix of a coupling flow multiplies every sample once per pass, so
    ``2 * numel`` over the matrix-shaped parameters is the forward cost of one point
    (libraries use their own Linear classes, so parameters are counted, not modules);
    elementwise work (exp, tanh, adds) is left out.
    """
    return sum(2 * p.numel() for p in module.parameters() if p.ndim >= 2)


def build(
    name: str,
    dim: int,
    n_layers: int = 8,
    hidden: Sequence[int] = (64, 64),
    lr: float = 1e-3,
    seed: int = 0,
) -> Model:
    """Build library ``name``'s RealNVP on ``dim`` features with an Adam optimiser.

    Raises ``ImportError`` when the library is not installed and ``ValueError`` for an
    unknown name.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Expected a library in {list(LIBRARIES)}; got {name!r}")
    if not available(name):
        raise ImportError(f"{name} is not installed (pip install -e '.[bench]')")
    torch.manual_seed(seed)
    return _BUILDERS[name](dim, n_layers, tuple(hidden), lr)


def _adam_step(module: nn.Module, loss_fn: Callable[[Tensor], Tensor], lr: float,
               ) -> Callable[[Tensor], None]:
    """The plain training step every library gets: zero_grad, mean NLL, backward, Adam."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def train_step(x: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        optimizer.step()

    return train_step


def _mlp(n_in: int, n_out: int, hidden: tuple[int, ...], zero_last: bool = True) -> nn.Sequential:
    sizes = [n_in, *hidden, n_out]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers[:-1])
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


# --- realnvp ---------------------------------------------------------------------------


def _realnvp(dim: int, n_layers: int, hidden: tuple[int, ...], lr: float) -> Model:
    import realnvp

    flow = realnvp.RealNVP(dim, n_layers=n_layers, hidden=hidden)
    step, note = _realnvp_train_step(flow, lr)
    return Model("realnvp", flow, step, flow.log_prob, flow.sample, note)


def _realnvp_train_step(flow: nn.Module, lr: float) -> tuple[Callable[[Tensor], None], str]:
    """realnvp's training step: the library's fast per-step function when it has one.

    HOOK for the fast path: ``realnvp.training`` is expected to expose a reusable
    per-step function (the one ``realnvp.fit`` runs). Until it exists, realnvp is
    timed with the same plain Adam loop as the peers, and the note says so.
    """
    try:
        from realnvp import training
    except ImportError:
        training = None
    make = getattr(training, "make_train_step", None) if training is not None else None
    if make is not None:
        return make(flow, lr=lr), "realnvp.training.make_train_step"
    return (_adam_step(flow, lambda x: -flow.log_prob(x).mean(), lr),
            "same Adam loop as the peers (no realnvp.training.make_train_step yet)")


# --- zuko ------------------------------------------------------------------------------


def _zuko(dim: int, n_layers: int, hidden: tuple[int, ...], lr: float) -> Model:
    import zuko

    # zuko.flows.RealNVP = NICE with MonotonicAffineTransform couplings on alternating
    # masks (arange(dim) % 2 == i % 2), one zuko.nn.MLP (ReLU) per coupling, DiagNormal base.
    flow = zuko.flows.RealNVP(features=dim, transforms=n_layers, hidden_features=hidden)

    def log_prob(x: Tensor) -> Tensor:
        return flow().log_prob(x)

    def sample(n: int) -> Tensor:
        return flow().sample((n,))

    return Model("zuko", flow, _adam_step(flow, lambda x: -log_prob(x).mean(), lr),
                 log_prob, sample)


# --- nflows ----------------------------------------------------------------------------


def _nflows(dim: int, n_layers: int, hidden: tuple[int, ...], lr: float) -> Model:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform
    from nflows.utils.torchutils import create_alternating_binary_mask

    def net(n_in: int, n_out: int) -> nn.Module:
        # A plain ReLU MLP of the common size (nflows' examples use a ResidualNet).
        return _ContextFree(_mlp(n_in, n_out, hidden))

    transforms = [
        AffineCouplingTransform(create_alternating_binary_mask(dim, even=i % 2 == 0), net)
        for i in range(n_layers)
    ]
    flow = Flow(CompositeTransform(transforms), StandardNormal([dim]))
    return Model("nflows", flow, _adam_step(flow, lambda x: -flow.log_prob(x).mean(), lr),
                 flow.log_prob, flow.sample)


class _ContextFree(nn.Module):
    """nflows calls its conditioner as ``net(x, context)``; this one ignores the context."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


# --- normflows -------------------------------------------------------------------------


def _normflows(dim: int, n_layers: int, hidden: tuple[int, ...], lr: float) -> Model:
    import normflows as nf

    # The README's Real NVP: AffineCouplingBlock (split first/second half, exp scale)
    # followed by a half swap, so consecutive couplings transform alternate halves.
    half = dim // 2
    flows: list[nn.Module] = []
    for i in range(n_layers):
        param_map = nf.nets.MLP([dim - half, *hidden, 2 * half], init_zeros=True)
        flows.append(nf.flows.AffineCouplingBlock(param_map))
        if i < n_layers - 1:
            flows.append(nf.flows.Permute(dim, mode="swap"))
    base = nf.distributions.DiagGaussian(dim, trainable=False)
    model = nf.NormalizingFlow(base, flows)

    def sample(n: int) -> Tensor:
        return model.sample(n)[0]

    return Model("normflows", model,
                 _adam_step(model, lambda x: -model.log_prob(x).mean(), lr),
                 model.log_prob, sample,
                 note="" if dim % 2 == 0 else "odd dim: halves differ by one feature")


# --- plain PyTorch ---------------------------------------------------------------------


class PlainRealNVP(nn.Module):
    """RealNVP as written in a notebook: multiply by the mask, one MLP per coupling.

    ``y = m * x + (1 - m) * (x * exp(s) + t)`` with ``(s, t) = net(m * x)``.
    """

    def __init__(self, dim: int, n_layers: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.dim = dim
        masks = [(torch.arange(dim) % 2 == i % 2).float() for i in range(n_layers)]
        self.register_buffer("masks", torch.stack(masks))
        self.nets = nn.ModuleList(_mlp(dim, 2 * dim, hidden) for _ in range(n_layers))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for m, net in zip(self.masks, self.nets, strict=True):
            x_m = x * m
            s, t = net(x_m).chunk(2, dim=1)
            s, t = s * (1 - m), t * (1 - m)
            x = x_m + (1 - m) * (x * torch.exp(s) + t)
            log_det = log_det + s.sum(dim=1)
        return x, log_det

    def log_prob(self, x: Tensor) -> Tensor:
        z, log_det = self(x)
        return -0.5 * (z.square().sum(dim=1) + self.dim * math.log(2 * math.pi)) + log_det

    def sample(self, n: int) -> Tensor:
        z = torch.randn(n, self.dim, device=self.masks.device)
        for m, net in zip(reversed(self.masks), reversed(self.nets), strict=True):
            z_m = z * m
            s, t = net(z_m).chunk(2, dim=1)
            s, t = s * (1 - m), t * (1 - m)
            z = z_m + (1 - m) * ((z - t) * torch.exp(-s))
        return z


def _plain(dim: int, n_layers: int, hidden: tuple[int, ...], lr: float) -> Model:
    model = PlainRealNVP(dim, n_layers, hidden)
    return Model("plain", model, _adam_step(model, lambda x: -model.log_prob(x).mean(), lr),
                 model.log_prob, model.sample,
                 note="mask-multiplying: conditioner sees all dim inputs")


_BUILDERS: dict[str, Callable[..., Model]] = {
    "realnvp": _realnvp,
    "zuko": _zuko,
    "nflows": _nflows,
    "normflows": _normflows,
    "plain": _plain,
}
