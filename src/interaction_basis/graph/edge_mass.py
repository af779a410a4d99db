"""How concentrated a layer pair's edge weight is: the fewest edges holding a share of it
(method §C.1.3), and the ε of the log edge norm derived from it."""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

#: Shares of a layer pair's edge mass whose edge counts the summary and evaluation report.
MASS_FRACTIONS = (0.9, 0.99)


def compute_edge_mass_counts(
    edges: Float[Tensor, "out in"],
    fractions: Sequence[float] = (0.9, 0.99, 0.999),
    *,
    skip_constant_input: bool = True,
) -> dict[float, int]:
    """Fewest top entries of ``E[:, 1:]`` holding each fraction of its total (method §C.1.3).

    A scale-free sparsity measure: every output row (the output constant node included) and every
    input column except the constant input are ranked in descending order.
    """
    e = (edges[:, 1:] if skip_constant_input else edges).flatten().to(torch.float64)
    if e.numel() == 0 or not torch.isfinite(e).all() or bool((e < 0).any()):
        raise ValueError("Edges must be a non-empty, finite, non-negative matrix.")
    cumulative = torch.sort(e, descending=True).values.cumsum(0)
    total = cumulative[-1]
    counts = {}
    for frac in fractions:
        if not 0 < frac <= 1:
            raise ValueError(f"Fractions must be in (0, 1], got {frac}.")
        n = int(torch.searchsorted(cumulative, frac * total)) + 1
        counts[frac] = min(n, e.numel())
    return counts


def compute_epsilon_from_mass(edges: Tensor, mass: float) -> float:
    """ε of the log edge norm: the weakest of the strongest non-constant edges holding
    ``mass`` of the non-constant weight (as the paper's ε is the weakest edge kept by edge
    ablation, method §D)."""
    n = compute_edge_mass_counts(edges, (mass,))[mass]
    values = torch.sort(edges[:, 1:].flatten().to(torch.float64), descending=True).values
    return float(values[n - 1])
