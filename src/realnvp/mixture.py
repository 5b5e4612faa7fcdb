"""An equal-weight mixture of flows: the density of an ensemble of independently trained flows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from realnvp.flow import Flow, _check_count

__all__ = ["FlowMixture", "as_single_flow"]


class FlowMixture(nn.Module):
    r"""The equal-weight mixture of ``K`` flows over the same features:

    .. math:: p(x) = \frac1K \sum_{k=1}^K p_k(x), \qquad
              \log p(x) = \operatorname{logsumexp}_k \log p_k(x) - \log K.

    Its density is exact, like each member's. Sampling draws each row's member uniformly,
    then the row from that member. Trained as an ensemble (members from different seeds
    on the same rows; ``realnvp train --ensemble K``), the members' small errors in
    ``log p`` are partly independent, and the mixture averages them: by the concavity of
    ``log``, its KL divergence from the data's density is at most the members' average.

    It has the density half of :class:`~realnvp.Flow`'s interface (``log_prob``,
    ``sample``, ``sample_and_log_prob``, ``dim``); a mixture is not a bijection, so the
    layer-by-layer pictures show one member (:func:`as_single_flow`).

    Example:
        >>> import torch, realnvp
        >>> mix = FlowMixture([realnvp.RealNVP(dim=2, seed=k) for k in range(3)])
        >>> mix.log_prob(torch.zeros(4, 2)).shape, mix.sample(5).shape
        (torch.Size([4]), torch.Size([5, 2]))
    """

    def __init__(self, members: Sequence[Flow]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("Expected at least one flow in a mixture; got none")
        for m in members:
            if not isinstance(m, Flow):
                raise TypeError(f"Expected realnvp.Flow members; got {type(m).__name__}")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            if (m.dim, m.context_features) != (first.dim, first.context_features):
                raise ValueError(
                    f"Expected members over the same features; member {k} has dim={m.dim} "
                    f"and {m.context_features} context features, member 0 dim={first.dim} "
                    f"and {first.context_features}"
                )
            if m._anchor().dtype != first._anchor().dtype:
                raise ValueError(f"Expected members of one dtype; member {k} is "
                                 f"{m._anchor().dtype}, member 0 {first._anchor().dtype}")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def dim(self) -> int:
        """Number of features."""
        return int(self.members[0].dim)

    @property
    def context_features(self) -> int:
        """Number of context features the members expect (0 if unconditional)."""
        return int(self.members[0].context_features)

    @property
    def spec(self) -> dict[str, Any] | None:
        """``{"mixture": [member specs]}``, or None if a member cannot be rebuilt."""
        specs = [m.spec for m in self.members]
        return None if any(s is None for s in specs) else {"mixture": specs}

    def _anchor(self) -> Tensor:
        return self.members[0]._anchor()

    def log_prob(self, x: Any, context: Any = None) -> Tensor:
        """Exact log-density of each row of ``x``, shape ``(batch,)``, in the data's units."""
        parts = torch.stack([m.log_prob(x, context) for m in self.members])
        return torch.logsumexp(parts, dim=0) - math.log(len(self.members))

    def sample(
        self, n: int, context: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` samples, shape ``(n, dim)``: each row from a member picked uniformly."""
        n = _check_count(n)
        which = torch.randint(len(self.members), (n,), generator=generator,
                              device=generator.device if generator is not None else "cpu")
        which = which.cpu()
        if context is not None:
            context = self.members[0]._prepare_raw(context)
            if context.ndim != 2 or context.shape[0] != n:
                raise ValueError(f"Expected context with {n} rows (one per sample); got "
                                 f"shape {tuple(context.shape)}")
        a = self._anchor()
        out = torch.empty(n, self.dim, dtype=a.dtype, device=a.device)
        for k, member in enumerate(self.members):
            rows = (which == k).nonzero().reshape(-1)
            if rows.numel():
                sub = None if context is None else context[rows.to(context.device)]
                out[rows.to(a.device)] = member.sample(rows.numel(), sub, generator)
        return out

    def sample_and_log_prob(
        self, n: int, context: Any = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` samples and their mixture log-density."""
        x = self.sample(n, context, generator)
        return x, self.log_prob(x, context)


def as_single_flow(model: Flow | FlowMixture) -> Flow:
    """``model`` itself if it is a :class:`~realnvp.Flow`, else a mixture's first member
    (for what only a bijection has: the latent view and the layer-by-layer pictures)."""
    return model.members[0] if isinstance(model, FlowMixture) else model
