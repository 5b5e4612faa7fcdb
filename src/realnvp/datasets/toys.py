"""Eight 2-D toy distributions (the FFJORD set) that sample and give their exact log-density."""

from __future__ import annotations

import abc
import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from realnvp._validation import check_features

__all__ = [
    "TOYS",
    "Bounds",
    "Checkerboard",
    "Circles",
    "EightGaussians",
    "Moons",
    "Pinwheel",
    "Rings",
    "SwissRoll",
    "Toy",
    "TwoSpirals",
    "get_toy",
    "list_toys",
]

Bounds = tuple[tuple[float, float], tuple[float, float]]
"""A plotting box ``((xmin, xmax), (ymin, ymax))``."""

_F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)
_SQRT2 = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------


class Toy(abc.ABC):
    """A 2-D distribution that can be sampled and whose true log-density is known.

    Subclasses set ``name``, ``description`` and ``bounds`` and implement ``_sample`` and
    ``_log_prob``; the public :meth:`sample` and :meth:`log_prob` validate their input
    first; :class:`EightGaussians` is the shortest example. Everything is float64 and
    every random number comes from a ``torch.Generator``, never from the global RNG.

    Example:
        >>> toy = get_toy("8gaussians")
        >>> x, labels = toy.sample(5, seed=0)
        >>> x.shape, x.dtype, labels.shape
        (torch.Size([5, 2]), torch.float64, torch.Size([5]))
        >>> toy.log_prob(x).shape
        torch.Size([5])
    """

    name: ClassVar[str]
    description: ClassVar[str]
    bounds: ClassVar[Bounds]

    def sample(
        self, n: int, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` points: ``(x, labels)``, float64 ``(n, 2)`` and long ``(n,)``.

        ``labels`` says which component (arc, arm, ring, square...) each point came from,
        for colouring pictures. Give ``seed`` or ``generator`` (not both) to reproduce a
        draw; with neither, a fresh generator is seeded from the operating system.
        """
        count = _check_n(n)
        return self._sample(count, _make_generator(seed, generator))

    def log_prob(self, x: Tensor) -> Tensor:
        """The true log-density at each row of ``x`` (batch, 2), computed in float64.

        Returns a float64 ``(batch,)`` tensor on ``x``'s device: ``-inf`` where the density
        is zero or at infinite points, NaN at rows holding a NaN.
        """
        check_features(x, 2)
        x = x.to(_F64)
        out = torch.full(x.shape[:1], math.nan, dtype=_F64, device=x.device)
        finite = torch.isfinite(x).all(-1)
        if bool(finite.any()):
            out[finite] = self._log_prob(x[finite])
        out[torch.isinf(x).any(-1) & ~torch.isnan(x).any(-1)] = -math.inf
        return out

    def __repr__(self) -> str:
        return f"get_toy({self.name!r})"

    @abc.abstractmethod
    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``n >= 1`` points with ``generator``."""

    @abc.abstractmethod
    def _log_prob(self, x: Tensor) -> Tensor:
        """Log-density at finite float64 points ``x`` (batch, 2)."""


def _check_n(n: object) -> int:
    count = _as_int(n, "n")
    if count < 1:
        raise ValueError(f"Expected n >= 1; got {count}")
    return count


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"Expected {what} to be an int; got bool")
    try:
        return operator.index(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"Expected {what} to be an int; got {type(value).__name__}") from None


def _make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if seed is not None and generator is not None:
        raise ValueError("Expected seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Expected a torch.Generator; got {type(generator).__name__}")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()  # from the operating system's entropy; the global RNG is untouched
    else:
        g.manual_seed(_as_int(seed, "seed"))
    return g


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=_F64, device=g.device)


def _rand(g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=g, dtype=_F64, device=g.device)


def _balanced_labels(n: int, k: int, g: torch.Generator) -> Tensor:
    """``n`` labels in ``0..k-1``, ``n // k`` of each (the first ``n % k`` get one more),
    in random order, so each point is marginally an equal-weight mixture draw."""
    return torch.randperm(n, generator=g, device=g.device) % k


def _polar(x: Tensor) -> tuple[Tensor, Tensor]:
    return torch.linalg.vector_norm(x, dim=-1), torch.atan2(x[..., 1], x[..., 0])


def _unit(angle: Tensor) -> Tensor:
    return torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)


def _scatter_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    """``out[i] = log sum_{j: index[j] = i} exp(values[j])`` (``-inf`` for empty groups)."""
    top = torch.full((size,), -math.inf, dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, index, values, reduce="amax")
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros_like(top).index_add_(0, index, torch.exp(values - safe[index]))
    return safe + torch.log(total)


# ---------------------------------------------------------------------------------------
# Closed-form toys
# ---------------------------------------------------------------------------------------


class EightGaussians(Toy):
    r"""Eight Gaussians on a circle: FFJORD's ``8gaussians``.

    .. math:: p(x) = \frac18 \sum_{k=0}^{7} \mathcal N(x;\ \mu_k,\ s^2 I),\qquad
              \mu_k = \tfrac{4}{1.414}(\cos\tfrac{k\pi}{4}, \sin\tfrac{k\pi}{4}),\quad
              s = \tfrac{0.5}{1.414}

    (FFJORD divides by 1.414, not :math:`\sqrt2`; we keep its numbers.) The log-density
    is exact, a ``logsumexp`` over the components. Labels are the component ``k``.

    Example:
        >>> toy = EightGaussians()
        >>> x, labels = toy.sample(3, seed=0)
        >>> toy.log_prob(toy.centres[:1]).item() > toy.log_prob(torch.zeros(1, 2)).item()
        True
    """

    name = "8gaussians"
    description = "eight Gaussian blobs evenly spaced on a circle of radius 2.83"
    bounds: ClassVar[Bounds] = ((-4.5, 4.5), (-4.5, 4.5))
    scale: ClassVar[float] = 4.0 / 1.414
    std: ClassVar[float] = 0.5 / 1.414

    @property
    def centres(self) -> Tensor:
        """The eight means, ``(8, 2)``."""
        return self.scale * _unit(torch.arange(8, dtype=_F64) * (math.pi / 4))

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = _balanced_labels(n, 8, generator)
        noise = _randn(generator, n, 2)
        return self.centres.to(labels.device)[labels] + self.std * noise, labels

    def _log_prob(self, x: Tensor) -> Tensor:
        sq = (x[:, None, :] - self.centres.to(x.device)).square().sum(-1)
        var = self.std**2
        return torch.logsumexp(-0.5 * sq / var, dim=1) - math.log(8) - _LOG_2PI - math.log(var)


class _RingMixture(Toy):
    r"""Equal mixture of circles of radius :math:`R_k`, uniform in angle, blurred by
    isotropic Gaussian noise of standard deviation :math:`s`.

    Averaging the Gaussian over the circle's angle gives a closed form with the modified
    Bessel function :math:`I_0`; in log space with ``i0e(z) = exp(-z) I0(z)`` it is

    .. math:: \log p_R(x) = -\log(2\pi s^2) - \frac{(r - R)^2}{2 s^2}
              + \log \mathrm{i0e}\!\left(\frac{rR}{s^2}\right),\qquad r = |x|,

    exact and stable for any :math:`r`.
    """

    radii: ClassVar[tuple[float, ...]]
    noise: ClassVar[float]

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = _balanced_labels(n, len(self.radii), generator)
        angle = 2 * math.pi * _rand(generator, n)
        noise = _randn(generator, n, 2)
        radius = torch.tensor(self.radii, dtype=_F64, device=labels.device)[labels]
        return radius[:, None] * _unit(angle) + self.noise * noise, labels

    def _log_prob(self, x: Tensor) -> Tensor:
        r = torch.linalg.vector_norm(x, dim=-1)[:, None]
        radii = torch.tensor(self.radii, dtype=_F64, device=x.device)
        var = self.noise**2
        log_ring = (
            -0.5 * (r - radii).square() / var
            + torch.log(torch.special.i0e(r * radii / var))
            - _LOG_2PI
            - math.log(var)
        )
        return torch.logsumexp(log_ring, dim=1) - math.log(len(self.radii))


class Circles(_RingMixture):
    r"""Two concentric circles: scikit-learn ``make_circles(factor=0.5, noise=0.08)`` times 3.

    Radii 3 (label 0) and 1.5 (label 1), half the points on each, noise
    :math:`s = 0.24`. Angles are drawn iid uniform (``make_circles`` uses an even
    spacing). The log-density is exact (the :math:`I_0` form of ``_RingMixture``).

    Example:
        >>> toy = Circles()
        >>> x, labels = toy.sample(4, seed=0)
        >>> bool(toy.log_prob(torch.tensor([[3.0, 0.0]])) > toy.log_prob(torch.zeros(1, 2)))
        True
    """

    name = "circles"
    description = "two concentric noisy circles of radius 3 and 1.5"
    bounds: ClassVar[Bounds] = ((-4.5, 4.5), (-4.5, 4.5))
    radii = (3.0, 1.5)
    noise = 0.24


class Rings(_RingMixture):
    r"""Four concentric rings: FFJORD's ``rings``.

    Radii 3, 2.25, 1.5, 0.75 (labels 0 to 3), a quarter of the points on each, noise
    :math:`s = 0.08`. Angles are iid uniform (FFJORD spaces them evenly). The
    log-density is exact (the :math:`I_0` form of ``_RingMixture``).

    Example:
        >>> toy = Rings()
        >>> x, labels = toy.sample(4, seed=0)
        >>> sorted(set(labels.tolist()))
        [0, 1, 2, 3]
    """

    name = "rings"
    description = "four thin concentric rings of radius 0.75 to 3"
    bounds: ClassVar[Bounds] = ((-3.5, 3.5), (-3.5, 3.5))
    radii = (3.0, 2.25, 1.5, 0.75)
    noise = 0.08


class Checkerboard(Toy):
    r"""A 4x4 checkerboard on :math:`[-4, 4)^2` with 8 filled squares of side 2: FFJORD's
    ``checkerboard``.

    .. math:: p(x) = \tfrac1{32}\ \text{if } x \in [-4, 4)^2 \text{ and }
              \lfloor x_1/2 \rfloor + \lfloor x_2/2 \rfloor \text{ is even, else } 0.

    The density is piecewise constant and exact; ``log_prob`` is ``log(1/32)`` on the
    filled half-open squares and ``-inf`` everywhere else (so a model's samples that fall
    outside the support have zero true density). Labels number the squares 0 to 7.

    Example:
        >>> toy = Checkerboard()
        >>> toy.log_prob(torch.tensor([[0.5, 0.5], [0.5, -0.5]]))
        tensor([-3.4657,    -inf], dtype=torch.float64)
    """

    name = "checkerboard"
    description = "eight uniform squares forming a checkerboard on [-4, 4]^2"
    bounds: ClassVar[Bounds] = ((-4.0, 4.0), (-4.0, 4.0))
    _squares: ClassVar[tuple[tuple[int, int], ...]] = tuple(
        (i, j) for j in range(-2, 2) for i in range(-2, 2) if (i + j) % 2 == 0
    )

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = _balanced_labels(n, len(self._squares), generator)
        corner = torch.tensor(self._squares, dtype=_F64, device=labels.device)[labels]
        return 2.0 * (corner + _rand(generator, n, 2)), labels

    def _log_prob(self, x: Tensor) -> Tensor:
        cell = torch.floor(x / 2.0)
        inside = ((cell >= -2) & (cell <= 1)).all(-1) & (cell.sum(-1).remainder(2) == 0)
        log_density = torch.tensor(-math.log(32.0), dtype=_F64, device=x.device)
        return torch.where(inside, log_density, -math.inf)


# ---------------------------------------------------------------------------------------
# Curve toys: a density along a curve, blurred, by quadrature over the curve parameter
# ---------------------------------------------------------------------------------------

_PRUNE_NATS = 32.0  # panels whose bound is this far below the best are skipped (e^-32)
_MAX_LEVEL = 6  # far points use up to 4**6 times more panels
_END_GRADING = 6  # geometric panels at each end of a curve...
_END_RATIO = 0.25  # ...each this fraction of the next


@dataclass(frozen=True)
class _Kernel:
    r"""The blur added to a point of the curve: Gaussian with standard deviation ``sigma``
    after an optional uniform jitter on the square :math:`[0, w]^2` (``box = w``).

    With the jitter, each coordinate has density
    :math:`q_1(z) = \frac1w[\Phi(z/s) - \Phi((z - w)/s)]`, evaluated in log space by
    :func:`_log_box_normal`. Either way
    :math:`k(z) \le \exp(-d(z, [0, w]^2)^2 / 2s^2) / 2\pi s^2`, which pruning uses.
    """

    sigma: float
    box: float = 0.0

    @property
    def log_max(self) -> float:
        return -_LOG_2PI - 2 * math.log(self.sigma)

    def log(self, zx: Tensor, zy: Tensor) -> Tensor:
        """``log k(z)`` at ``z = (zx, zy)`` (coordinates kept apart for speed)."""
        if self.box == 0.0:
            return (zx.square() + zy.square()) * (-0.5 / self.sigma**2) + self.log_max
        shift, width = self.box / 2, self.box / self.sigma
        log_x = _log_box_normal((zx - shift) / self.sigma, width)
        log_y = _log_box_normal((zy - shift) / self.sigma, width)
        return log_x + log_y - 2 * math.log(self.box)


def _log_box_normal(m: Tensor, width: float) -> Tensor:
    r""":math:`\log(\Phi(m + \delta) - \Phi(m - \delta))` with :math:`\delta` = ``width / 2``.

    By symmetry this equals :math:`\log(\Phi(-|m| + \delta) - \Phi(-|m| - \delta))`, two
    lower-tail values that ``erfc`` gives to full relative precision and that never nearly
    cancel; far in the tail, where ``erfc`` underflows, the scaled ``erfcx`` takes over.
    """
    u = (m.abs() - width / 2) / _SQRT2
    v = u + width / _SQRT2
    out = torch.log(torch.erfc(u) - torch.erfc(v)) - math.log(2.0)
    far = u > 20.0  # erfc underflows near 26.5
    if bool(far.any()):
        uf, vf = u[far], v[far]
        ratio = torch.exp((uf - vf) * (uf + vf))
        scaled = torch.special.erfcx(uf) - torch.special.erfcx(vf) * ratio
        out[far] = -uf.square() + torch.log(scaled) - math.log(2.0)
    return out


@dataclass(frozen=True)
class _Nodes:
    """Composite Gauss-Legendre nodes of one refinement level, grouped in panels."""

    log_w: Tensor  # (panels, order): log(quadrature weight * parameter density)
    px: Tensor  # (panels, order): the curve at the nodes, first coordinate
    py: Tensor  # (panels, order): second coordinate
    low_x: Tensor  # (panels,): the box holding every node plus the jitter square...
    low_y: Tensor
    high_x: Tensor
    high_y: Tensor  # ...low and high corners
    log_mass: Tensor  # (panels,): logsumexp of log_w over the panel

    def to(self, device: torch.device) -> _Nodes:
        if self.log_w.device == device:
            return self
        return _Nodes(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


class _CurveDensity:
    r"""The density of :math:`c(t) + \varepsilon`, :math:`t \sim w` on :math:`[t_0, t_1]`:

    .. math:: p(x) = \int_{t_0}^{t_1} w(t)\, k(x - c(t))\, dt
              \approx \sum_j W_j\, w(t_j)\, k(x - c(t_j)).

    Composite Gauss-Legendre with ``order`` nodes on each of ``panels`` panels of equal arc
    length, the two end panels split geometrically 6 times by 4 (beyond an end of a curve
    the integrand falls off exponentially), summed with ``logsumexp``. For speed, a panel
    is skipped when the kernel's bound (distance from ``x`` to the box around the panel's
    nodes) puts its whole sum ``e^-32`` below the best panel's exact sum. A point at
    distance :math:`r` from the origin beyond ``radius`` uses :math:`4^\ell` times more
    panels, :math:`\ell = \lceil \log_4(r / \text{radius}) \rceil \le 6`, as the
    integrand's peak in :math:`t` narrows like :math:`1/\sqrt r` far away.
    """

    def __init__(
        self,
        curve: Callable[[Tensor], Tensor],
        log_weight: Callable[[Tensor], Tensor],
        span: tuple[float, float],
        kernel: _Kernel,
        panels: int,
        radius: float,
        order: int = 12,
    ) -> None:
        self.curve, self.log_weight, self.span = curve, log_weight, span
        self.kernel, self.panels, self.radius, self.order = kernel, panels, radius, order
        self._levels: dict[int, _Nodes] = {}

    def nodes(self, level: int) -> _Nodes:
        """The (cached) nodes with ``panels * 4**level`` panels."""
        if level not in self._levels:
            self._levels[level] = self._build(self.panels * 4**level)
        return self._levels[level]

    def _build(self, panels: int) -> _Nodes:
        t0, t1 = self.span
        fine = torch.linspace(t0, t1, 16 * panels + 1, dtype=_F64)
        steps = torch.linalg.vector_norm(self.curve(fine).diff(dim=0), dim=-1)
        arc = torch.cat([torch.zeros(1, dtype=_F64), steps.cumsum(0)]).numpy()
        edges = np.interp(np.linspace(0.0, arc[-1], panels + 1), arc, fine.numpy())
        ratios = _END_RATIO ** np.arange(_END_GRADING, 0, -1)
        first = edges[0] + (edges[1] - edges[0]) * ratios
        last = edges[-1] - (edges[-1] - edges[-2]) * ratios[::-1]
        edges = torch.from_numpy(np.concatenate([edges[:1], first, edges[1:-1], last, edges[-1:]]))
        x_gl, w_gl = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(self.order))
        half = (edges[1:] - edges[:-1])[:, None] / 2
        t = (edges[1:] + edges[:-1])[:, None] / 2 + half * x_gl
        log_w = torch.log(half * w_gl) + self.log_weight(t)
        px, py = self.curve(t).unbind(-1)
        box = self.kernel.box
        return _Nodes(
            log_w, px, py, px.amin(1), py.amin(1), px.amax(1) + box, py.amax(1) + box,
            torch.logsumexp(log_w, dim=1),
        )

    def log_prob(self, x: Tensor, extra_levels: int = 0) -> Tensor:
        """``log p(x)`` for finite ``x`` (batch, 2); ``extra_levels`` refines everywhere."""
        r = torch.linalg.vector_norm(x, dim=-1)
        level = torch.ceil(torch.log(r / self.radius) / math.log(4.0)).clamp(0, _MAX_LEVEL)
        level = level.long() + extra_levels
        out = torch.empty_like(r)
        for lvl in torch.unique(level).tolist():
            idx = (level == lvl).nonzero().squeeze(1)
            nodes = self.nodes(lvl).to(x.device)
            for part in idx.split(max(16, 2**15 // nodes.log_mass.shape[0])):
                out[part] = self._log_prob_chunk(x[part, 0], x[part, 1], nodes)
        return out

    def _log_prob_chunk(self, x: Tensor, y: Tensor, nodes: _Nodes) -> Tensor:
        xc, yc = x[:, None], y[:, None]
        gap_x = (nodes.low_x - xc).clamp_min(0.0) + (xc - nodes.high_x).clamp_min(0.0)
        gap_y = (nodes.low_y - yc).clamp_min(0.0) + (yc - nodes.high_y).clamp_min(0.0)
        scale = -0.5 / self.kernel.sigma**2
        bound = (gap_x.square() + gap_y.square()) * scale + nodes.log_mass
        best = self._panel_sum(x, y, bound.argmax(1), nodes) - self.kernel.log_max
        row, panel = (bound >= best[:, None] - _PRUNE_NATS).nonzero(as_tuple=True)
        sums = self._panel_sum(x[row], y[row], panel, nodes)
        return _scatter_logsumexp(sums, row, x.shape[0])

    def _panel_sum(self, x: Tensor, y: Tensor, panel: Tensor, nodes: _Nodes) -> Tensor:
        log_k = self.kernel.log(x[:, None] - nodes.px[panel], y[:, None] - nodes.py[panel])
        return torch.logsumexp(nodes.log_w[panel] + log_k, dim=1)


class _CurveToy(Toy):
    r"""An equal mixture of copies of one curve density :math:`p_c`, each seen through an
    isometry :math:`x \mapsto \pm x + b` (so :math:`p(x) = \frac1m\sum_i p_c(s_i x + b_i)`).
    """

    _copies: ClassVar[tuple[tuple[float, tuple[float, float]], ...]] = ((1.0, (0.0, 0.0)),)

    @functools.cached_property
    def _curve(self) -> _CurveDensity:
        return self._make_curve()

    @abc.abstractmethod
    def _make_curve(self) -> _CurveDensity:
        """Build the curve density of copy 0."""

    def _log_prob(self, x: Tensor, extra_levels: int = 0) -> Tensor:
        """``extra_levels > 0`` uses a quadrature ``4**extra_levels`` times finer (tests)."""
        parts = [
            self._curve.log_prob(
                sign * x + torch.tensor(shift, dtype=_F64, device=x.device), extra_levels
            )
            for sign, shift in self._copies
        ]
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(len(parts))


class Moons(_CurveToy):
    r"""Two interleaved half circles: scikit-learn ``make_moons(noise=0.05)``, in its units.

    Outer arc :math:`(\cos t, \sin t)` (label 0), inner arc
    :math:`(1 - \cos t,\ 0.5 - \sin t)` (label 1), :math:`t \in [0, \pi]`, half the
    points on each, plus :math:`\mathcal N(0, 0.05^2 I)`. ``make_moons`` spaces
    :math:`t` evenly; we draw it iid uniform, so the density is exactly

    .. math:: p(x) = \tfrac12\,[p_c(x) + p_c((1, 0.5) - x)],\qquad
              p_c(x) = \frac1\pi \int_0^\pi \mathcal N(x;\ (\cos t, \sin t),\ 0.05^2 I)\,dt,

    computed by pruned Gauss-Legendre quadrature over :math:`t` (24 panels of 12 nodes,
    refined far away). Against a quadrature 8 times finer, the relative error of
    :math:`p` is below 1e-12 in the bounds and out to 30 times beyond them.

    Example:
        >>> toy = Moons()
        >>> x, labels = toy.sample(1000, seed=0)
        >>> (labels == 0).sum().item()
        500
        >>> toy.log_prob(torch.tensor([[0.0, 1.0]]))  # the top of the outer arc
        tensor([0.2392], dtype=torch.float64)
    """

    name = "moons"
    description = "two interleaved half circles (scikit-learn make_moons, noise 0.05)"
    bounds: ClassVar[Bounds] = ((-1.5, 2.5), (-1.0, 1.5))
    noise: ClassVar[float] = 0.05
    _copies = ((1.0, (0.0, 0.0)), (-1.0, (1.0, 0.5)))

    def _make_curve(self) -> _CurveDensity:
        return _CurveDensity(
            curve=_unit,
            log_weight=lambda t: torch.full_like(t, -math.log(math.pi)),
            span=(0.0, math.pi),
            kernel=_Kernel(self.noise),
            panels=24,
            radius=3.0,
        )

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = _balanced_labels(n, 2, generator)
        arc = _unit(math.pi * _rand(generator, n))
        inner = torch.tensor([1.0, 0.5], dtype=_F64, device=arc.device) - arc
        x = torch.where(labels[:, None] == 0, arc, inner)
        return x + self.noise * _randn(generator, n, 2), labels


class SwissRoll(_CurveToy):
    r"""A 2-D swiss roll: FFJORD's ``swissroll`` (scikit-learn ``make_swiss_roll(noise=1)``,
    coordinates x and z, divided by 5).

    .. math:: x = \tfrac15(t\cos t,\ t\sin t) + \mathcal N(0, 0.2^2 I),\qquad
              t \sim U[1.5\pi, 4.5\pi],

    .. math:: p(x) = \frac1{3\pi}\int_{1.5\pi}^{4.5\pi}
              \mathcal N(x;\ \tfrac15(t\cos t, t\sin t),\ 0.2^2 I)\,dt,

    by pruned Gauss-Legendre quadrature over :math:`t` (32 panels of 12 nodes, refined far
    away). Against a quadrature 8 times finer, the relative error of :math:`p` is below
    1e-12 in the bounds and out to 30 times beyond them. There are no natural classes:
    labels are all 0.

    Example:
        >>> toy = SwissRoll()
        >>> x, labels = toy.sample(3, seed=0)
        >>> labels.tolist()
        [0, 0, 0]
    """

    name = "swissroll"
    description = "a noisy spiral of one and a half turns (scikit-learn swiss roll / 5)"
    bounds: ClassVar[Bounds] = ((-4.0, 4.0), (-4.0, 4.0))
    noise: ClassVar[float] = 0.2
    span: ClassVar[tuple[float, float]] = (1.5 * math.pi, 4.5 * math.pi)

    @staticmethod
    def _roll(t: Tensor) -> Tensor:
        return (t / 5)[..., None] * _unit(t)

    def _make_curve(self) -> _CurveDensity:
        length = self.span[1] - self.span[0]
        return _CurveDensity(
            curve=self._roll,
            log_weight=lambda t: torch.full_like(t, -math.log(length)),
            span=self.span,
            kernel=_Kernel(self.noise),
            panels=32,
            radius=6.0,
        )

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        lo, hi = self.span
        t = lo + (hi - lo) * _rand(generator, n)
        x = self._roll(t) + self.noise * _randn(generator, n, 2)
        return x, torch.zeros(n, dtype=torch.long, device=x.device)


class TwoSpirals(_CurveToy):
    r"""Two interleaved spirals: FFJORD's ``2spirals``.

    Arm 0 (label 0) is :math:`\tfrac13(-u\cos u + j_1,\ u\sin u + j_2) + \varepsilon` with
    :math:`u = 3\pi\sqrt{U}` (density :math:`2u/(3\pi)^2` on :math:`[0, 3\pi]`), uniform
    jitter :math:`j \sim U[0, 0.5]^2` and :math:`\varepsilon \sim \mathcal N(0, 0.1^2 I)`;
    arm 1 is the mirror image :math:`-` (arm 0 before the noise). The density is

    .. math:: p(x) = \tfrac12[p_a(x) + p_a(-x)],\qquad
              p_a(x) = \int_0^{3\pi} \frac{2u}{(3\pi)^2}\, q(x - c(u))\, du,

    where :math:`q` is the jitter-plus-noise density, a product of two
    :math:`6[\Phi(z/0.1) - \Phi((z - 1/6)/0.1)]` (exact, see ``_Kernel``), and the
    :math:`u` integral is pruned Gauss-Legendre quadrature (56 panels of 12 nodes, refined
    far away). Against a quadrature 8 times finer, the relative error of :math:`p` is
    below 1e-12 in the bounds and out to 30 times beyond them.

    Example:
        >>> toy = TwoSpirals()
        >>> x, labels = toy.sample(4, seed=0)
        >>> toy.log_prob(x).isfinite().all().item()
        True
    """

    name = "2spirals"
    description = "two interleaved spirals of one and a half turns"
    bounds: ClassVar[Bounds] = ((-4.0, 4.0), (-4.0, 4.0))
    noise: ClassVar[float] = 0.1
    jitter: ClassVar[float] = 0.5 / 3
    turns: ClassVar[float] = 3 * math.pi  # 540 degrees
    _copies = ((1.0, (0.0, 0.0)), (-1.0, (0.0, 0.0)))

    @staticmethod
    def _arm(u: Tensor) -> Tensor:
        return torch.stack([-u * torch.cos(u), u * torch.sin(u)], dim=-1) / 3

    def _make_curve(self) -> _CurveDensity:
        log_norm = 2 * math.log(self.turns)
        return _CurveDensity(
            curve=self._arm,
            log_weight=lambda u: torch.log(2 * u) - log_norm,
            span=(0.0, self.turns),
            kernel=_Kernel(self.noise, box=self.jitter),
            panels=56,
            radius=6.0,
        )

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = _balanced_labels(n, 2, generator)
        u = self.turns * torch.sqrt(_rand(generator, n))
        clean = self._arm(u) + self.jitter * _rand(generator, n, 2)
        sign = 1.0 - 2.0 * labels.to(_F64)
        return sign[:, None] * clean + self.noise * _randn(generator, n, 2), labels


# ---------------------------------------------------------------------------------------
# Pinwheel: a nonlinear map of a Gaussian, inverted by root finding
# ---------------------------------------------------------------------------------------


class Pinwheel(Toy):
    r"""Five curved blades: FFJORD's ``pinwheel``.

    Blade :math:`k` (label :math:`k`) draws :math:`f \sim \mathcal N((1, 0),\
    \mathrm{diag}(0.3^2, 0.1^2))` and maps it by :math:`x = T_k(f) = 2R(-\theta)f`, a
    rotation by :math:`\theta = 2\pi k/5 + \tfrac14 e^{f_1}`. Then
    :math:`\det \partial T_k/\partial f = 4(1 + \tfrac14 e^{f_1} f_2)` and

    .. math:: p(x) = \frac15 \sum_k \sum_{f:\ T_k(f) = x}
              \frac{\mathcal N(f)}{|4(1 + \tfrac14 e^{f_1} f_2)|}.

    :math:`T_k` keeps radii, so a preimage is :math:`f = \rho(\cos\beta, \sin\beta)` with
    :math:`\rho = |x|/2`, and its angle solves
    :math:`\psi(\beta) = \beta - \tfrac14 e^{\rho\cos\beta} \equiv \arg x + 2\pi k/5
    \pmod{2\pi}`. ``log_prob`` finds every root exactly: :math:`\psi' = 1 +
    \tfrac14 e^{f_1} f_2` vanishes at no more than two fold angles, found by bisection, so
    :math:`\psi` is monotone on at most three pieces; on each piece every multiple of
    :math:`2\pi` in its range gives one root, polished by safeguarded Newton to 1e-14.
    The sum is exact to rounding, except that roots whose Gaussian factor is
    :math:`e^{-60}` below the largest on their circle are skipped, and at a fold itself
    the density is infinite (an integrable singularity). Beyond :math:`|x| \approx 21`
    (:math:`\log p < -500`) the blades wind through more than 1000 roots and float64
    soon cannot follow the angle; there ``log_prob`` is the exact mean of the density around
    the circle through :math:`x` (Laplace's method in :math:`\beta`, relative error below
    1e-4).

    Example:
        >>> toy = Pinwheel()
        >>> x, labels = toy.sample(1000, seed=0)
        >>> toy.log_prob(torch.zeros(1, 2))  # only f = 0 maps there: log(N(0) / 4)
        tensor([-5.2732], dtype=torch.float64)
    """

    name = "pinwheel"
    description = "five curved blades, a Gaussian bent by an angle that grows with radius"
    bounds: ClassVar[Bounds] = ((-4.5, 4.5), (-4.5, 4.5))
    blades: ClassVar[int] = 5
    radial_std: ClassVar[float] = 0.3
    tangential_std: ClassVar[float] = 0.1
    rate: ClassVar[float] = 0.25
    _tail_nats: ClassVar[float] = 60.0
    _max_roots: ClassVar[int] = 1000  # per point; more and the far-field mean is used
    _chunk_roots: ClassVar[int] = 2**18  # roots solved together (bounds memory)

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = _balanced_labels(n, self.blades, generator)
        eps = _randn(generator, n, 2)
        f = torch.stack([1.0 + self.radial_std * eps[:, 0], self.tangential_std * eps[:, 1]], 1)
        return self._forward(f, labels), labels

    def _forward(self, f: Tensor, labels: Tensor) -> Tensor:
        theta = 2 * math.pi * labels.to(_F64) / self.blades + self.rate * torch.exp(f[:, 0])
        c, s = torch.cos(theta), torch.sin(theta)
        return 2 * torch.stack([f[:, 0] * c + f[:, 1] * s, f[:, 1] * c - f[:, 0] * s], dim=1)

    def _log_latent(self, f: Tensor) -> Tensor:
        """``log N(f) - log|det dT/df|`` for latent points ``f`` (..., 2)."""
        a, b = self.radial_std, self.tangential_std
        log_normal = (
            -0.5 * ((f[..., 0] - 1.0) / a).square()
            - 0.5 * (f[..., 1] / b).square()
            - _LOG_2PI
            - math.log(a * b)
        )
        det = 4 * (1 + self.rate * torch.exp(f[..., 0]) * f[..., 1])
        return log_normal - torch.log(torch.abs(det))

    def _angle(self, rho: Tensor, beta: Tensor) -> Tensor:
        r""":math:`\psi(\beta) = \beta - \tfrac14 e^{\rho\cos\beta}`, the angle of
        :math:`T_0(\rho\cos\beta, \rho\sin\beta)` (unwrapped)."""
        return beta - self.rate * torch.exp(rho * torch.cos(beta))

    def _log_prob(self, x: Tensor) -> Tensor:
        norm, arg = _polar(x)
        rho = norm / 2
        edges = self._pieces(rho)  # (n, 4): psi is monotone between neighbours
        ends = self._angle(rho[:, None], edges)
        low = torch.minimum(ends[:, :-1], ends[:, 1:])[:, :, None]  # (n, 3, 1)
        high = torch.maximum(ends[:, :-1], ends[:, 1:])[:, :, None]
        offsets = 2 * math.pi * torch.arange(self.blades, dtype=_F64, device=x.device)
        target = (arg[:, None] + offsets / self.blades)[:, None, :]  # (n, 1, blades)
        # psi = target + 2 pi m has one root per m with low <= target + 2 pi m < high.
        first = torch.ceil((low - target) / (2 * math.pi))
        count = (torch.ceil((high - target) / (2 * math.pi)) - first).clamp_min(0)
        total = count.sum((1, 2))
        far = ~(total <= self._max_roots)  # also catches inf and NaN from overflow
        out = torch.empty_like(rho)
        out[far] = self._log_prob_far(rho[far])
        near = (~far).nonzero().squeeze(1)
        ends_at = torch.cumsum(total[near], 0)
        for part in _split_by_budget(near, ends_at, self._chunk_roots):
            out[part] = self._log_prob_roots(
                rho[part], edges[part], target[part, 0], first[part].long(), count[part].long()
            )
        return out

    def _log_prob_roots(
        self, rho: Tensor, edges: Tensor, target: Tensor, first: Tensor, count: Tensor
    ) -> Tensor:
        """Sum over every root of every piece and blade (``count`` of them from ``first``)."""
        n, pieces, blades = count.shape
        group = torch.repeat_interleave(torch.arange(count.numel(), device=rho.device),
                                        count.flatten())
        starts = torch.cumsum(count.flatten(), 0) - count.flatten()
        m = first.flatten()[group] + torch.arange(group.numel(), device=rho.device) - starts[group]
        point, piece, blade = group // (pieces * blades), (group // blades) % pieces, group % blades
        value = target[point, blade] + 2 * math.pi * m.to(_F64)
        beta = self._solve(rho[point], value, edges[point, piece], edges[point, piece + 1])
        f = rho[point, None] * _unit(beta)
        log_x = self._log_latent(f) - math.log(self.blades)
        return _scatter_logsumexp(log_x, point, n)

    def _pieces(self, rho: Tensor) -> Tensor:
        r"""Angles ``(lo, a, b, hi)`` with :math:`\psi` monotone on ``[lo, a]``, ``[a, b]``,
        ``[b, hi]``: ``a, b`` are the folds (both ``lo`` when there are none) and
        ``[lo, hi]`` the window of angles whose Gaussian factor can matter."""
        lower = self._window_lower(rho)  # f_1 = rho cos(beta) >= lower
        ratio = (lower / rho.clamp_min(1e-300)).clamp(-1.0, 1.0)
        half = torch.where(lower <= -rho, math.pi, torch.arccos(ratio))
        lo, hi = -half, half
        a, b = self._folds(rho)
        a = torch.minimum(torch.maximum(a, lo), hi)
        b = torch.minimum(torch.maximum(b, lo), hi)
        return torch.stack([lo, a, b, hi], dim=1)

    def _folds(self, rho: Tensor) -> tuple[Tensor, Tensor]:
        r"""The fold angles, where :math:`\psi'(\beta) = 1 + \tfrac14\rho\sin\beta\,
        e^{\rho\cos\beta} = 0`. On :math:`(-\pi, 0)` the product has one minimum, at
        :math:`\cos\beta^* = 2\rho / (1 + \sqrt{1 + 4\rho^2})`; if :math:`\psi' < 0` there,
        one fold lies on each side of :math:`\beta^*`, found by bisection in log space."""
        star = -torch.arccos(2 * rho / (1 + torch.sqrt(1 + 4 * rho.square())))
        log_rate = math.log(self.rate)

        def folded(r: Tensor, beta: Tensor) -> Tensor:  # psi'(beta) < 0, without overflow
            return torch.log(r) + torch.log(-torch.sin(beta)) + r * torch.cos(beta) > -log_rate

        a = torch.full_like(rho, -math.pi)  # no fold: both at -pi, clamped to the window
        b = a.clone()
        has = folded(rho, star).nonzero().squeeze(1)
        if has.numel():
            r, mid_star = rho[has, None], star[has, None]
            lo = torch.cat([torch.full_like(mid_star, -math.pi), mid_star], 1)
            hi = torch.cat([mid_star, torch.zeros_like(mid_star)], 1)
            unfolded_at_lo = torch.tensor([True, False], device=rho.device)
            for _ in range(60):  # bisection: psi' changes sign inside each bracket
                mid = (lo + hi) / 2
                move_lo = ~folded(r, mid) == unfolded_at_lo
                lo, hi = torch.where(move_lo, mid, lo), torch.where(move_lo, hi, mid)
            a[has], b[has] = ((lo + hi) / 2).unbind(1)
        return a, b

    def _window_lower(self, rho: Tensor) -> Tensor:
        r"""Smallest :math:`f_1` worth searching: the Gaussian bound on the circle,
        :math:`B(f_1) = -\frac{(f_1 - 1)^2}{2a^2} - \frac{\rho^2 - f_1^2}{2b^2}`, is convex
        with its maximum at :math:`f_1 = \rho`; keep :math:`B \ge B(\rho) - 60` (all of
        :math:`[-\rho, \rho]` while its left end still qualifies)."""
        a2, b2 = self.radial_std**2, self.tangential_std**2
        quad = 0.5 / b2 - 0.5 / a2  # B = quad f^2 + lin f + const
        lin = 1.0 / a2
        const = -0.5 / a2 - 0.5 * rho.square() / b2
        top = quad * rho.square() + lin * rho + const
        disc = lin**2 - 4 * quad * (const - top + self._tail_nats)
        right_root = (-lin + torch.sqrt(disc.clamp_min(0.0))) / (2 * quad)
        left_ok = quad * rho.square() - lin * rho + const >= top - self._tail_nats
        return torch.where(left_ok, -rho, torch.maximum(right_root, -rho))

    def _solve(self, rho: Tensor, value: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """The root of ``psi(beta) = value`` in ``[lo, hi]``, where ``psi`` is monotone:
        start at the secant point, take Newton steps, bisect whenever a step would leave
        the bracket, and stop each root once its step or bracket is below 1e-14."""
        g_lo = self._angle(rho, lo) - value
        g_hi = self._angle(rho, hi) - value
        width = (g_lo - g_hi).abs()
        beta = torch.where(width > 0, lo + (hi - lo) * g_lo.abs() / width, lo)
        lo_positive = g_lo > 0
        todo = torch.arange(beta.shape[0], device=beta.device)
        for _ in range(200):
            x, r = beta[todo], rho[todo]
            e = self.rate * torch.exp(r * torch.cos(x))
            g = x - e - value[todo]
            slope = 1 + e * r * torch.sin(x)
            same = (g > 0) == lo_positive[todo]
            a = torch.where(same, x, lo[todo])
            b = torch.where(same, hi[todo], x)
            lo[todo], hi[todo] = a, b
            newton = x - g / slope
            low, high = torch.minimum(a, b), torch.maximum(a, b)
            nxt = torch.where((newton >= low) & (newton <= high), newton, (a + b) / 2)
            beta[todo] = nxt
            tol = 1e-14 * (1 + x.abs())
            todo = todo[((nxt - x).abs() > tol) & ((b - a).abs() > tol)]
            if todo.numel() == 0:
                break
        return beta

    def _log_prob_far(self, rho: Tensor) -> Tensor:
        r"""The mean of the density around the circle :math:`|x| = 2\rho`: the density of
        :math:`|f| = \rho` (Laplace's method in the angle of :math:`f`), halved for
        :math:`|x| = 2|f|`, over the circle's length :math:`4\pi\rho`."""
        a2, b2 = self.radial_std**2, self.tangential_std**2
        curvature = rho.square() / b2 - rho * (rho - 1) / a2
        log_radius = (
            torch.log(rho)
            - 0.5 * (rho - 1).square() / a2
            - _LOG_2PI
            - 0.5 * math.log(a2 * b2)
            + 0.5 * (_LOG_2PI - torch.log(curvature))
        )
        return log_radius - math.log(2.0) - torch.log(4 * math.pi * rho)


def _split_by_budget(index: Tensor, cumulative: Tensor, budget: int) -> list[Tensor]:
    """Split ``index`` into consecutive runs whose share of ``cumulative`` (a running total
    of work per entry) is at most ``budget`` each (an entry above budget runs alone)."""
    parts, start = [], 0
    while start < index.shape[0]:
        base = float(cumulative[start - 1]) if start else 0.0
        stop = int(torch.searchsorted(cumulative, base + budget, right=True))
        stop = max(stop, start + 1)
        parts.append(index[start:stop])
        start = stop
    return parts


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

TOYS: dict[str, Toy] = {
    toy.name: toy
    for toy in sorted(
        (
            Checkerboard(),
            Circles(),
            EightGaussians(),
            Moons(),
            Pinwheel(),
            Rings(),
            SwissRoll(),
            TwoSpirals(),
        ),
        key=lambda toy: toy.name,
    )
}
"""Every toy by name, in sorted order."""


def list_toys() -> list[str]:
    """The names of all toys, sorted.

    Example:
        >>> list_toys()[:3]
        ['2spirals', '8gaussians', 'checkerboard']
    """
    return list(TOYS)


def get_toy(name: str) -> Toy:
    """The toy called ``name``; ``ValueError`` listing the names if there is none.

    Example:
        >>> get_toy("moons").bounds
        ((-1.5, 2.5), (-1.0, 1.5))
    """
    try:
        return TOYS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown toy {name!r}; expected one of: {', '.join(TOYS)}"
        ) from None
