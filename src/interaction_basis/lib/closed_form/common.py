"""What the closed forms share: chunking over samples, float64, ±1 signs, and the records
that carry a contraction's repeated arguments (:class:`Contraction`, :class:`EdgeInputs`)."""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.budget import budget_bytes

#: An integration rule's α values and their weights (``Integration.points()``).
Points = tuple[Sequence[float], Sequence[float]]

#: Bytes of the largest per-chunk intermediate; bounds memory and keeps work in cache.
CHUNK_BYTES = 16 * 2**20

F64 = torch.float64


class Contraction(NamedTuple):
    """The output side of one contraction, which M′ and the edges both take: ``c_out``
    (``None``: the identity, raw outputs) and the integration rule's ``points``."""

    c_out: Float[Tensor, "d_out k_out"] | None
    points: Points


class EdgeInputs(NamedTuple):
    """The input side of the edges: the features ``feats``, ``c_in_pinv`` and
    ``recon = feats @ c_in_pinv``, the activations rebuilt from the features."""

    recon: Float[Tensor, "batch pos d_in"]
    feats: Float[Tensor, "batch pos k_in"]
    c_in_pinv: Float[Tensor, "k_in d_in"]


def chunks(n: int, bytes_per_row: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive rows of ``n`` with at most ``CHUNK_BYTES`` each
    (one row at least)."""
    size = max(1, CHUNK_BYTES // max(1, bytes_per_row))
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def identity_if_none(c: Tensor | None, d: int, like: Tensor) -> Tensor:
    """``c`` in float64, or the ``d × d`` identity (on ``like``'s device) if ``None``."""
    return torch.eye(d, dtype=F64, device=like.device) if c is None else c.to(F64)


def as_signs(draws: Tensor) -> Tensor:
    """Boolean draws (True: +1) as float64 ±1."""
    return draws.to(F64) * 2 - 1


class Block(NamedTuple):
    """Samples ``b0:b1`` × positions ``t0:t1`` of a batch: one step of :func:`token_blocks`."""

    b0: int
    b1: int
    t0: int
    t1: int


def token_blocks(
    batch: int, n_pos: int, token_bytes: int, sample_bytes: int = 0, fixed_bytes: int = 0
) -> list[Block]:
    """Blocks of samples × positions whose working set fits :func:`budget_bytes`, for a
    contraction over tokens that keeps ``sample_bytes`` per sample (its accumulators),
    ``token_bytes`` per token (its pieces) and ``fixed_bytes`` whatever the block.

    Whole samples where one fits (as many as fit), else one sample at a time in runs of
    positions, one position at least. A block's working set is
    ``fixed_bytes + samples · (sample_bytes + positions · token_bytes)``: the planned figure,
    which the tests check against the budget.
    """
    budget = max(0, budget_bytes() - fixed_bytes)
    whole = sample_bytes + n_pos * token_bytes
    if whole <= budget:
        size = max(1, budget // max(1, whole))
        return [Block(b, min(b + size, batch), 0, n_pos) for b in range(0, batch, size)]
    run = max(1, (budget - sample_bytes) // max(1, token_bytes))
    return [
        Block(b, b + 1, t, min(t + run, n_pos)) for b in range(batch) for t in range(0, n_pos, run)
    ]
